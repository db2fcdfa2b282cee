"""One model folder: :class:`RegistryModel` (card, checked paths, verify, load) and :func:`load_model_folder`."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from napari_medseg.errors import FileFormatError, IntegrityError, InvalidInputError
from napari_medseg.registry.card import CARD_FILENAMES, ModelCard, ModelSource
from napari_medseg.registry.card_io import find_card_file, read_card
from napari_medseg.registry.weights import _decode_weights, _inside, _mismatch, _read_checked, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import torch


class RegistryModel:
    """One model folder: its validated card and the checked paths of its files.

    Parameters
    ----------
    card : ModelCard
        The validated card.
    folder : str or PathLike
        The model folder (resolved; every file the card names must stay inside it).
    source : {"shipped", "user", "env", "path"}, default "path"
        Where the registry found it.
    card_path : path, optional
        The card file (default: ``folder / "model.yaml"``), used in messages.

    Raises
    ------
    IntegrityError
        If a path the card names is absolute, contains ``..``, or resolves outside ``folder``.
    """

    def __init__(
        self,
        card: ModelCard,
        folder: str | os.PathLike,
        *,
        source: str | ModelSource = ModelSource.PATH,
        card_path: str | os.PathLike | None = None,
    ) -> None:
        self.card = card
        self.folder = Path(folder).resolve()
        self.source = ModelSource(source)
        self.card_path = Path(card_path) if card_path is not None else self.folder / CARD_FILENAMES[0]
        fields = ["weights.file", *(f"files[{i}].file" for i in range(len(card.files)))]
        self._paths = {
            spec.file: _inside(self.folder, spec.file, what=what, card_path=self.card_path)
            for spec, what in zip(card.file_specs(), fields)
        }

    def __repr__(self) -> str:
        return (
            f"RegistryModel({self.card.name!r} {self.card.version}, source={self.source.value!r}, "
            f"folder={str(self.folder)!r})"
        )

    @property
    def name(self) -> str:
        """The card's name."""
        return self.card.name

    @property
    def sha256(self) -> str:
        """The weights' sha256 as the card records it (checked by :meth:`verify` and at load)."""
        return self.card.weights.sha256

    def weights_path(self) -> Path:
        """The weights file, resolved and checked to stay inside :attr:`folder`."""
        return self._paths[self.card.weights.file]

    def file_paths(self) -> dict[str, Path]:
        """Every file the card names (weights first) -> its resolved path inside the folder."""
        return dict(self._paths)

    def provenance(self) -> dict[str, str]:
        """What an output records about the model: name, version, weights sha256, source, folder."""
        return {
            "model": self.card.name,
            "model_version": self.card.version,
            "model_sha256": self.sha256,
            "model_source": self.source.value,
            "model_folder": str(self.folder),
        }

    def file_problems(self) -> list[str]:
        """Cheap checks of the files the card names, without reading them (``verify`` hashes them).

        Returns
        -------
        list of str
            One message per problem: a missing file, a folder (or other non-file) where a file
            should be, an empty file. Empty when every file looks usable.
        """
        problems = []
        for spec in self.card.file_specs():
            path = self._paths[spec.file]
            try:
                info = path.stat()
            except FileNotFoundError:
                problems.append(f"{spec.file}: missing")
                continue
            except OSError as exc:
                problems.append(f"{spec.file}: cannot be read ({exc.strerror or exc})")
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{spec.file}: not a file ({'a folder' if stat.S_ISDIR(info.st_mode) else 'a special file'})")
            elif info.st_size == 0:
                problems.append(f"{spec.file}: empty (0 bytes)")
        return problems

    def verify(self) -> None:
        """Check the sha256 of every file the card names.

        Raises
        ------
        FileFormatError
            If a named file is missing.
        IntegrityError
            If a file's sha256 differs from the card's; the message names the file, the expected
            and the actual sha256.
        """
        for spec in self.card.file_specs():
            path = self._paths[spec.file]
            if not path.is_file():
                raise FileFormatError(f"{path}: file named by {self.card_path} is missing")
            actual = sha256_file(path)
            if actual != spec.sha256:
                raise _mismatch(path, self.card_path, spec.sha256, actual)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """Read the weights once, check their sha256, and decode those same bytes (on the CPU).

        Raises
        ------
        FileFormatError
            If the file is missing, not a valid safetensors/PyTorch file, holds pickled objects
            other than tensors (refused, never executed), or holds NaN or inf values.
        IntegrityError
            If the sha256 does not match the card.
        """
        path = self.weights_path()
        data = _read_checked(path, self.card.weights.sha256, card_path=self.card_path)
        state = _decode_weights(data, path=path)
        for key, tensor in state.items():  # NaN/inf weights give NaN outputs: an empty segmentation
            if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise FileFormatError(
                    f"{path}: weights of model {self.card.name!r} hold NaN or inf values (tensor {key!r}); "
                    "the model cannot be used"
                )
        return state

    def load_network(self, device: str | torch.device = "cpu", *, dropout_rate: float | None = None) -> torch.nn.Module:
        """Verify every file, build the card's network and load its weights, in eval mode.

        Parameters
        ----------
        device : str or torch.device, default "cpu"
            Where the network's parameters go.
        dropout_rate : float in [0, 1), optional
            Overrides the card's ``dropout.rate`` when building (the placement stays the card's).

        Returns
        -------
        torch.nn.Module
            In eval mode, on ``device``.

        Raises
        ------
        IntegrityError, FileFormatError
            As :meth:`verify` and :meth:`load_state_dict`.
        InvalidInputError
            If the architecture is unknown to :func:`~napari_medseg.networks.build_network`, if
            ``dropout_rate`` is outside [0, 1), or if the weights do not fit the network (the
            message lists missing and unexpected keys or the first shape mismatch).
        """
        import torch

        from napari_medseg.networks import build_network

        card = self.card
        if card.nnunet is not None:  # an imported nnU-Net model: its own allow-listed network, first fold
            from napari_medseg.nnunet import load_nnunet_network

            return load_nnunet_network(self, device=device)
        from napari_medseg._validate import check_dropout_rate  # the one dropout-rate check

        rate = card.dropout.rate if dropout_rate is None else check_dropout_rate(dropout_rate)
        for spec in card.files:  # the weights are checked below, on the bytes that get loaded
            path = self._paths[spec.file]
            data = _read_checked(path, spec.sha256, card_path=self.card_path)
            del data
        state = self.load_state_dict()
        network = build_network(
            card.architecture.name,
            spatial_dims=card.spatial_dims,
            in_channels=card.in_channels,
            out_channels=card.out_channels,
            dropout_rate=rate,
            dropout_placement=[str(p) for p in card.dropout.placement],
            **card.architecture.params,
        )
        try:
            result = network.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a shape mismatch
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
            raise InvalidInputError(
                f"{self.weights_path()}: the weights do not fit architecture {card.architecture.name!r} with the "
                f"card's parameters: {detail or exc}"
            ) from None
        problems = []
        if result.missing_keys:
            problems.append(f"missing {_few(result.missing_keys)}")
        if result.unexpected_keys:
            problems.append(f"unexpected {_few(result.unexpected_keys)}")
        if problems:
            raise InvalidInputError(
                f"{self.weights_path()}: the weights do not fit architecture {card.architecture.name!r} with "
                f"the card's parameters: {'; '.join(problems)}"
            )
        return network.to(torch.device(device) if isinstance(device, str) else device).eval()


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return f"{shown} (+{len(items) - n} more)" if len(items) > n else shown


def load_model_folder(folder: str | os.PathLike, *, source: str | ModelSource = ModelSource.PATH) -> RegistryModel:
    """Read a model folder: find its card, validate it, and check its paths.

    Raises
    ------
    FileFormatError
        If ``folder`` is not a folder or holds no card (``model.yaml``, ``model.yml``, ``model.json``).
    InvalidInputError
        If the card is invalid (the message names the fields).
    IntegrityError
        If the card (or a file it names) is a symlink leading out of the folder, or a path leaves it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileFormatError(f"model folder {folder} does not exist or is not a folder")
    card_path = find_card_file(folder)
    if card_path is None:
        raise FileFormatError(f"model folder {folder} holds no card (one of {', '.join(CARD_FILENAMES)})")
    resolved_folder = folder.resolve()
    if not card_path.resolve().is_relative_to(resolved_folder):
        raise IntegrityError(
            f"{card_path} is a symlink to {card_path.resolve()}, outside the model folder; refusing it"
        )
    card = read_card(card_path)
    return RegistryModel(card, resolved_folder, source=source, card_path=resolved_folder / card_path.name)
