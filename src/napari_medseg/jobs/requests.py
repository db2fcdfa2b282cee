"""Typed job requests: what a job runs, as data.

A request (:class:`PredictRequest`, :class:`RegisterRequest`, :class:`TrainRequest`,
:class:`FinetuneRequest`, :class:`RefineRequest`, :class:`SelftestRequest`) is a frozen dataclass
whose fields are the options of one ``medseg`` subcommand, named as the parser's destinations
(units in the names: ``opening_mm``, ``step_seconds``...). One request type serves every face:

- the faces (napari Train widget, Slicer logic) build requests and start them with
  :func:`napari_medseg.jobs.start_job`;
- the CLI parses a command line into the same request (:meth:`Request.from_namespace`,
  :func:`request_from_argv`);
- ``job.json`` stores :meth:`Request.to_record` (a plain JSON object with ``kind`` and
  ``schema``), and :meth:`Job.resume <napari_medseg.jobs.Job.resume>` reads it back with
  :func:`request_from_record`, which checks every key and type and never evaluates anything;
- :meth:`Request.to_argv` is the only writer of a job's ``medseg`` argument list.

Field defaults are the parser's defaults, and :meth:`Request.to_argv` leaves out a field equal to
its default, so the argv of a request is the shortest command line that means it.

This module imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, ClassVar

from napari_medseg._validate import check_dropout_rate, check_mc_samples, check_overlap, check_positive_int
from napari_medseg.errors import InvalidInputError
from napari_medseg.jobs.protocol import JobKind

__all__ = [
    "REQUEST_SCHEMA",
    "Request",
    "PredictRequest",
    "RegisterRequest",
    "TrainRequest",
    "FinetuneRequest",
    "RefineRequest",
    "SelftestRequest",
    "REQUEST_TYPES",
    "request_from_record",
    "request_from_argv",
]

#: Version of the record layout written by :meth:`Request.to_record`; a record of another version is refused.
REQUEST_SCHEMA = 1

# value kinds of a field: how it is checked and how it is written on the command line
_PATH, _PATHS, _STR, _STRS, _INT, _FLOAT, _BOOL = "path", "paths", "str", "strs", "int", "float", "bool"
_EXPECTED = {
    _PATH: "a path (a non-empty string)",
    _PATHS: "a list of paths",
    _STR: "a string",
    _STRS: "a list of strings",
    _INT: "an integer",
    _FLOAT: "a finite number",
    _BOOL: "true or false",
}
_MAX_ITEMS = 1000
_MAX_CHARS = 8192


def _option(
    flag: str | None,
    kind: str,
    default: Any = None,
    *,
    positional: bool = False,
    required: bool = False,
    repeat: bool = False,
    minimum: float | None = None,
) -> Any:
    """A request field: its ``medseg`` flag (None for a positional), value kind and default."""
    metadata = {
        "flag": flag,
        "kind": kind,
        "positional": positional,
        "required": required or positional,
        "repeat": repeat,
        "minimum": minimum,
    }
    return field(default=default, metadata=metadata)


def _bad(where: str, name: str, value: Any, expected: str) -> InvalidInputError:
    return InvalidInputError(f"{where}: field {name!r}={value!r:.80}: expected {expected}")


def _check_path(value: Any, name: str, where: str, *, strict: bool) -> str:
    if not strict and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or len(value) > _MAX_CHARS or "\0" in value:
        raise _bad(where, name, value, _EXPECTED[_PATH])
    if strict and not PurePath(value).is_absolute() and os.path.normpath(value).split(os.sep)[0] == "..":
        # a record is data: a relative path resolves in the job's folder and may not climb out of it
        raise _bad(where, name, value, "an absolute path, or a relative one inside the job's working folder")
    return value


def _anchor(path: str, cwd: str | os.PathLike) -> str:
    if PurePath(path).is_absolute() or os.path.normpath(path).split(os.sep)[0] != "..":
        return path
    return os.path.normpath(os.path.join(os.path.abspath(cwd), path))


def _check_value(kind: str, value: Any, name: str, where: str, *, strict: bool, minimum: float | None) -> Any:
    """``value`` checked (and, from a face, normalised: paths to str, lists to tuples) for ``kind``."""
    if kind == _PATH:
        return _check_path(value, name, where, strict=strict)
    if kind in (_PATHS, _STRS):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple) if not strict else list):
            raise _bad(where, name, value, _EXPECTED[kind])
        if len(value) > _MAX_ITEMS:
            raise _bad(where, name, f"<{len(value)} items>", f"at most {_MAX_ITEMS} items")
        item_kind = _PATH if kind == _PATHS else _STR
        return tuple(_check_value(item_kind, v, f"{name}[{i}]", where, strict=strict, minimum=None) for i, v in enumerate(value))
    if kind == _STR:
        if not isinstance(value, str) or len(value) > _MAX_CHARS or "\0" in value:
            raise _bad(where, name, value, _EXPECTED[_STR])
        return value
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise _bad(where, name, value, _EXPECTED[_BOOL])
        return value
    if kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok and not strict and hasattr(value, "__index__") and not isinstance(value, bool):  # numpy integers
            value, ok = int(value), True
        if not ok or abs(value) > 2**53:
            raise _bad(where, name, value, _EXPECTED[_INT])
    elif kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)) and (strict or not hasattr(value, "__float__")):
            raise _bad(where, name, value, _EXPECTED[_FLOAT])
        value = float(value)
        if not math.isfinite(value):
            raise _bad(where, name, value, _EXPECTED[_FLOAT])
    else:  # pragma: no cover - a field declared with an unknown kind is a bug here
        raise AssertionError(kind)
    if minimum is not None and value < minimum:
        raise _bad(where, name, value, f"{_EXPECTED[kind]} >= {minimum:g}")
    return value


@dataclass(frozen=True)
class Request:
    """Base of the typed job requests (see the module docstring)."""

    kind: ClassVar[JobKind]
    #: the ``medseg`` words before the options (the subcommand)
    command: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        where = f"{self.kind} request"
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (value is f.default and f.metadata["kind"] != _PATHS):
                if value is None and f.metadata["required"]:
                    raise InvalidInputError(f"{where}: field {f.name!r} is required ({f.metadata['flag'] or 'positional'})")
                continue
            checked = _check_value(f.metadata["kind"], value, f.name, where, strict=False, minimum=f.metadata["minimum"])
            object.__setattr__(self, f.name, checked)
        if self.kind != JobKind.SELFTEST and not self.command == (str(self.kind),):  # pragma: no cover
            raise AssertionError(self.command)
        self._check()

    def _check(self) -> None:
        """Range checks shared with the CLI (napari_medseg._validate); overridden per kind."""

    # -- record ------------------------------------------------------------------------------------
    def to_record(self) -> dict:
        """The request as a plain JSON object: ``kind``, ``schema`` and the fields that are set."""
        record: dict[str, Any] = {"kind": str(self.kind), "schema": REQUEST_SCHEMA}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            record[f.name] = list(value) if isinstance(value, tuple) else value
        return record

    @classmethod
    def from_record(cls, record: Any, *, where: str = "job record") -> Request:
        """The request a record holds, checked strictly.

        Raises
        ------
        InvalidInputError
            If ``record`` is not a JSON object of this kind and schema, has a key that is not a
            field, a value of the wrong type (a string where a list belongs...), a relative path
            that climbs out of the job's folder, or a value out of range; the message names the field.
        """
        where = f"{where}: request"
        if not isinstance(record, Mapping):
            raise InvalidInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if record.get("kind") != str(cls.kind):
            raise _bad(where, "kind", record.get("kind", "<missing>"), repr(str(cls.kind)))
        schema = record.get("schema")
        if isinstance(schema, bool) or schema != REQUEST_SCHEMA:
            raise _bad(where, "schema", schema, f"{REQUEST_SCHEMA} (this version's request layout)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - set(fields) - {"kind", "schema"})
        if unknown:
            raise InvalidInputError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} for a {cls.kind} request")
        values = {}
        for name, f in fields.items():
            if name not in record or record[name] is None:
                continue
            values[name] = _check_value(f.metadata["kind"], record[name], name, where, strict=True, minimum=f.metadata["minimum"])
        try:
            return cls(**values)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None

    # -- command line --------------------------------------------------------------------------------
    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> Request:
        """The request an ``argparse`` namespace of the ``medseg`` parser holds (attributes: the field names)."""
        values = {}
        for f in dataclasses.fields(cls):
            value = getattr(namespace, f.name, None)
            if value is not None:
                values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def to_argv(self) -> list[str]:
        """The ``medseg`` arguments (without ``--job-dir``): positionals first, then every option
        whose value differs from its default, in field order."""
        argv = list(self.command)
        options: list[str] = []
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or (not meta["positional"] and value == f.default):
                continue
            items = value if isinstance(value, tuple) else (value,)
            text = [repr(v) if isinstance(v, float) else str(v) for v in items]
            if meta["positional"]:
                argv += text
            elif meta["kind"] == _BOOL:
                options.append(meta["flag"])
            elif meta["repeat"]:
                for item in text:
                    options += [meta["flag"], item]
            else:
                options += [meta["flag"], *text]
        return argv + options

    @property
    def output_path(self) -> str | None:
        """The output the job writes and locks (``--output`` or predict's ``OUT``), or None."""
        return getattr(self, "output", None)

    def anchored(self, cwd: str | os.PathLike) -> Request:
        """A copy whose relative paths that climb out of ``cwd`` (``../data``) are made absolute
        against ``cwd``, so the job record holds no path that escapes the job's working folder."""
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            kind, value = f.metadata["kind"], getattr(self, f.name)
            if value is None or kind not in (_PATH, _PATHS):
                continue
            items = value if kind == _PATHS else (value,)
            fixed = tuple(_anchor(item, cwd) for item in items)
            if fixed != items:
                changes[f.name] = fixed if kind == _PATHS else fixed[0]
        return self.replace(**changes) if changes else self

    def replace(self, **changes: Any) -> Request:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PredictRequest(Request):
    """``medseg predict IN... OUT --model NAME ...`` (one case, or a cohort)."""

    kind: ClassVar[JobKind] = JobKind.PREDICT
    command: ClassVar[tuple[str, ...]] = ("predict",)

    input: tuple[str, ...] = _option(None, _PATHS, positional=True)
    output: str | None = _option(None, _PATH, positional=True)
    model: tuple[str, ...] = _option("--model", _STRS, required=True, repeat=True)
    device: str = _option("--device", _STR, "auto")
    overlap: float | None = _option("--overlap", _FLOAT)
    batch_size: int | None = _option("--batch-size", _INT)
    mc_samples: int = _option("--mc-samples", _INT, 0)
    dropout: float | None = _option("--dropout", _FLOAT)
    tta: bool = _option("--tta", _BOOL, False)
    seed: int = _option("--seed", _INT, 0)
    probabilities: str | None = _option("--probabilities", _PATH)
    uncertainty: str | None = _option("--uncertainty", _PATH)
    no_progress: bool = _option("--no-progress", _BOOL, False)
    series_uid: str | None = _option("--series-uid", _STR)
    series_number: int | None = _option("--series-number", _INT)
    volume: int | None = _option("--volume", _INT, minimum=0)
    labels: str | None = _option("--labels", _STR)
    opening_mm: float | None = _option("--opening-mm", _FLOAT, minimum=0)
    closing_mm: float | None = _option("--closing-mm", _FLOAT, minimum=0)
    fill_holes: bool = _option("--fill-holes", _BOOL, False)
    fill_holes_2d: bool = _option("--fill-holes-2d", _BOOL, False)
    min_size_mm3: float | None = _option("--min-size-mm3", _FLOAT, minimum=0)
    keep_largest: int | None = _option("--keep-largest", _INT, minimum=1)
    overwrite: bool = _option("--overwrite", _BOOL, False)
    num_parts: int = _option("--num-parts", _INT, 1)
    part_id: int = _option("--part-id", _INT, 0)
    workers: int = _option("--workers", _INT, 1)
    output_format: str | None = _option("--output-format", _STR)
    strict: bool = _option("--strict", _BOOL, False)

    def _check(self) -> None:
        if not self.input:
            raise InvalidInputError("predict request: field 'input' needs at least one input")
        if not self.model:
            raise InvalidInputError("predict request: field 'model' needs at least one model")
        check_mc_samples(self.mc_samples, name="mc_samples")
        if self.dropout is not None:
            check_dropout_rate(self.dropout, name="dropout")
        if self.overlap is not None:
            check_overlap(self.overlap)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        if self.fill_holes and self.fill_holes_2d:
            raise InvalidInputError("predict request: fields 'fill_holes' and 'fill_holes_2d' exclude each other")


@dataclass(frozen=True)
class RegisterRequest(Request):
    """``medseg register --fixed F --moving M --out WARPED ...``."""

    kind: ClassVar[JobKind] = JobKind.REGISTER
    command: ClassVar[tuple[str, ...]] = ("register",)

    fixed: str | None = _option("--fixed", _PATH)
    moving: str | None = _option("--moving", _PATH)
    mz: float | None = _option("--mz", _FLOAT, minimum=0)
    tolerance_ppm: float | None = _option("--tolerance-ppm", _FLOAT, minimum=0)
    tolerance_da: float | None = _option("--tolerance-da", _FLOAT, minimum=0)
    tic: bool = _option("--tic", _BOOL, False)
    fixed_mask: str | None = _option("--fixed-mask", _PATH)
    moving_mask: str | None = _option("--moving-mask", _PATH)
    out: str | None = _option("--out", _PATH)
    field: str | None = _option("--field", _PATH)
    warped_mask: str | None = _option("--warped-mask", _PATH)
    metric: str = _option("--metric", _STR, "udt")
    regularizer: str = _option("--regularizer", _STR, "elastic")
    levels: int = _option("--levels", _INT, 3, minimum=1)
    iterations: int = _option("--iterations", _INT, 400, minimum=1)
    tau: float = _option("--tau", _FLOAT, 1.0)
    mu: float = _option("--mu", _FLOAT, 0.5)
    lambda_: float = _option("--lambda", _FLOAT, 0.5)
    scale_invariant: bool = _option("--scale-invariant", _BOOL, False)
    resample: bool = _option("--resample", _BOOL, False)
    json: bool = _option("--json", _BOOL, False)

    def _check(self) -> None:
        if self.tolerance_ppm is not None and self.tolerance_da is not None:
            raise InvalidInputError("register request: give one of the fields 'tolerance_ppm', 'tolerance_da'")


def _training_options() -> dict[str, Any]:
    """The options ``train``, ``finetune`` and ``refine`` share (cli/_train.py's ``_common``)."""
    return {
        "config": _option("--config", _PATH),
        "data": _option("--data", _PATH),
        "output": _option("--output", _PATH),
        "epochs": _option("--epochs", _INT, minimum=1),
        "iterations_per_epoch": _option("--iterations-per-epoch", _INT, minimum=1),
        "batch_size": _option("--batch-size", _INT, minimum=1),
        "learning_rate": _option("--learning-rate", _FLOAT, minimum=0),
        "loss": _option("--loss", _STR),
        "mixup_alpha": _option("--mixup-alpha", _FLOAT, minimum=0),
        "device": _option("--device", _STR),
        "seed": _option("--seed", _INT),
        "name": _option("--name", _STR),
        "add_to_registry": _option("--add-to-registry", _BOOL, False),
        "resume": _option("--resume", _BOOL, False),  # last: a resumed job's argv is its argv + --resume
    }


@dataclass(frozen=True)
class TrainRequest(Request):
    """``medseg train --data D --output RUN ...``."""

    kind: ClassVar[JobKind] = JobKind.TRAIN
    command: ClassVar[tuple[str, ...]] = ("train",)

    config: str | None = _training_options()["config"]
    data: str | None = _training_options()["data"]
    output: str | None = _training_options()["output"]
    epochs: int | None = _training_options()["epochs"]
    iterations_per_epoch: int | None = _training_options()["iterations_per_epoch"]
    batch_size: int | None = _training_options()["batch_size"]
    learning_rate: float | None = _training_options()["learning_rate"]
    loss: str | None = _training_options()["loss"]
    mixup_alpha: float | None = _training_options()["mixup_alpha"]
    device: str | None = _training_options()["device"]
    seed: int | None = _training_options()["seed"]
    name: str | None = _training_options()["name"]
    add_to_registry: bool = _training_options()["add_to_registry"]
    resume: bool = _training_options()["resume"]


@dataclass(frozen=True)
class FinetuneRequest(Request):
    """``medseg finetune --model BASE --data D --output RUN ...`` (card rules: :mod:`napari_medseg.training.finetune`)."""

    kind: ClassVar[JobKind] = JobKind.FINETUNE
    command: ClassVar[tuple[str, ...]] = ("finetune",)

    model: str | None = _option("--model", _STR, required=True)
    freeze: str = _option("--freeze", _STR, "encoder")
    pretrained_lr_factor: float = _option("--pretrained-lr-factor", _FLOAT, 0.1, minimum=0)
    label_map: str | None = _option("--label-map", _STR)
    config: str | None = _training_options()["config"]
    data: str | None = _training_options()["data"]
    output: str | None = _training_options()["output"]
    epochs: int | None = _training_options()["epochs"]
    iterations_per_epoch: int | None = _training_options()["iterations_per_epoch"]
    batch_size: int | None = _training_options()["batch_size"]
    learning_rate: float | None = _training_options()["learning_rate"]
    loss: str | None = _training_options()["loss"]
    mixup_alpha: float | None = _training_options()["mixup_alpha"]
    device: str | None = _training_options()["device"]
    seed: int | None = _training_options()["seed"]
    name: str | None = _training_options()["name"]
    add_to_registry: bool = _training_options()["add_to_registry"]
    resume: bool = _training_options()["resume"]

    def _check(self) -> None:
        _check_freeze(self.freeze)


@dataclass(frozen=True)
class RefineRequest(Request):
    """``medseg refine --model BASE --data D --output RUN --rounds N ...``."""

    kind: ClassVar[JobKind] = JobKind.REFINE
    command: ClassVar[tuple[str, ...]] = ("refine",)

    model: str | None = _option("--model", _STR, required=True)
    rounds: int = _option("--rounds", _INT, 3, minimum=1)
    freeze: str = _option("--freeze", _STR, "encoder")
    reference: str | None = _option("--reference", _PATH)
    config: str | None = _training_options()["config"]
    data: str | None = _training_options()["data"]
    output: str | None = _training_options()["output"]
    epochs: int | None = _training_options()["epochs"]
    iterations_per_epoch: int | None = _training_options()["iterations_per_epoch"]
    batch_size: int | None = _training_options()["batch_size"]
    learning_rate: float | None = _training_options()["learning_rate"]
    loss: str | None = _training_options()["loss"]
    mixup_alpha: float | None = _training_options()["mixup_alpha"]
    device: str | None = _training_options()["device"]
    seed: int | None = _training_options()["seed"]
    name: str | None = _training_options()["name"]
    add_to_registry: bool = _training_options()["add_to_registry"]
    resume: bool = _training_options()["resume"]

    def _check(self) -> None:
        _check_freeze(self.freeze)


@dataclass(frozen=True)
class SelftestRequest(Request):
    """``medseg jobs selftest --output DIR ...`` (a small real job for tests and demos)."""

    kind: ClassVar[JobKind] = JobKind.SELFTEST
    command: ClassVar[tuple[str, ...]] = ("jobs", "selftest")

    output: str | None = _option("--output", _PATH, required=True)
    steps: int = _option("--steps", _INT, 20, minimum=1)
    step_seconds: float = _option("--step-seconds", _FLOAT, 0.0, minimum=0)
    checkpoint_every: int = _option("--checkpoint-every", _INT, 5, minimum=1)
    fail_at_step: int | None = _option("--fail-at-step", _INT)
    ignore_cancel_file: bool = _option("--ignore-cancel-file", _BOOL, False)
    resume: bool = _option("--resume", _BOOL, False)


def _check_freeze(freeze: str) -> None:
    from napari_medseg._options import look_up_option
    from napari_medseg.training.config import FreezeMode  # pydantic only, no torch

    look_up_option(freeze, FreezeMode, name="freeze")


#: The request type of each job kind.
REQUEST_TYPES: dict[str, type[Request]] = {
    str(cls.kind): cls
    for cls in (PredictRequest, RegisterRequest, TrainRequest, FinetuneRequest, RefineRequest, SelftestRequest)
}


def request_from_record(record: Any, *, where: str = "job record") -> Request:
    """The typed request a job record's ``request`` object holds (checked strictly; see :meth:`Request.from_record`).

    Raises
    ------
    InvalidInputError
        If ``record`` is not a request object of a known kind, or a field is wrong (named).
    """
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"{where}: request: expected a JSON object, got {type(record).__name__}")
    kind = record.get("kind")
    if kind not in REQUEST_TYPES:
        raise _bad(f"{where}: request", "kind", kind if kind is not None else "<missing>", "one of " + ", ".join(REQUEST_TYPES))
    return REQUEST_TYPES[kind].from_record(record, where=where)


def request_from_argv(kind: JobKind | str, argv: Sequence[str], *, where: str = "start_job") -> Request:
    """Parse a ``medseg`` argv with the ``medseg`` parser into the kind's typed request.

    Raises
    ------
    InvalidInputError
        If the argv is not the kind's command, the parser refuses it, or a value is out of range.
    """
    from napari_medseg.jobs import guard

    namespace = guard.parse_request(str(kind), argv, where=where)
    return REQUEST_TYPES[str(kind)].from_namespace(namespace)
