"""The MedSeg module's logic: MRML nodes in, ``medseg`` background jobs, MRML nodes out.

Each long operation (predict, register, fine-tune) is a typed request
(:mod:`napari_medseg.jobs.requests`, the same one the ``medseg`` command line parses into) run as a
``medseg <command> --job-dir <folder>`` child process through :func:`napari_medseg.jobs.start_job`, so torch never loads into Slicer's
GUI process and Slicer never freezes. Inputs are written from their nodes with
:func:`napari_medseg.volume.write_volume` (NRRD: the exact geometry in double precision); the
widget calls :meth:`MedSegLogic.poll` from a ``qt.QTimer``, which reads only the new events of the
job's event file, and when the job is done the outputs are read back with ``read_volume`` /
``read_labels`` and loaded into nodes with :mod:`MedSegLib.nodes`. Cancel asks the child to stop at
its next check (and kills the process tree if it does not), and a cancelled task is reported as
``cancelled``, never as ``failed``.

No Qt, no ``slicer.app``: the scene is passed in, so this runs (and is tested) with the
``slicer-core`` wheel.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg._options import look_up_option
from napari_medseg.errors import InvalidInputError, MedsegError
from napari_medseg.jobs import (
    FinetuneRequest,
    Job,
    JobStatus,
    PredictRequest,
    RegisterRequest,
    Request,
    new_run_name,
    start_job,
)
from napari_medseg.training.config import FreezeMode
from napari_medseg.volume import (
    Geometry,
    Volume,
    read_labels,
    read_volume,
    write_volume,
)

from . import nodes
from .model_import import ImportTask, start_import

__all__ = ["POSTPROCESS_OPTIONS", "MedSegLogic", "Task", "TaskKind", "card_mismatches", "slice_of"]


class TaskKind(StrEnum):
    """What a :class:`Task` runs (the ``medseg`` subcommand)."""

    PREDICT = "predict"
    REGISTER = "register"
    FINETUNE = "finetune"


#: post-processing options of ``medseg predict`` (name -> CLI flag); values as the CLI takes them
POSTPROCESS_OPTIONS = {
    "opening_mm": "--opening-mm",
    "closing_mm": "--closing-mm",
    "fill_holes": "--fill-holes",
    "fill_holes_2d": "--fill-holes-2d",
    "min_size_mm3": "--min-size-mm3",
    "keep_largest": "--keep-largest",
    "labels": "--labels",
}


@dataclass
class Task:
    """A background job started by :class:`MedSegLogic`, and what came of it.

    Attributes
    ----------
    kind : TaskKind
    job : napari_medseg.jobs.Job
    work_dir : pathlib.Path
        The temporary folder with the inputs written from the nodes and the outputs.
    params : dict
        What the outputs are loaded with (node ids, names, model, paths).
    status : JobStatus
        The status at the last :meth:`MedSegLogic.poll`.
    progress : tuple of int
        ``(done, total)`` of the last ``progress`` event.
    messages : list of str
        ``log`` messages and warnings seen so far.
    error : str or None
        The failure message (for ``failed`` and ``lost``).
    outputs : dict
        The nodes made from the outputs, once loaded (``segmentation``, ``probabilities``,
        ``uncertainty`` for predict; ``warped``, ``transform`` for register; ``model`` name for
        finetune).
    """

    kind: TaskKind
    job: Job
    work_dir: Path
    params: dict = field(default_factory=dict)
    status: JobStatus = JobStatus.PENDING
    progress: tuple[int, int] = (0, 0)
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    outputs: dict = field(default_factory=dict)
    offset: int = 0
    loaded: bool = False
    cancel_requested_at: float | None = None

    @property
    def is_final(self) -> bool:
        """Whether the job has ended (done, failed, cancelled or lost)."""
        return self.status.is_final

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 before the first progress event)."""
        done, total = self.progress
        return float(done) / total if total else 0.0


def card_mismatches(volume: Volume, card) -> list[str]:
    """Why an input does not match a model card (shown before predicting; the child warns too):
    :func:`napari_medseg.registry.card_warnings`, which imports no torch."""
    from napari_medseg.registry import card_warnings

    return card_warnings(volume, card)


