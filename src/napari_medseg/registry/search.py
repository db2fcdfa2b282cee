"""The search path and :class:`Registry`: env, user and shipped folders, scanned on every call.

See the package docstring (:mod:`napari_medseg.registry`) for the precedence rules.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_medseg._atomic import atomic_directory
from napari_medseg._options import close_matches_message
from napari_medseg.errors import FileFormatError, IntegrityError, InvalidInputError
from napari_medseg.registry.card import MODELS_ENV, USER_MODELS_ENV, ModelSource
from napari_medseg.registry.card_io import find_card_file
from napari_medseg.registry.model import RegistryModel, load_model_folder
from napari_medseg.registry.save import _refuse_foreign_folder
from napari_medseg.registry.weights import _read_checked


# ------------------------------------------------------------------------------------ search path
def user_models_dir() -> Path:
    """The user folder: ``$MEDSEG_USER_MODELS`` or ``platformdirs.user_data_dir("napari-medseg")/models``."""
    env = os.environ.get(USER_MODELS_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-medseg")) / "models"


def env_models_dirs() -> list[Path]:
    """The folders in ``$MEDSEG_MODELS`` (``os.pathsep``-separated; empty entries skipped)."""
    return [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]


def shipped_models_dirs() -> list[Path]:
    """The shipped model folders that exist: the checkout's ``models/``, then the package's ``data/models``.

    The checkout folder is ``Path(napari_medseg.__file__).parents[2] / "models"``, used only when
    the package runs from a ``src/`` layout with a ``pyproject.toml`` beside ``models/`` (an editable
    install or a checkout); an installed wheel carries its copy under ``napari_medseg/data/models``.
    """
    import napari_medseg

    package = Path(napari_medseg.__file__).resolve().parent
    candidates = []
    root = package.parents[1]
    if package.parent.name == "src" and (root / "pyproject.toml").is_file():
        candidates.append(root / "models")
    candidates.append(package / "data" / "models")
    return [c for c in candidates if c.is_dir()]


@dataclass(frozen=True)
class RegistryScan:
    """What one scan of the search path found.

    Attributes
    ----------
    models : list of RegistryModel
        One per name, the first found in search order, sorted by name.
    shadowed : list of (RegistryModel, RegistryModel)
        ``(hidden, winner)`` for every model hidden by an earlier one of the same name.
    problems : list of (Path, str)
        Folders that could not be read as models, with the reason (bad card, escaping path, ...).
    search_path : list of (Path, ModelSource)
        The folders scanned, in precedence order.
    """

    models: list[RegistryModel] = field(default_factory=list)
    shadowed: list[tuple[RegistryModel, RegistryModel]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    search_path: list[tuple[Path, ModelSource]] = field(default_factory=list)


class Registry:
    """The models found on a search path; the first folder holding a name wins.

    Parameters
    ----------
    paths : sequence of path, optional
        Search folders in precedence order (source ``path``, or ``user`` for the user folder).
        Default: ``$MEDSEG_MODELS`` (``env``), the user folder (``user``), the shipped models
        (``shipped``), in that order.
    user_dir : path, optional
        Where :meth:`add` copies and from where :meth:`remove` deletes. Default:
        :func:`user_models_dir` (``$MEDSEG_USER_MODELS`` or the platformdirs user data folder).

    Examples
    --------
    >>> registry = Registry()  # doctest: +SKIP
    >>> registry.get("demo-brain").load_network()  # doctest: +SKIP
    """

    def __init__(self, paths: Sequence[str | os.PathLike] | None = None, *, user_dir: str | os.PathLike | None = None):
        self.user_dir = Path(user_dir).expanduser() if user_dir is not None else user_models_dir()
        user_resolved = self.user_dir.resolve()
        if paths is None:
            entries = [(p, ModelSource.ENV) for p in env_models_dirs()]
            entries.append((self.user_dir, ModelSource.USER))
            entries += [(p, ModelSource.SHIPPED) for p in shipped_models_dirs()]
        else:
            if isinstance(paths, (str, os.PathLike)):
                raise InvalidInputError(f"paths={paths!r}: expected a sequence of folders, not one path")
            entries = [
                (Path(p), ModelSource.USER if Path(p).resolve() == user_resolved else ModelSource.PATH) for p in paths
            ]
        self.search_path: list[tuple[Path, ModelSource]] = entries

    def __repr__(self) -> str:
        return f"Registry({[str(p) for p, _ in self.search_path]!r}, user_dir={str(self.user_dir)!r})"

    # ------------------------------------------------------------------------------- scanning
    def _candidates(self, folder: Path, problems: list[tuple[Path, str]]) -> Iterable[Path]:
        # an unreadable folder is reported and skipped: one broken entry never breaks the others
        try:
            if find_card_file(folder) is not None:
                yield folder
                return
            children = sorted(folder.iterdir())
        except OSError as exc:
            problems.append((folder, f"cannot be read: {exc.strerror or exc}"))
            return
        for child in children:
            try:
                if child.name.startswith(".") or not child.is_dir():
                    continue
                if find_card_file(child) is not None:
                    yield child
            except OSError as exc:
                problems.append((child, f"cannot be read: {exc.strerror or exc}"))

    def scan(self) -> RegistryScan:
        """Scan the search path now (nothing is cached) and return what was found."""
        result = RegistryScan(search_path=list(self.search_path))
        winners: dict[str, RegistryModel] = {}
        for folder, source in self.search_path:
            if not folder.is_dir():
                if source is not ModelSource.USER and source is not ModelSource.SHIPPED:
                    result.problems.append((folder, "search folder does not exist"))
                continue
            for candidate in self._candidates(folder, result.problems):
                try:
                    model = load_model_folder(candidate, source=source)
                except (InvalidInputError, IntegrityError, OSError) as exc:
                    result.problems.append((candidate, str(exc)))
                    continue
                if model.name in winners:
                    result.shadowed.append((model, winners[model.name]))
                else:
                    winners[model.name] = model
        result.models.extend(sorted(winners.values(), key=lambda m: m.name))
        return result

    def list(self) -> list[RegistryModel]:
        """The models, one per name (the first found in search order), sorted by name."""
        return self.scan().models

    def names(self) -> list[str]:
        """The model names, sorted."""
        return [m.name for m in self.list()]

    def get(self, name: str) -> RegistryModel:
        """The model called ``name`` (the first found in search order).

        Raises
        ------
        InvalidInputError
            If no model has that name; the message lists close matches (or the available names),
            and the reason if a folder of that name holds an invalid card.
        """
        scan = self.scan()
        for model in scan.models:
            if model.name == name:
                return model
        # an imported MONAI bundle is also found by its metadata's display name, when unambiguous
        display = [m for m in scan.models if (m.card.monai_bundle or {}).get("name") == name]
        if len(display) == 1:
            return display[0]
        names = [m.name for m in scan.models]
        message = f"no model named {name!r} in the registry" + close_matches_message(name, names)
        broken = [f"{path}: {why}" for path, why in scan.problems if path.name == name]
        if broken:
            message += "; a folder of that name could not be used: " + "; ".join(broken)
        elif not close_matches_message(name, names):
            available = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
            message += f"; available: {available}"
        searched = ", ".join(f"{p} ({s.value})" for p, s in self.search_path)
        raise InvalidInputError(f"{message} (searched: {searched})")

    def verify(self, name: str | None = None) -> dict[str, str]:
        """Check the sha256 of every file of one model (``name``) or of every model.

        Returns
        -------
        dict of str to str
            Model name -> the verified weights sha256.

        Raises
        ------
        InvalidInputError
            If ``name`` is unknown.
        IntegrityError
            If any file does not match its card (every model is checked first; the message names
            each failing file with the expected and actual sha256).
        """
        models = [self.get(name)] if name is not None else self.list()
        verified, failures = {}, []
        for model in models:
            try:
                model.verify()
            except (IntegrityError, FileFormatError) as exc:
                failures.append(f"model {model.name!r}: {exc}")
            else:
                verified[model.name] = model.sha256
        if failures:
            raise IntegrityError("; ".join(failures))
        return verified

    # -------------------------------------------------------------------------------- editing
    def add(self, folder: str | os.PathLike, *, force: bool = False) -> RegistryModel:
        """Validate and verify a model folder and copy it atomically into the user folder.

        Only the card and the files it names are copied; each file is checked against its sha256
        from the bytes that get written. The copy lands at ``user_dir / card.name``.

        Parameters
        ----------
        folder : path
            The model folder to add.
        force : bool, default False
            Replace a model of the same name in the user folder (or add one that shadows, or is
            shadowed by, a model of that name elsewhere on the search path).

        Returns
        -------
        RegistryModel
            The copy in the user folder.

        Raises
        ------
        FileFormatError, InvalidInputError, IntegrityError
            If the folder is not a valid model (missing card or file, invalid card, escaping path,
            sha256 mismatch), or a model of that name exists and ``force`` is false.
        """
        model = load_model_folder(folder)
        name = model.name
        target = self.user_dir / name
        if target.resolve() == model.folder:
            raise InvalidInputError(f"{folder} is already the user folder's copy of {name!r}")
        scan = self.scan()
        existing = [m for m in scan.models if m.name == name] + [m for m, _ in scan.shadowed if m.name == name]
        if not force:
            if existing:
                where = ", ".join(f"{m.source.value} folder {m.folder}" for m in existing)
                raise InvalidInputError(
                    f"a model named {name!r} already exists ({where}); use force=True (medseg models add --force) "
                    "to replace or shadow it"
                )
            if target.exists():
                raise InvalidInputError(f"{target} already exists; use force=True (--force) to replace it")
        _refuse_foreign_folder(target)
        contents = {model.card_path.name: model.card_path.read_bytes()}
        for spec in model.card.file_specs():
            contents[spec.file] = _read_checked(model.file_paths()[spec.file], spec.sha256, card_path=model.card_path)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        with atomic_directory(target) as tmp:
            for relative, data in contents.items():
                destination = tmp / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
            # check the copy itself (card re-read from the copied bytes) before it replaces anything
            copied = load_model_folder(tmp)
            copied.verify()
            if copied.name != name:
                raise IntegrityError(f"{model.card_path} changed while it was being copied; nothing was added")
        return load_model_folder(target, source=ModelSource.USER)

    def remove(self, name: str) -> Path:
        """Delete the user folder's model called ``name`` and return the folder removed.

        Raises
        ------
        InvalidInputError
            If no model of that name is in the user folder (the message says where it is, if it
            is elsewhere: shipped and ``MEDSEG_MODELS`` models are never deleted).
        """
        user = self.user_dir.resolve()
        scan = self.scan()
        everything = scan.models + [m for m, _ in scan.shadowed]
        mine = [m for m in everything if m.name == name and m.folder.parent == user]
        if not mine:
            elsewhere = [m for m in everything if m.name == name]
            if elsewhere:
                where = ", ".join(f"{m.source.value} folder {m.folder}" for m in elsewhere)
                raise InvalidInputError(
                    f"model {name!r} is not in the user folder {self.user_dir} but in the {where}; only models "
                    "in the user folder can be removed"
                )
            self.get(name)  # raises with close matches
            raise InvalidInputError(f"model {name!r} is not in the user folder {self.user_dir}")  # pragma: no cover
        folder = mine[0].folder
        trash = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
        os.replace(folder, trash)  # atomic: the model disappears at once, then the files go
        shutil.rmtree(trash, ignore_errors=True)
        return folder


def load_model(name_or_folder: str | os.PathLike, *, registry: Registry | None = None) -> RegistryModel:
    """A model by registry name, or by folder.

    A :class:`~pathlib.Path`, or a string that contains a path separator or names an existing
    folder holding a card, is read as a model folder (source ``path``); any other string is
    looked up in ``registry`` (default: :class:`Registry()`).

    Raises
    ------
    InvalidInputError
        If the name is unknown (with close matches) or the card is invalid.
    FileFormatError, IntegrityError
        As :func:`load_model_folder`.
    """
    if isinstance(name_or_folder, os.PathLike):
        return load_model_folder(name_or_folder)
    text = str(name_or_folder)
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in text for s in separators) or (Path(text).is_dir() and find_card_file(text) is not None):
        return load_model_folder(text)
    return (registry or Registry()).get(text)
