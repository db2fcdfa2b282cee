"""The model registry: validated model cards, a search path, sha256 checks and safe weight loading.

A model is a folder holding a card (``model.yaml``, ``model.yml`` or ``model.json``) and the files
the card names: the weights (``.safetensors`` preferred; ``.pt``/``.pth`` state dicts are read with
``torch.load(weights_only=True)``) and optional extra files, each with its sha256. The card schema
is :class:`ModelCard`; ``docs/model-card.md`` documents every field and the mapping to and from a
MONAI bundle's ``configs/metadata.json``.

Search path
-----------
:class:`Registry` looks for model folders in these places, **first match wins** when two folders
hold a model of the same name (the later one is *shadowed* and ``medseg models list`` says so):

1. every folder in ``MEDSEG_MODELS`` (``os.pathsep``-separated), in the order given (source ``env``);
2. the user folder, ``platformdirs.user_data_dir("napari-medseg") / "models"``, or
   ``MEDSEG_USER_MODELS`` when set (source ``user``; ``medseg models add`` copies here);
3. the shipped models (source ``shipped``): ``<checkout>/models`` when running from a source
   checkout (``src/napari_medseg/../../models`` beside a ``pyproject.toml``), then the installed
   copy ``napari_medseg/data/models`` when a wheel ships one.

So an explicit setting beats a personal one, which beats the defaults, as with ``PATH``. Each
search folder holds one model folder per model (a folder that itself holds a card is also
accepted); folders whose names start with ``.`` are skipped (they are the temporary folders of
atomic copies). The folders are scanned on every call, so a changed environment takes effect.

Security
--------
- Cards are parsed with ``yaml.safe_load`` (YAML aliases are refused, so no "billion laughs") or
  :func:`json.loads`; nothing in a card is evaluated.
- Every path a card names must stay inside the model folder: absolute paths, ``..`` components and
  symlinks that resolve outside are refused with :class:`~napari_medseg.errors.IntegrityError`.
- Weights are read once into memory, their sha256 is checked against the card, and the *same bytes*
  are deserialised (no window between check and use). A mismatch raises ``IntegrityError`` naming
  the file, the expected and the actual sha256.
- Nothing is ever unpickled: safetensors, or ``torch.load(weights_only=True)``, which refuses any
  object other than tensors and plain containers (a malicious ``__reduce__`` is never called).

Modules
-------
One concept per module; import every public name from ``napari_medseg.registry`` itself.

- :mod:`~napari_medseg.registry.card`: the card schema (enums, pydantic specs, :class:`ModelCard`,
  bounds, label colours) and :func:`card_warnings` (an input checked against a card);
- :mod:`~napari_medseg.registry.card_io`: card files (safe YAML/JSON reading, validation
  messages, writing, finding a folder's card);
- :mod:`~napari_medseg.registry.weights`: sha256, paths kept inside a model folder, weights decoded
  and encoded without unpickling;
- :mod:`~napari_medseg.registry.model`: :class:`RegistryModel` (one model folder) and
  :func:`load_model_folder`;
- :mod:`~napari_medseg.registry.save`: writing model folders (:func:`save_model_folder`);
- :mod:`~napari_medseg.registry.search`: the search path, :class:`Registry`, :func:`load_model`;
- :mod:`~napari_medseg.registry.importers`: MONAI bundles and nnU-Net v2 result folders into
  model folders (the conversions themselves live in :mod:`napari_medseg.bundles` and
  :mod:`napari_medseg.nnunet`).

The modules import in that order (each only from those above it), so the package has no cycle.
Nothing here imports torch or MONAI at import time.
"""

from __future__ import annotations

from napari_medseg.registry.card import (
    CARD_FILENAMES,
    MAX_CHANNELS,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_PATCH_SIDE,
    MAX_PATCH_VALUES,
    MAX_PATCH_VOXELS,
    MODELS_ENV,
    USER_MODELS_ENV,
    WEIGHTS_SUFFIXES,
    ArchitectureSpec,
    BundleSpec,
    ChannelSpec,
    CodeSpec,
    DropoutPlacement,
    DropoutSpec,
    FileSpec,
    InputFingerprint,
    LabelSpec,
    ModelCard,
    ModelSource,
    NormalizationKind,
    NormalizationSpec,
    OutputSpec,
    WeightsSpec,
    card_warnings,
    default_label_color,
)
from napari_medseg.registry.card_io import (
    _card_to_yaml,
    _safe_yaml,
    _validate_card,
    find_card_file,
    read_card,
    write_card,
)
from napari_medseg.registry.importers import (
    _bundle_name,
    add_monai_bundle,
    add_nnunet,
    import_monai_bundle,
    import_nnunet,
)
from napari_medseg.registry.model import RegistryModel, load_model_folder
from napari_medseg.registry.save import _write_model, save_model_folder
from napari_medseg.registry.search import (
    Registry,
    RegistryScan,
    env_models_dirs,
    load_model,
    shipped_models_dirs,
    user_models_dir,
)
from napari_medseg.registry.weights import (
    _decode_weights,
    _encode_weights,
    _inside,
    _mismatch,
    _read_checked,
    _state_dict_from,
    sha256_file,
)

# the private names above are re-exported for code written against the single-module registry
__all__ = [
    "card_warnings",
    "CARD_FILENAMES",
    "WEIGHTS_SUFFIXES",
    "MODELS_ENV",
    "USER_MODELS_ENV",
    "NormalizationKind",
    "DropoutPlacement",
    "ModelSource",
    "ArchitectureSpec",
    "ChannelSpec",
    "CodeSpec",
    "InputFingerprint",
    "LabelSpec",
    "NormalizationSpec",
    "DropoutSpec",
    "FileSpec",
    "WeightsSpec",
    "ModelCard",
    "RegistryModel",
    "RegistryScan",
    "Registry",
    "read_card",
    "write_card",
    "find_card_file",
    "load_model_folder",
    "load_model",
    "save_model_folder",
    "import_monai_bundle",
    "add_monai_bundle",
    "import_nnunet",
    "add_nnunet",
    "OutputSpec",
    "BundleSpec",
    "sha256_file",
    "user_models_dir",
    "env_models_dirs",
    "shipped_models_dirs",
    "default_label_color",
]