def slice_of(volume: Volume, k: int) -> Volume:
    """Slice ``k`` (array axis 0) of a volume as a single-slice Volume, placed exactly where it was.

    Raises
    ------
    InvalidInputError
        If ``k`` is outside ``[0, volume.shape[0])``.
    """
    if not 0 <= int(k) < volume.shape[0]:
        raise InvalidInputError(f"slice index k={k}: expected 0 <= k < {volume.shape[0]}")
    origin = volume.geometry.index_to_physical() @ np.array([0.0, 0.0, float(k), 1.0])
    geometry = Geometry(volume.geometry.spacing, tuple(origin[:3]), volume.geometry.direction)
    return Volume(volume.array[int(k) : int(k) + 1].copy(), geometry, volume.metadata)


def _check_number(name: str, value, *, low: float, high: float | None = None, integer: bool = False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or math.isnan(value) or not low <= value or (high is not None and not value < high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        kind = "an integer" if integer else "a number"
        raise InvalidInputError(f"{name}={value!r}: expected {kind} {bound}")
    return int(value) if integer else float(value)


class MedSegLogic:
    """Drives ``medseg`` jobs from MRML nodes and loads their results into the scene.

    Parameters
    ----------
    scene : vtkMRMLScene
        Where outputs are added (``slicer.mrmlScene`` in the application).
    jobs_root : str, os.PathLike or None, keyword-only
        Where job folders go (default: ``$MEDSEG_JOBS_DIR`` or the user data folder).
    python : str, os.PathLike or None, keyword-only
        Interpreter of the child processes: in Slicer, the ``PythonSlicer`` executable (default
        ``sys.executable``).
    work_root : str, os.PathLike or None, keyword-only
        Where each task's temporary folder is created (default: the system temp folder).
    registry : napari_medseg.registry.Registry or None, keyword-only
        Where model cards are looked up (default ``Registry()``: shipped models, the user folder,
        ``$MEDSEG_MODELS``).
    env : mapping or None, keyword-only
        Extra environment variables for the children (e.g. ``MEDSEG_MODELS``).
    cancel_grace_s : float, keyword-only
        After a cancel request, how long :meth:`poll` lets the child stop by itself before it
        kills the process tree. Default 30.
    """

    def __init__(
        self,
        scene,
        *,
        jobs_root: str | os.PathLike | None = None,
        python: str | os.PathLike | None = None,
        work_root: str | os.PathLike | None = None,
        registry=None,
        env: Mapping[str, str] | None = None,
        cancel_grace_s: float = 30.0,
    ) -> None:
        if scene is None:
            raise InvalidInputError("scene: expected a vtkMRMLScene (slicer.mrmlScene in the application)")
        self.scene = scene
        self.jobs_root = jobs_root
        self.python = python
        self.work_root = Path(work_root) if work_root is not None else Path(tempfile.gettempdir()) / "medseg-slicer"
        self._registry = registry
        self.env = dict(env or {})
        self.cancel_grace_s = float(cancel_grace_s)

    # -- models -------------------------------------------------------------------------------------
    @property
    def registry(self):
        """The registry (created on first use; call :meth:`refresh_models` after adding a model)."""
        if self._registry is None:
            from napari_medseg.registry import Registry

            self._registry = Registry()
        return self._registry

    def refresh_models(self) -> list[str]:
        """Rescan the registry (e.g. after a fine-tune added a model) and return the model names."""
        return self.model_names()

    def model_names(self) -> list[str]:
        """Names of the models in the registry, sorted."""
        return sorted(model.name for model in self.registry.scan().models)

    def card(self, model: str):
        """The :class:`~napari_medseg.registry.ModelCard` of a registry model.

        Raises
        ------
        InvalidInputError
            If there is no such model (the message suggests close names).
        """
        return self.registry.get(model).card

    def describe_card(self, model: str) -> str:
        """A few lines about a model for the widget: task, channels, labels, spacing, metrics."""
        from napari_medseg.card_summary import card_summary_text  # the one card summary of every face

        return card_summary_text(self.card(model))

    def mismatch_warnings(self, volume_node, model: str) -> list[str]:
        """:func:`card_mismatches` for a volume node and a registry model."""
        return card_mismatches(nodes.volume_from_node(volume_node), self.card(model))

    def start_import(self, kind: str, folder: str | os.PathLike, *, name: str | None = None,
                     folds: Sequence[int | str] | None = None, force: bool = False,
                     timeout_s: float = 600.0) -> ImportTask:
        """Start importing a MONAI bundle (``kind="bundle"``) or an nnU-Net v2 result folder
        (``kind="nnunet"``) into the user models folder; follow it with :meth:`poll_import`.

        The child runs ``medseg models import-bundle|import-nnunet FOLDER --add``
        (:func:`napari_medseg.registry.add_monai_bundle`, :func:`~napari_medseg.registry.add_nnunet`),
        so torch, MONAI and nnunetv2 never load into Slicer's GUI process and the GUI never waits.

        Raises
        ------
        InvalidInputError
            If ``kind`` is unknown or ``folder`` is not a folder (before any child starts).
        """
        return start_import(kind, folder, names=self.model_names, python=self.python, env=self.env, name=name,
                            folds=folds, force=force, timeout_s=timeout_s)

    def poll_import(self, task: ImportTask) -> bool:
        """Check an import without blocking; return ``task.is_final`` (:meth:`model_names` then lists the
        new model: the registry rescans its folders on every call)."""
        return task.poll()

    def import_bundle(self, folder: str | os.PathLike, *, name: str | None = None, force: bool = False,
                      timeout_s: float = 600.0) -> str:
        """Import a MONAI bundle into the user models folder, wait, and return the model's name.

        Raises
        ------
        InvalidInputError
            With the child's one-line reason if the bundle is refused (exit 2: a transform, inferer or
            network that is not reproduced, pickled weights, a classification bundle, ...).
        MedsegError
            If the child fails otherwise.
        """
        return self.start_import("bundle", folder, name=name, force=force, timeout_s=timeout_s).wait()

    def import_nnunet(self, folder: str | os.PathLike, *, folds: Sequence[int | str] | None = None,
                      name: str | None = None, force: bool = False, timeout_s: float = 600.0) -> str:
        """Import an nnU-Net v2 result folder into the user models folder and return the model's name.

        As :meth:`import_bundle`, for ``medseg models import-nnunet FOLDER --add``
        (:func:`napari_medseg.nnunet.add_nnunet`).

        Raises
        ------
        InvalidInputError
            With the child's one-line reason if the import is refused (exit 2: unsafe checkpoint,
            network outside the allow-list, missing fold, ...).
        MedsegError
            If the child fails otherwise.
        """
        return self.start_import("nnunet", folder, name=name, folds=folds, force=force, timeout_s=timeout_s).wait()

    # -- starting jobs ------------------------------------------------------------------------------
    def _work_dir(self, kind: str) -> Path:
        folder = self.work_root / new_run_name(kind)
        folder.mkdir(parents=True)
        return folder

    def _start(self, kind: TaskKind, request: Request, work_dir: Path, params: dict) -> Task:
        job = start_job(request, jobs_root=self.jobs_root, env=self.env, cwd=work_dir, python=self.python)
        return Task(kind=kind, job=job, work_dir=work_dir, params=params)

    def predict_argv(
        self,
        input_paths: Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        model: str,
        *,
        device: str = "auto",
        mc_samples: int = 0,
        dropout_rate: float | None = None,
        tta: bool = False,
        seed: int = 0,
        postprocess: Mapping[str, Any] | None = None,
        probabilities: bool = True,
        uncertainty: bool = True,
    ) -> list[str]:
        """The ``medseg predict`` arguments (without ``--job-dir``) for files already written:
        :meth:`predict_request`'s command line."""
        return self.predict_request(input_paths, output_dir, model, device=device, mc_samples=mc_samples,
                                    dropout_rate=dropout_rate, tta=tta, seed=seed, postprocess=postprocess,
                                    probabilities=probabilities, uncertainty=uncertainty).to_argv()

    def predict_request(
        self,
        input_paths: Sequence[str | os.PathLike],
        output_dir: str | os.PathLike,
        model: str,
        *,
        device: str = "auto",
        mc_samples: int = 0,
        dropout_rate: float | None = None,
        tta: bool = False,
        seed: int = 0,
        postprocess: Mapping[str, Any] | None = None,
        probabilities: bool = True,
        uncertainty: bool = True,
    ) -> PredictRequest:
        """The typed ``medseg predict`` request for files already written.

        Outputs go to ``output_dir``: ``labels.nrrd`` (+ ``.json`` sidecar), ``probabilities.nrrd``,
        ``uncertainty.nrrd``.

        Raises
        ------
        InvalidInputError
            If a number is out of range or a post-processing option is unknown.
        """
        from napari_medseg._options import close_matches_message
        from napari_medseg._validate import check_dropout_rate, check_mc_samples  # the CLI's own checks, torch-free

        out = Path(output_dir)
        options: dict[str, Any] = {
            "device": str(device),
            "mc_samples": check_mc_samples(_check_number("mc_samples", mc_samples, low=0, integer=True)),
            "seed": int(seed),
            "no_progress": True,
            "tta": bool(tta),
        }
        if dropout_rate is not None:
            options["dropout"] = check_dropout_rate(dropout_rate)
        if probabilities:
            options["probabilities"] = str(out / "probabilities.nrrd")
        if uncertainty:
            options["uncertainty"] = str(out / "uncertainty.nrrd")
        for key, value in (postprocess or {}).items():
            if key not in POSTPROCESS_OPTIONS:
                raise InvalidInputError(
                    f"postprocess option {key!r} is unknown; expected {', '.join(POSTPROCESS_OPTIONS)}"
                    + close_matches_message(key, list(POSTPROCESS_OPTIONS))
                )
            if value is None or value is False:
                continue
            if key in ("fill_holes", "fill_holes_2d"):
                options[key] = True
            elif key == "keep_largest":
                options[key] = 1 if value is True else _check_number(key, value, low=1, integer=True)
            elif key == "labels":
                options[key] = ",".join(str(int(v)) for v in value) if not isinstance(value, str) else value
            else:
                options[key] = _check_number(key, value, low=0.0)
        return PredictRequest(input=tuple(map(str, input_paths)), output=str(out / "labels.nrrd"), model=(str(model),),
                              **options)

    def start_predict(
        self,
        input_nodes: Sequence[Any] | Any,
        model: str,
        **options: Any,
    ) -> Task:
        """Segment the input node(s) with a registry model in a background ``medseg predict`` job.

        Parameters
        ----------
        input_nodes : volume node or sequence of volume nodes
            One node per model channel, in the card's channel order, on one grid.
        model : str
            Registry model name.
        **options
            ``device``, ``mc_samples``, ``dropout_rate``, ``tta``, ``seed``, ``postprocess``,
            ``probabilities``, ``uncertainty``: see :meth:`predict_argv`.

        Returns
        -------
        Task
            Poll it with :meth:`poll`; when done, ``outputs["segmentation"]`` is a Segmentation node
            with the card's segment names and colours, ``outputs["probabilities"]`` and
            ``outputs["uncertainty"]`` map component names to scalar volume nodes, all on the
            first input's geometry.

        Raises
        ------
        InvalidInputError
            If there is no input node, the model is unknown, or an option is invalid.
        """
        input_nodes = list(input_nodes) if isinstance(input_nodes, (list, tuple)) else [input_nodes]
        if not input_nodes:
            raise InvalidInputError("input_nodes: select at least one input volume")
        card = self.card(model)  # fails now, with suggestions, for an unknown model
        work = self._work_dir("predict")
        paths = []
        for i, node in enumerate(input_nodes):
            volume = nodes.volume_from_node(node)
            path = work / f"input_{i}.nrrd"
            write_volume(volume, path)
            paths.append(path)
        request = self.predict_request(paths, work, model, **options)
        params = {
            "input_node_ids": [n.GetID() for n in input_nodes],
            "input_name": input_nodes[0].GetName(),
            "model": model,
            "label_specs": {v: (card.labels[v].name, tuple(card.labels[v].color)) for v in card.label_values},
            "labels": str(work / "labels.nrrd"),
        }
        return self._start(TaskKind.PREDICT, request, work, params)

    def start_register(
        self,
        fixed_node,
        moving_node=None,
        *,
        moving_imzml: str | os.PathLike | None = None,
        mz: float | None = None,
        tolerance_ppm: float | None = None,
        tolerance_da: float | None = None,
        tic: bool = False,
        fixed_slice: int | None = None,
        metric: str = "udt",
        regularizer: str = "elastic",
        levels: int = 3,
        iterations: int = 400,
        resample: bool = True,
        fixed_mask_node=None,
        moving_mask_node=None,
    ) -> Task:
        """Register a MALDI image (volume node, or an imzML ion image) onto an MRI slice with UDT-SSD.

        Parameters
        ----------
        fixed_node : volume node
            The reference (MRI); with ``fixed_slice``, that slice of it (array axis 0, i.e. K).
        moving_node : volume node or None
            The MALDI image (e.g. an optical or ion image loaded as a volume), or None with
            ``moving_imzml``.
        moving_imzml : path or None, keyword-only
            An ``.imzML`` file whose ion image at ``mz`` (with ``tolerance_ppm`` or
            ``tolerance_da``, optionally TIC-normalised) is the moving image.
        fixed_slice : int or None, keyword-only
            Register onto this slice of a 3D fixed volume (the outputs are placed on it).
        metric, regularizer, levels, iterations, resample
            As ``medseg register`` (defaults udt, elastic, 3, 400, resample on: the moving image
            is resampled onto the fixed grid in physical space when the grids differ).
        fixed_mask_node, moving_mask_node : volume node or None, keyword-only
            Object masks (default: Otsu threshold with holes filled).

        Returns
        -------
        Task
            When done, ``outputs["warped"]`` is the warped moving image (scalar volume node on the
            fixed geometry) and ``outputs["transform"]`` a grid transform node that Slicer can
            apply to any node in the moving space (see :func:`MedSegLib.nodes.field_to_grid_transform`).

        Raises
        ------
        InvalidInputError
            If neither or both moving inputs are given, the imzML options are incomplete, or a
            number is out of range.
        """
        if (moving_node is None) == (moving_imzml is None):
            raise InvalidInputError("give exactly one of moving_node and moving_imzml")
        if moving_imzml is not None:
            if mz is None or (tolerance_ppm is None) == (tolerance_da is None):
                raise InvalidInputError("an imzML moving image needs mz and exactly one of tolerance_ppm, tolerance_da")
            if not Path(moving_imzml).is_file():
                raise InvalidInputError(f"moving_imzml={str(moving_imzml)!r} is not an existing file")
        levels = _check_number("levels", levels, low=1, integer=True)
        iterations = _check_number("iterations", iterations, low=1, integer=True)
        work = self._work_dir("register")
        fixed = nodes.volume_from_node(fixed_node)
        if fixed_slice is not None:
            fixed = slice_of(fixed, fixed_slice)
        write_volume(fixed, work / "fixed.nrrd")
        options: dict[str, Any] = {"fixed": str(work / "fixed.nrrd")}
        if moving_node is not None:
            write_volume(nodes.volume_from_node(moving_node), work / "moving.nrrd")
            options["moving"] = str(work / "moving.nrrd")
            moving_name = moving_node.GetName()
        else:
            options.update(moving=str(Path(moving_imzml).resolve()), mz=float(mz), tic=bool(tic))
            if tolerance_ppm is not None:
                options["tolerance_ppm"] = float(tolerance_ppm)
            else:
                options["tolerance_da"] = float(tolerance_da)
            moving_name = f"{Path(moving_imzml).stem} m/z {float(mz):g}"
        for key, node, file in (("fixed_mask", fixed_mask_node, "fixed_mask.nrrd"), ("moving_mask", moving_mask_node, "moving_mask.nrrd")):
            if node is not None:
                mask = nodes.volume_from_node(node)
                if key == "fixed_mask" and fixed_slice is not None:
                    mask = slice_of(mask, fixed_slice)
                write_volume(mask.derive((mask.array != 0).astype(np.uint8)), work / file)
                options[key] = str(work / file)
        request = RegisterRequest(
            **options, out=str(work / "warped.nrrd"), field=str(work / "field.nrrd"), metric=str(metric),
            regularizer=str(regularizer), levels=levels, iterations=iterations, resample=bool(resample),
        )
        params = {"moving_name": moving_name, "fixed_node_id": fixed_node.GetID()}
        return self._start(TaskKind.REGISTER, request, work, params)

    def write_case(self, volume_node, segmentation_node, folder: str | os.PathLike, *, case_id: str = "slicer_case",
                   label_values: Mapping[str, int] | None = None) -> tuple[Path, Path]:
        """Write a volume and its (corrected) segmentation as a training case, exact geometry.

        The layout is the one ``medseg train --data`` reads: ``folder/imagesTr/<case_id>_0000.nrrd``
        and ``folder/labelsTr/<case_id>.nrrd``; the label map is the segmentation exported on the
        volume's grid (:func:`MedSegLib.nodes.segmentation_to_labels`).

        Returns
        -------
        (image path, label path)

        Raises
        ------
        InvalidInputError
            If a node is of the wrong type or the files exist.
        """
        image = nodes.volume_from_node(volume_node)
        labels = nodes.segmentation_to_labels(segmentation_node, image, label_values=label_values)
        root = Path(folder).resolve()
        image_path = root / "imagesTr" / f"{case_id}_0000.nrrd"
        label_path = root / "labelsTr" / f"{case_id}.nrrd"
        for path in (image_path, label_path):
            if path.exists():
                raise InvalidInputError(f"{path} already exists; choose another case id or folder")
            path.parent.mkdir(parents=True, exist_ok=True)
        write_volume(image, image_path)
        write_volume(labels, label_path)
        return image_path, label_path

    def start_finetune(
        self,
        volume_node,
        segmentation_node,
        model: str,
        *,
        dataset: str | os.PathLike | None = None,
        output: str | os.PathLike | None = None,
        name: str | None = None,
        epochs: int = 20,
        iterations_per_epoch: int | None = None,
        freeze: str = "encoder",
        device: str = "auto",
        add_to_registry: bool = True,
    ) -> Task:
        """Fine-tune a registry model on the current case (plus an optional dataset) in a background job.

        The case is the volume with the segmentation as corrected in Segment Editor (segment values
        from :data:`MedSegLib.nodes.LABEL_VALUE_TAG`, else the card's label names). With
        ``dataset``, a CSV lists this case and the dataset's cases.

        Returns
        -------
        Task
            When done, ``outputs["model"]`` is the new model's name (added to the user registry
            with ``add_to_registry``) and ``outputs["model_folder"]`` its folder.

        Raises
        ------
        InvalidInputError
            If the model is unknown, ``epochs`` is not a positive integer, ``freeze`` is not one of
            encoder / all-but-last / none, or ``dataset`` does not exist.
        """
        request, work, params = self.finetune_request(
            volume_node, segmentation_node, model, dataset=dataset, output=output, name=name, epochs=epochs,
            iterations_per_epoch=iterations_per_epoch, freeze=freeze, device=device, add_to_registry=add_to_registry,
        )
        return self._start(TaskKind.FINETUNE, request, work, params)

    def prepare_finetune(
        self,
        volume_node,
        segmentation_node,
        model: str,
        *,
        dataset: str | os.PathLike | None = None,
        output: str | os.PathLike | None = None,
        name: str | None = None,
        epochs: int = 20,
        iterations_per_epoch: int | None = None,
        freeze: str = "encoder",
        device: str = "auto",
        add_to_registry: bool = True,
    ) -> tuple[list[str], Path, dict]:
        """Write the case and build the ``medseg finetune`` argv of :meth:`start_finetune` without starting it.

        Returns
        -------
        (argv, work folder, params)
        """
        request, work, params = self.finetune_request(
            volume_node, segmentation_node, model, dataset=dataset, output=output, name=name, epochs=epochs,
            iterations_per_epoch=iterations_per_epoch, freeze=freeze, device=device, add_to_registry=add_to_registry,
        )
        return request.to_argv(), work, params

    def finetune_request(
        self,
        volume_node,
        segmentation_node,
        model: str,
        *,
        dataset: str | os.PathLike | None = None,
        output: str | os.PathLike | None = None,
        name: str | None = None,
        epochs: int = 20,
        iterations_per_epoch: int | None = None,
        freeze: str = "encoder",
        device: str = "auto",
        add_to_registry: bool = True,
    ) -> tuple[FinetuneRequest, Path, dict]:
        """Write the case and build the typed ``medseg finetune`` request of :meth:`start_finetune`.

        The model's name defaults to ``<base>-<volume name>-finetuned``
        (:func:`napari_medseg.training.finetune.finetune_name`).

        Returns
        -------
        (request, work folder, params)
        """
        from napari_medseg.training.finetune import finetune_name

        card = self.card(model)
        epochs = _check_number("epochs", epochs, low=1, integer=True)
        freeze = look_up_option(freeze, FreezeMode, name="freeze").value
        if iterations_per_epoch is not None:
            iterations_per_epoch = _check_number("iterations_per_epoch", iterations_per_epoch, low=1, integer=True)
        if dataset is not None and not Path(dataset).exists():
            raise InvalidInputError(f"dataset={str(dataset)!r} does not exist")
        work = self._work_dir("finetune")
        by_name = {card.labels[v].name: v for v in card.label_values}
        self.write_case(volume_node, segmentation_node, work / "case", label_values=by_name)
        data: Path = work / "case"
        if dataset is not None:
            from napari_medseg.training.data import discover_cases, write_dataset_csv

            cases = discover_cases(work / "case") + discover_cases(dataset)
            data = write_dataset_csv(cases, work / "dataset.csv")
        name = name or finetune_name(card, volume_node.GetName() or "case")
        out = Path(output) if output is not None else work / "run"
        request = FinetuneRequest(
            model=model, data=str(data), output=str(out), epochs=epochs, freeze=freeze, device=str(device), name=name,
            iterations_per_epoch=iterations_per_epoch, add_to_registry=bool(add_to_registry),
        )
        return request, work, {"model": model, "name": name}

    # -- following jobs -----------------------------------------------------------------------------
    def poll(self, task: Task) -> list[dict]:
        """Read the task's new events, update its status and progress; load outputs when done.

        Cheap (reads only the bytes appended since the last call): call it from a ``qt.QTimer``.

        Returns
        -------
        list of dict
            The new events.
        """
        events, task.offset = task.job.read_events(task.offset)
        for event in events:
            name = event.get("event")
            if name == "progress":
                task.progress = (int(event.get("done", 0)), int(event.get("total", 0)))
            elif name == "epoch":
                task.progress = (int(event.get("epoch", 0)), int(event.get("epochs", 0)))
            elif name == "log":
                task.messages.append(str(event.get("message", "")))
            elif name == "error":
                task.error = str(event.get("message", "failed"))
        task.status = task.job.status()
        if task.status == JobStatus.LOST and task.error is None:
            task.error = "the process ended without a result: " + (task.job.log_tail(5, stream="stderr").strip() or "no message")
        if task.status == JobStatus.FAILED and task.error is None:
            task.error = task.job.summary()["final"].get("message", "failed")
        if (
            not task.is_final
            and task.cancel_requested_at is not None
            and time.monotonic() - task.cancel_requested_at > self.cancel_grace_s
        ):
            task.status = task.job.cancel(timeout_s=0.0, kill_after_s=2.0)  # the child did not stop: kill it
        if task.status == JobStatus.DONE and not task.loaded:
            self.load_outputs(task)
        return events

    def wait(self, task: Task, *, timeout_s: float = 120.0, interval_s: float = 0.1) -> JobStatus:
        """Poll until the task ends or ``timeout_s`` passes (scripts and tests; the GUI uses a timer)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll(task)
            if task.is_final or time.monotonic() > deadline:
                return task.status
            time.sleep(interval_s)

    def cancel(self, task: Task, *, wait_s: float = 0.0) -> JobStatus:
        """Ask the task's child to stop (non-blocking by default).

        The child stops at its next check and reports ``cancelled``; :meth:`poll` kills the
        process tree if it is still running ``cancel_grace_s`` later. With ``wait_s`` > 0, wait up
        to that long here (then signal, then kill) and return the final status.
        """
        if task.is_final:
            return task.status
        if task.cancel_requested_at is None:
            task.cancel_requested_at = time.monotonic()
        if wait_s > 0:
            task.status = task.job.cancel(timeout_s=wait_s, kill_after_s=min(wait_s, 5.0))
            self.poll(task)
        else:
            task.job.request_cancel()
        return task.status

    # -- loading outputs ----------------------------------------------------------------------------
    def load_outputs(self, task: Task) -> dict:
        """Load a done task's output files into nodes (called by :meth:`poll`); returns ``task.outputs``.

        Raises
        ------
        MedsegError
            If the task is not done.
        """
        if task.job.status() != JobStatus.DONE:
            raise MedsegError(f"job {task.job.id} is {task.job.status()}, not done: no outputs to load")
        final = task.job.summary()["final"] or {}
        files = final.get("outputs", {})
        if task.kind == TaskKind.PREDICT:
            task.outputs = self._load_prediction(task, files)
        elif task.kind == TaskKind.REGISTER:
            warped = read_volume(files["warped"])
            field_volume = read_volume(files["field"])
            name = task.params["moving_name"]
            task.outputs = {
                "warped": nodes.volume_to_node(warped, self.scene, name=f"{name} registered"),
                "transform": nodes.field_to_grid_transform(field_volume, self.scene, name=f"{name} to fixed"),
                "report": files.get("report", {}),
            }
        else:
            folder = files.get("model_folder")
            model_name = task.params["name"]
            if folder and Path(folder).is_dir():
                from napari_medseg.registry import load_model_folder

                model_name = load_model_folder(folder).card.name
            task.outputs = {"model": model_name, "model_folder": folder}
            self.refresh_models()
        task.loaded = True
        return task.outputs

    def _load_prediction(self, task: Task, files: Mapping[str, str]) -> dict:
        labels = read_labels(files["labels"])
        sidecar = json.loads(Path(files["sidecar"]).read_text()) if files.get("sidecar") else {}
        reference = self.scene.GetNodeByID(task.params["input_node_ids"][0])
        if reference is not None and not nodes.geometry_from_node(reference).isclose(labels.geometry, atol=1e-4):
            reference = None  # the node was changed meanwhile: keep the label map's own geometry
        base = f"{task.params['input_name']} {task.params['model']}"
        specs = {int(v): tuple(spec) for v, spec in task.params["label_specs"].items()}
        outputs: dict[str, Any] = {
            "segmentation": nodes.labels_to_segmentation(
                labels, self.scene, label_specs=specs, name=f"{base} segmentation", reference_volume_node=reference
            )
        }
        declared = sidecar.get("outputs", {})
        for role in ("probabilities", "uncertainty"):
            if role in files:
                volume = read_volume(files[role])
                components = (declared.get(role) or {}).get("components")
                if not components:
                    header = volume.metadata.get("medseg_components", "")
                    components = header.split(",") if header else [f"{role}_{i}" for i in range(volume.n_components)]
                prefix = f"{base} {'p(' if role == 'probabilities' else ''}"
                made = nodes.component_nodes(volume, self.scene, names=components, prefix=prefix)
                if role == "probabilities":
                    for comp, node in made.items():
                        node.SetName(f"{base} p({comp})")
                outputs[role] = made
        outputs["provenance"] = sidecar
        return outputs

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(
        self,
        segmentation_node,
        reference_segmentation_node,
        reference_volume_node,
        *,
        label_values: Mapping[str, int] | None = None,
        name: str = "medseg metrics",
    ):
        """Compare two segmentations on a volume's grid -> a table node of the metrics.

        Both are exported onto ``reference_volume_node``'s grid (nearest neighbour) with
        :func:`MedSegLib.nodes.segmentation_to_labels` and scored with
        :func:`napari_medseg.metrics.evaluate` (fast; runs here, not as a job).

        Returns
        -------
        vtkMRMLTableNode
            One row per label (see :func:`MedSegLib.nodes.metrics_to_table`).
        """
        from napari_medseg.metrics import evaluate

        pred = nodes.segmentation_to_labels(segmentation_node, reference_volume_node, label_values=label_values)
        ref = nodes.segmentation_to_labels(reference_segmentation_node, reference_volume_node, label_values=label_values)
        result = evaluate(pred, ref, names=(segmentation_node.GetName(), reference_segmentation_node.GetName()))
        names = {}
        for volume in (ref, pred):
            for key, value in volume.metadata.items():
                if key.endswith("_LabelValue"):
                    names.setdefault(int(value), volume.metadata[key.replace("_LabelValue", "_Name")])
        return nodes.metrics_to_table(result, self.scene, label_names=names, name=name)

    def cleanup(self, task: Task) -> None:
        """Delete a final task's temporary folder (its outputs are in the scene by then)."""
        if task.is_final:
            shutil.rmtree(task.work_dir, ignore_errors=True)
