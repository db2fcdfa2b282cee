"""MONAI bundles as registry models, run exactly as MONAI's own bundle workflow runs them.

A MONAI Model Zoo bundle describes its inference as a config (``configs/inference.json``): a
network, a chain of MONAI preprocessing transforms, an inferer and a chain of postprocessing
transforms. :func:`import_monai_bundle` turns a bundle into a registry model folder whose card
records the network (``architecture``), the network's axis order (``axis_order: xyz``: MONAI
networks see channel-first tensors in the image's (i, j, k) = (x, y, z) order), the output
semantics (``outputs``: softmax or sigmoid, the network's output channels, the label values the
postprocessing produces) and the stored config (``bundle.config``). :func:`predict_bundle` then
runs that config's own chain with MONAI's own transform classes and inferer:

- the input :class:`~napari_medseg.volume.Volume` is handed to the bundle's ``LoadImaged`` through
  an in-memory NIfTI reader (so MONAI sees the array and RAS affine it would read from the file);
- preprocessing, :class:`monai.inferers.SlidingWindowInferer` (its ``roi_size``,
  ``sw_batch_size``, ``overlap``, ``mode``, ``sigma_scale``, padding; logits are blended, as
  MONAI does) and postprocessing (``Activationsd``, ``Invertd``, ``AsDiscreted``,
  ``KeepLargestConnectedComponentd``, label rules, ...) run as in MONAI's ``SupervisedEvaluator``;
- ``Invertd`` brings the prediction back onto the input's grid, which is checked against the
  input's geometry before the labels are returned in (z, y, x) order.

Nothing in a bundle is executed as code. The config is read as data; every ``_target_`` must be in
an allow-list of MONAI classes (:data:`PREPROCESSING_TRANSFORMS`, :data:`POSTPROCESSING_TRANSFORMS`,
:data:`INFERERS`), anything else is refused at import naming it; ``$`` expressions are evaluated by
:func:`evaluate_expression`, a small AST interpreter (literals, ``@`` references, arithmetic,
comparisons, conditional expressions, ``len``/``min``/``max``/..., dtype names), never by
:func:`eval`; ``$lambda`` is accepted only for a transform's ``func``/``select_fn`` and only over
tensor indexing, comparisons, arithmetic and ``torch.where`` (:func:`tensor_function`). Weights are
read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import math
import operator
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medseg._options import close_matches_message
from napari_medseg.errors import FileFormatError, InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_medseg.inference.result import Prediction
    from napari_medseg.registry import ModelCard, RegistryModel
    from napari_medseg.volume import Volume

__all__ = [
    "PREPROCESSING_TRANSFORMS",
    "POSTPROCESSING_TRANSFORMS",
    "INFERERS",
    "evaluate_expression",
    "tensor_function",
    "SafeConfig",
    "BundlePipeline",
    "build_pipeline",
    "import_monai_bundle",
    "bundle_name",
    "predict_bundle",
]

# ------------------------------------------------------------------------------ expression subset
_REF_RE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*(?:(?:::|#)[A-Za-z0-9_]+)*)")
_FUNCTIONS: dict[str, Callable] = {
    "len": len, "min": min, "max": max, "abs": abs, "int": int, "float": float, "str": str, "bool": bool,
    "round": round, "list": list, "tuple": tuple, "sum": sum,
}
_DTYPES = ("float16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")
_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
_MAX_SIZE = 1_000_000  # longest string/list an expression may build
# MONAI's key names, as templates write them ("$monai.utils.CommonKeys.IMAGE")
_KEY_CONSTANTS = {
    f"{prefix}CommonKeys.{key}": key.lower()
    for prefix in ("monai.utils.", "monai.utils.enums.", "")
    for key in ("IMAGE", "LABEL", "PRED", "LOSS", "METADATA")
}


def _dtype_constant(module: str, name: str) -> Any:
    if name not in _DTYPES:
        return None
    if module in ("numpy", "np"):
        return getattr(np, name if name != "bool" else "bool_")
    if module == "torch":
        import torch

        return getattr(torch, name)
    return None


class _Refused(Exception):
    """An expression outside the subset (turned into an InvalidInputError naming it)."""


def _binop(op: ast.operator, left: Any, right: Any) -> Any:
    if type(op) not in _BINOPS:
        raise _Refused(f"operator {type(op).__name__}")
    if isinstance(op, ast.Pow) and (not isinstance(right, (int, float)) or abs(right) > 64):
        raise _Refused("a power with an exponent outside [-64, 64]")
    if isinstance(op, ast.Mult) and isinstance(left, (str, list, tuple)) != isinstance(right, (str, list, tuple)):
        seq, n = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
        if isinstance(n, int) and len(seq) * max(n, 0) > _MAX_SIZE:
            raise _Refused("a repetition longer than 1e6")
    result = _BINOPS[type(op)](left, right)
    if isinstance(result, (str, list, tuple)) and len(result) > _MAX_SIZE:
        raise _Refused("a value longer than 1e6")
    if isinstance(result, int) and result.bit_length() > 4096:  # no ever-growing powers
        raise _Refused("an integer larger than 2**4096")
    return result


def _eval_node(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, names)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise _Refused(f"the name {node.id!r}")
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name):
            value = _dtype_constant(node.value.id, node.attr)
            if value is not None:
                return value
        if ast.unparse(node) in _KEY_CONSTANTS:
            return _KEY_CONSTANTS[ast.unparse(node)]
        raise _Refused(f"the attribute {ast.unparse(node)!r}")
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_eval_node(e, names) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _Refused("'**' in a dict")
        return {_eval_node(k, names): _eval_node(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BinOp):
        return _binop(node.op, _eval_node(node.left, names), _eval_node(node.right, names))
    if isinstance(node, ast.UnaryOp):
        value = _eval_node(node.operand, names)
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return +value
        if isinstance(node.op, ast.Not):
            return not value
        raise _Refused(f"operator {type(node.op).__name__}")
    if isinstance(node, ast.BoolOp):
        value = _eval_node(node.values[0], names)
        for item in node.values[1:]:
            if isinstance(node.op, ast.And) and not value or isinstance(node.op, ast.Or) and value:
                return value
            value = _eval_node(item, names)
        return value
    if isinstance(node, ast.Compare):
        left = _eval_node(node.left, names)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval_node(comparator, names)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval_node(node.body if _eval_node(node.test, names) else node.orelse, names)
    if isinstance(node, ast.Subscript):
        value = _eval_node(node.value, names)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else _eval_node(p, names) for p in (node.slice.lower, node.slice.upper, node.slice.step)]
            return value[slice(*parts)]
        return value[_eval_node(node.slice, names)]
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise _Refused(f"the call {ast.unparse(node.func)}(...)")
        args = [_eval_node(a, names) for a in node.args]
        return _FUNCTIONS[node.func.id](*args)
    raise _Refused(f"{type(node).__name__} syntax")


def _parse_expression(text: str, *, where: str) -> tuple[ast.AST, dict[str, str]]:
    if not isinstance(text, str) or not text.startswith("$"):
        raise InvalidInputError(f"{where}={text!r}: expected a '$' expression")
    body = text[1:].strip()
    if re.match(r"(import|from)\s", body):
        raise InvalidInputError(f"{where}={text!r}: imports are refused (bundle expressions are never run as code)")
    refs: dict[str, str] = {}

    def substitute(match: re.Match) -> str:
        name = f"__ref{len(refs)}"
        refs[name] = match.group(1)
        return name

    try:
        tree = ast.parse(_REF_RE.sub(substitute, body), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise InvalidInputError(f"{where}={text!r}: not a valid expression") from None
    return tree, refs


def evaluate_expression(text: str, resolve: Callable[[str], Any] | None = None, *, where: str = "expression") -> Any:
    """Evaluate a bundle ``$`` expression from a safe subset, never running code.

    The subset: literals (numbers, strings, ``True``/``False``/``None``, lists, tuples, dicts);
    ``@id`` references (``@a::b``, ``@a#b``) resolved by ``resolve``; ``+ - * / // % **`` (exponent
    at most 64, results at most 1e6 items long); unary ``- + not``; ``and``/``or``; comparisons
    (``== != < <= > >= in not in is is not``); ``a if c else b``; indexing and slicing; calls of
    ``len min max abs int float str bool round list tuple sum`` with positional arguments; the dtype
    names ``numpy.float32`` / ``np.uint8`` / ``torch.float32`` (and the other float, int and bool
    dtypes); MONAI's key names ``monai.utils.CommonKeys.IMAGE`` / ``LABEL`` / ``PRED``. Everything else (other names, attribute access, other calls, lambdas, comprehensions,
    imports) is refused.

    Parameters
    ----------
    text : str
        The expression, with its leading ``$``.
    resolve : callable(str) -> object, optional
        Resolves a reference id (``"a::b"``); without it references are refused.
    where : str
        Where the expression sits (the config path), for messages.

    Raises
    ------
    InvalidInputError
        Naming the expression and the first construct outside the subset, or the evaluation error.

    Examples
    --------
    >>> evaluate_expression("$len(@size) * 2", {"size": [96, 96, 64]}.__getitem__)
    6
    >>> evaluate_expression("$@root + '/models/model.pt'", {"root": "b"}.__getitem__)
    'b/models/model.pt'
    """
    tree, refs = _parse_expression(text, where=where)
    if isinstance(tree.body, ast.Lambda):
        raise InvalidInputError(f"{where}={text!r}: a lambda is only accepted as a transform's func or select_fn")
    names: dict[str, Any] = {"True": True, "False": False, "None": None}
    for local, ref in refs.items():
        if resolve is None:
            raise InvalidInputError(f"{where}={text!r}: references are not available here")
        names[local] = resolve(ref)
    try:
        return _eval_node(tree, names)
    except _Refused as exc:
        what = str(exc)
        for local, ref in refs.items():  # name the references as the config writes them
            what = what.replace(local, f"@{ref}")
        raise InvalidInputError(
            f"{where}={text!r}: {what} is outside the expression subset napari-medseg evaluates (see "
            "docs/model-card.md); bundle expressions are never run as code"
        ) from None
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError, RecursionError) as exc:
        raise InvalidInputError(f"{where}={text!r}: cannot be evaluated ({type(exc).__name__}: {exc})") from None


def _tensor_node(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """The lambda-body subset: the parameter, constants, indexing, arithmetic, comparisons, torch.where."""
    import torch

    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [e.value for e in node.elts]
    if isinstance(node, ast.Subscript):
        value = _tensor_node(node.value, names)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else _tensor_node(p, names) for p in (node.slice.lower, node.slice.upper, node.slice.step)]
            return value[slice(*parts)]
        return value[_tensor_node(node.slice, names)]
    if isinstance(node, ast.BinOp):
        ops = {**_BINOPS, ast.BitAnd: operator.and_, ast.BitOr: operator.or_}
        if type(node.op) not in ops or isinstance(node.op, ast.Pow):
            raise _Refused(f"operator {type(node.op).__name__}")
        return ops[type(node.op)](_tensor_node(node.left, names), _tensor_node(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert)):
        value = _tensor_node(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else ~value
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        if isinstance(node.ops[0], (ast.In, ast.NotIn, ast.Is, ast.IsNot)):
            raise _Refused(f"comparison {type(node.ops[0]).__name__}")
        return _CMPOPS[type(node.ops[0])](_tensor_node(node.left, names), _tensor_node(node.comparators[0], names))
    if (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch" and node.func.attr == "where" and len(node.args) == 3 and not node.keywords
    ):
        cond, a, b = (_tensor_node(arg, names) for arg in node.args)
        return torch.where(cond, a, b)
    raise _Refused(f"{ast.unparse(node)!r}")


@dataclass(frozen=True)
class _TensorFunction:
    """A callable made from a whitelisted ``$lambda``; picklable data, no code object."""

    text: str
    param: str
    body: ast.AST

    def __call__(self, x: Any) -> Any:
        try:
            return _tensor_node(self.body, {self.param: x})
        except _Refused as exc:  # pragma: no cover - checked when made
            raise InvalidInputError(f"{self.text!r}: {exc} is outside the lambda subset") from None


def tensor_function(text: str, *, where: str = "func") -> _TensorFunction:
    """A ``$lambda x: ...`` from a bundle as a callable over tensors, from a safe subset.

    The body may use the parameter, int/float/bool constants, indexing (``x[[2]]``, ``x[0]``,
    slices), ``+ - * / // % & |``, unary ``-`` and ``~``, one comparison at a time and
    ``torch.where(cond, a, b)``; nothing else (no other names, attributes or calls).

    Raises
    ------
    InvalidInputError
        Naming the lambda and the first construct outside the subset.
    """
    tree, refs = _parse_expression(text, where=where)
    lam = tree.body
    if refs or not isinstance(lam, ast.Lambda) or len(lam.args.args) != 1 or lam.args.vararg or lam.args.kwarg:
        raise InvalidInputError(f"{where}={text!r}: expected a lambda of one argument over tensors")
    param = lam.args.args[0].arg
    for node in ast.walk(lam.body):
        if isinstance(node, ast.Name) and node.id not in (param, "torch"):
            raise InvalidInputError(f"{where}={text!r}: the name {node.id!r} is outside the lambda subset")
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp, ast.NamedExpr)):
            raise InvalidInputError(f"{where}={text!r}: {type(node).__name__} is outside the lambda subset")
        if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "torch" and node.attr == "where"):
            raise InvalidInputError(f"{where}={text!r}: the attribute {ast.unparse(node)!r} is outside the lambda subset")
        if isinstance(node, ast.Call) and ast.unparse(node.func) != "torch.where":
            raise InvalidInputError(f"{where}={text!r}: the call {ast.unparse(node.func)}(...) is outside the lambda subset")
    return _TensorFunction(text, param, lam.body)


def _label_rule(fn: _TensorFunction) -> list[tuple[int, int]] | None:
    """``[(label value, output channel), ...]`` when ``fn`` is a nested ``torch.where`` label rule.

    The form of the BraTS bundles: ``torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, ... 0))``.
    """
    rule: list[tuple[int, int]] = []
    node = fn.body
    while isinstance(node, ast.Call):
        cond, value, rest = node.args
        channel = None
        for sub in ast.walk(cond):
            if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == fn.param:
                index = sub.slice
                if isinstance(index, ast.List) and len(index.elts) == 1:
                    index = index.elts[0]
                if isinstance(index, ast.Constant) and isinstance(index.value, int):
                    channel = index.value
        if channel is None or not (isinstance(value, ast.Constant) and isinstance(value.value, int)):
            return None
        rule.append((int(value.value), channel))
        node = rest
    if not (isinstance(node, ast.Constant) and node.value == 0) or not rule:
        return None
    return rule


# ------------------------------------------------------------------------------------ safe config
def _read_config_file(path: Path, data: bytes | None = None) -> dict[str, Any]:
    from napari_medseg.registry.card_io import _safe_yaml

    text = (path.read_bytes() if data is None else data).decode("utf-8")
    if path.suffix == ".json":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{path}: not valid JSON: {exc}") from None
    else:
        parsed = _safe_yaml(text, source=str(path))
    if not isinstance(parsed, dict):
        raise FileFormatError(f"{path}: expected a mapping at the top level")
    return parsed


def _find_config(configs: Path, stem: str) -> Path | None:
    for suffix in (".json", ".yaml", ".yml"):
        if (configs / f"{stem}{suffix}").is_file():
            return configs / f"{stem}{suffix}"
    return None


class SafeConfig:
    """A bundle config read as data: ``@`` references and the :func:`evaluate_expression` subset.

    Parameters
    ----------
    config : dict
        The parsed config (not modified).
    path : Path
        The config file, for messages.
    bundle_root : str
        The value of ``@bundle_root`` (the bundle's folder, as MONAI's runner sets it).
    """

    _SPECIAL = ("_target_", "_desc_", "_requires_", "_disabled_", "_mode_")

    def __init__(self, config: Mapping[str, Any], *, path: Path, bundle_root: str) -> None:
        self.config = config
        self.path = path
        self.bundle_root = bundle_root
        self._stack: list[str] = []

    def raw(self, ref: str, *, where: str = "") -> Any:
        """The unresolved node an id names (``a::b`` or ``a#b``)."""
        node: Any = self.config
        for part in re.split(r"::|#", ref):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise InvalidInputError(f"{self.path}: {where or ref}: reference '@{ref}' does not name a value in the config")
        return node

    def value(self, ref: str, *, where: str = "") -> Any:
        """The resolved value of an id (``bundle_root`` is the bundle's folder)."""
        if ref == "bundle_root":
            return self.bundle_root
        if ref in self._stack or len(self._stack) > 20:
            raise InvalidInputError(f"{self.path}: {where or ref}: references loop through '@{ref}'")
        raw = self.raw(ref, where=where)
        if isinstance(raw, Mapping) and "_target_" in raw:
            raise InvalidInputError(
                f"{self.path}: {where or ref}: '@{ref}' is a component ({raw['_target_']}), not a value"
            )
        self._stack.append(ref)
        try:
            return self.resolve(raw, where=ref)
        finally:
            self._stack.pop()

    def resolve(self, value: Any, *, where: str) -> Any:
        """Resolve references and expressions in ``value`` (lists and mappings recursively)."""
        if isinstance(value, str):
            if value.startswith("@"):
                return self.value(value[1:], where=where)
            if value.startswith("%"):
                raise InvalidInputError(f"{self.path}: {where}={value!r}: '%' macros (other files) are refused")
            if value.startswith("$"):
                return evaluate_expression(value, lambda ref: self.value(ref, where=where), where=f"{self.path}: {where}")
            return value
        if isinstance(value, list):
            return [self.resolve(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if "_target_" in value:
                raise InvalidInputError(f"{self.path}: {where}: a nested component ({value['_target_']}) is not supported here")
            return {k: self.resolve(v, where=f"{where}.{k}") for k, v in value.items()}
        return value

    def component(self, ref_or_node: Any, *, where: str) -> Mapping[str, Any] | None:
        """The component dict (with ``_target_``) a node or an ``@`` reference names, or None."""
        node = ref_or_node
        for _ in range(20):
            if isinstance(node, str) and node.startswith("@"):
                node = self.raw(node[1:], where=where)
            else:
                break
        return node if isinstance(node, Mapping) and "_target_" in node else None

    def arguments(self, node: Mapping[str, Any], *, where: str, callables: Iterable[str] = (),
                  skip: Iterable[str] = ()) -> dict[str, Any]:
        """A component's arguments, resolved; ``callables`` may hold a ``$lambda`` (see :func:`tensor_function`);
        ``skip`` names arguments left out unevaluated."""
        if node.get("_mode_", "default") != "default":
            raise InvalidInputError(f"{self.path}: {where}: _mode_={node['_mode_']!r} is refused (only 'default')")
        out = {}
        for key, value in node.items():
            if key in self._SPECIAL or key in skip:
                continue
            if key in callables and isinstance(value, str) and re.match(r"\$\s*lambda\b", value):
                out[key] = tensor_function(value, where=f"{self.path}: {where}.{key}")
            else:
                out[key] = self.resolve(value, where=f"{where}.{key}")
        return out

    def disabled(self, node: Mapping[str, Any], *, where: str) -> bool:
        flag = node.get("_disabled_", False)
        return bool(self.resolve(flag, where=f"{where}._disabled_"))


def _class_name(target: Any, prefixes: tuple[str, ...]) -> str | None:
    if not isinstance(target, str):
        return None
    for prefix in prefixes:
        if target.startswith(prefix) and "." not in target[len(prefix):]:
            return target[len(prefix):]
    return None


# ------------------------------------------------------------------------------------ the pipeline
#: Preprocessing transforms run with MONAI's own classes (``LoadImaged`` reads the in-memory input).
PREPROCESSING_TRANSFORMS = frozenset({
    "LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged",
    "ScaleIntensityRangePercentilesd", "NormalizeIntensityd", "ScaleIntensityd", "CropForegroundd", "Resized",
    "EnsureTyped", "CastToTyped", "ToTensord", "SpatialPadd", "DivisiblePadd", "CenterSpatialCropd",
    "ThresholdIntensityd", "ClipIntensityPercentilesd", "Identityd", "Lambdad",
})
#: Postprocessing transforms run with MONAI's own classes (``SaveImaged`` is the writer's job: skipped).
POSTPROCESSING_TRANSFORMS = frozenset({
    "Activationsd", "Invertd", "AsDiscreted", "KeepLargestConnectedComponentd", "FillHolesd",
    "RemoveSmallObjectsd", "LabelFilterd", "EnsureTyped", "CastToTyped", "ToTensord", "Lambdad", "SaveImaged",
    "Identityd",
})
#: Inferers run with MONAI's own classes.
INFERERS = frozenset({"SlidingWindowInferer", "SliceInferer", "SimpleInferer"})
_TRANSFORM_PREFIXES = ("", "monai.transforms.")
_INFERER_PREFIXES = ("", "monai.inferers.")
_NETS_PREFIXES = ("", "monai.networks.nets.")
_CALLABLE_ARGS = ("func", "select_fn", "inv_func")
_READERS = (None, "NibabelReader", "ITKReader", "monai.data.NibabelReader", "monai.data.ITKReader")
_INFERER_ARGS = {
    "SlidingWindowInferer": {"roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval",
                             "progress", "cache_roi_weight_map", "cpu_thresh", "buffer_steps", "buffer_dim",
                             "sw_device", "device"},
    "SimpleInferer": set(),
}
_INFERER_ARGS["SliceInferer"] = _INFERER_ARGS["SlidingWindowInferer"] | {"spatial_dim"}
_IMAGE_KEY, _PRED_KEY = "image", "pred"  # what MONAI's SupervisedEvaluator uses


@dataclass
class BundlePipeline:
    """A bundle's inference chain, built from a :class:`SafeConfig` with MONAI's own classes.

    Attributes
    ----------
    load_args : dict
        ``LoadImaged`` arguments (the reader is replaced by the in-memory one).
    preprocessing : monai.transforms.Compose
        The rest of the preprocessing chain (``Invertd`` inverts it).
    inferer_name : str
    inferer_args : dict
    postprocessing : list
        MONAI transforms, in order (``SaveImaged`` left out).
    activation : {"softmax", "sigmoid", "none"}
    discrete : str or None
        ``"argmax"``, ``"threshold"`` or None (no ``AsDiscreted``).
    label_rule : list of (value, channel) or None
        From a ``Lambdad`` label rule (BraTS: ``[(4, 2), (1, 0), (2, 1)]``).
    """

    load_args: dict
    preprocessing: Any
    inferer_name: str
    inferer_args: dict
    postprocessing: list
    activation: str
    discrete: str | None
    label_rule: list[tuple[int, int]] | None
    inverted: bool

    def inferer(self, *, overlap: float | None = None, sw_batch_size: int | None = None) -> Any:
        """A fresh MONAI inferer (``overlap``/``sw_batch_size`` override the bundle's)."""
        import monai.inferers as inferers

        args = {k: v for k, v in self.inferer_args.items() if k not in ("progress", "sw_device", "device")}
        if self.inferer_name in ("SlidingWindowInferer", "SliceInferer"):
            if overlap is not None:
                args["overlap"] = overlap
            if sw_batch_size is not None:
                args["sw_batch_size"] = sw_batch_size
        return getattr(inferers, self.inferer_name)(**args)


def _keys(args: Mapping[str, Any]) -> list[str]:
    keys = args.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys)


def _build_transform(cfg: SafeConfig, node: Mapping[str, Any], name: str, *, where: str, extra: Mapping[str, Any] | None = None) -> Any:
    import monai.transforms as mt

    # device placement does not change the result, and bundles write it as code
    # ("$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"): the data stay where predict puts them
    args = cfg.arguments(node, where=where, callables=_CALLABLE_ARGS, skip=("device",))
    args.update(extra or {})
    cls = getattr(mt, name)
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{cfg.path}: {where} ({name}): MONAI refuses its arguments: {exc}") from None


def _transform_list(cfg: SafeConfig, text: str, *, where: str) -> list:
    """``"@a"``, ``"$@a"`` or ``"$@a + @b + @c"``: the referenced lists of transforms, concatenated."""
    if text.startswith("@"):
        refs = [text[1:]]
    else:
        tree, names = _parse_expression(text, where=f"{cfg.path}: {where}")
        leaves: list[str] = []

        def walk(node: ast.AST) -> bool:
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                return walk(node.left) and walk(node.right)
            if isinstance(node, ast.Name) and node.id in names:
                leaves.append(names[node.id])
                return True
            return False

        if not walk(tree.body):
            raise InvalidInputError(f"{cfg.path}: {where}={text!r}: expected references to lists of transforms joined by '+'")
        refs = leaves
    out: list = []
    for ref in refs:
        part = cfg.raw(ref, where=where)
        if not isinstance(part, list):
            raise InvalidInputError(f"{cfg.path}: {where}: '@{ref}' is not a list of transforms")
        out.extend(part)
    return out


def _chain(cfg: SafeConfig, section: str) -> list[tuple[str, Mapping[str, Any], str]]:
    node = cfg.config.get(section)
    component = cfg.component(node, where=section)
    if component is None:
        raise InvalidInputError(f"{cfg.path}: no {section} (a Compose of transforms) in the config")
    name = _class_name(component["_target_"], _TRANSFORM_PREFIXES)
    if name != "Compose":
        raise InvalidInputError(f"{cfg.path}: {section}._target_={component['_target_']!r}: expected Compose")
    items = component.get("transforms") or []
    if isinstance(items, str) and items.startswith(("@", "$")):
        items = _transform_list(cfg, items, where=f"{section}.transforms")
    if not isinstance(items, list):
        raise InvalidInputError(f"{cfg.path}: {section}.transforms={items!r}: expected a list of transforms")
    out = []
    for i, item in enumerate(items):
        where = f"{section}.transforms[{i}]"
        t = cfg.component(item, where=where)
        if t is None:
            raise InvalidInputError(f"{cfg.path}: {where}={item!r} is not a transform")
        if cfg.disabled(t, where=where):
            continue
        out.append((_class_name(t["_target_"], _TRANSFORM_PREFIXES) or str(t["_target_"]), t, where))
    return out


def build_pipeline(cfg: SafeConfig) -> BundlePipeline:
    """Build a bundle's inference chain from its config, refusing what cannot be reproduced.

    Raises
    ------
    InvalidInputError
        Naming the first transform, inferer, argument or expression that is not in the allow-lists
        (:data:`PREPROCESSING_TRANSFORMS`, :data:`POSTPROCESSING_TRANSFORMS`, :data:`INFERERS`) or
        the expression subset, or a chain that cannot give one label map on the input's grid.
    """
    import monai.transforms as mt

    pre = _chain(cfg, "preprocessing")
    if not pre or pre[0][0] != "LoadImaged":
        raise InvalidInputError(f"{cfg.path}: preprocessing must start with LoadImaged (the input image)")
    load_args = cfg.arguments(pre[0][1], where=pre[0][2])
    if _keys(load_args) != [_IMAGE_KEY]:
        raise InvalidInputError(f"{cfg.path}: {pre[0][2]}: LoadImaged keys={load_args.get('keys')!r}: expected 'image'")
    if load_args.pop("reader", None) not in _READERS:
        raise InvalidInputError(f"{cfg.path}: {pre[0][2]}: only NIfTI-style readers (NibabelReader, ITKReader) are reproduced")
    transforms = []
    for name, node, where in pre[1:]:
        if name not in PREPROCESSING_TRANSFORMS:
            raise InvalidInputError(
                f"{cfg.path}: {where}: {node['_target_']} is not reproduced, so the bundle is refused "
                f"(preprocessing napari-medseg runs: {', '.join(sorted(PREPROCESSING_TRANSFORMS))})"
            )
        transform = _build_transform(cfg, node, name, where=where)
        keys = _keys({"keys": cfg.resolve(node.get("keys"), where=f"{where}.keys")})
        if keys != [_IMAGE_KEY]:
            raise InvalidInputError(f"{cfg.path}: {where}: {name} keys={keys!r}: only 'image' exists at inference")
        transforms.append(transform)
    preprocessing = mt.Compose(transforms)

    node = cfg.config.get("inferer")
    inf = cfg.component(node, where="inferer")
    if inf is None:
        raise InvalidInputError(f"{cfg.path}: no inferer in the config")
    inferer_name = _class_name(inf["_target_"], _INFERER_PREFIXES)
    if inferer_name not in INFERERS:
        raise InvalidInputError(f"{cfg.path}: inferer._target_={inf['_target_']!r} is not reproduced (only {', '.join(sorted(INFERERS))})")
    inferer_args = cfg.arguments(inf, where="inferer", skip=("progress", "sw_device", "device"))
    unknown = sorted(set(inferer_args) - _INFERER_ARGS[inferer_name])
    if unknown:
        raise InvalidInputError(f"{cfg.path}: inferer: {inferer_name} arguments {unknown} are not reproduced")

    post, activation, discrete, rule, inverted = [], "none", None, None, False
    for name, node, where in _chain(cfg, "postprocessing"):
        if name not in POSTPROCESSING_TRANSFORMS:
            raise InvalidInputError(
                f"{cfg.path}: {where}: {node['_target_']} is not reproduced, so the bundle is refused "
                f"(postprocessing napari-medseg runs: {', '.join(sorted(POSTPROCESSING_TRANSFORMS))})"
            )
        if name == "SaveImaged":
            continue  # writing the output is the caller's job
        if name == "Invertd":
            target = cfg.component(node.get("transform"), where=f"{where}.transform")
            if target is None or node.get("transform") != "@preprocessing":
                raise InvalidInputError(f"{cfg.path}: {where}: Invertd must invert '@preprocessing'")
            args = {k: v for k, v in node.items() if k != "transform"}
            orig = cfg.resolve(node.get("orig_keys"), where=f"{where}.orig_keys")
            if orig not in (_IMAGE_KEY, [_IMAGE_KEY]):
                raise InvalidInputError(f"{cfg.path}: {where}: Invertd orig_keys={orig!r}: expected 'image'")
            transform = _build_transform(cfg, args, name, where=where, extra={"transform": preprocessing})
            inverted = True
        else:
            transform = _build_transform(cfg, node, name, where=where)
        args = cfg.arguments(node, where=where, callables=_CALLABLE_ARGS, skip=("device",)) if name != "Invertd" else {"keys": node.get("keys")}
        keys = _keys({"keys": cfg.resolve(args.get("keys"), where=f"{where}.keys")} if name == "Invertd" else args)
        if keys != [_PRED_KEY]:
            raise InvalidInputError(f"{cfg.path}: {where}: {name} keys={keys!r}: only 'pred' is the prediction")
        if name == "Activationsd":
            if args.get("other") is not None:
                raise InvalidInputError(f"{cfg.path}: {where}: Activationsd other= is not reproduced")
            activation = "softmax" if args.get("softmax") else "sigmoid" if args.get("sigmoid") else activation
        elif name == "AsDiscreted":
            if args.get("to_onehot") or args.get("rounding"):
                raise InvalidInputError(f"{cfg.path}: {where}: AsDiscreted to_onehot/rounding do not give one label map")
            if args.get("argmax"):
                discrete = "argmax"
            elif args.get("threshold") is not None:
                discrete = "threshold"
        elif name == "Lambdad":
            fn = args.get("func")
            rule = _label_rule(fn) if isinstance(fn, _TensorFunction) else None
            if rule is None:
                raise InvalidInputError(
                    f"{cfg.path}: {where}: Lambdad func={node.get('func')!r} is not a label rule napari-medseg "
                    "reproduces (nested torch.where(x[[c]] > t, value, ...) ending in 0)"
                )
        post.append(transform)
    if discrete is None and rule is None:
        raise InvalidInputError(
            f"{cfg.path}: postprocessing has no AsDiscreted (argmax or threshold): the bundle's output is not a label map"
        )
    return BundlePipeline(load_args, preprocessing, inferer_name, inferer_args, post, activation, discrete, rule, inverted)


# ------------------------------------------------------------------------------------ import
def bundle_name(bundle_dir: str | Path, *, name: str | None = None) -> str:
    """The registry name of a bundle: ``name``, else the bundle folder's name, made registry-safe."""
    raw = str(name or Path(bundle_dir).resolve().name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._-")[:100] or "monai_bundle"


def _guess_license(bundle: Path) -> str | None:
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "docs/LICENSE"):
        path = bundle / name
        if path.is_file():
            head = path.read_text(encoding="utf-8", errors="replace")[:2000]
            known = (("Apache License", "Apache-2.0"), ("MIT License", "MIT"), ("BSD 3-Clause", "BSD-3-Clause"))
            for needle, spdx in known:
                if needle in head:
                    return spdx
            if "Creative Commons" in head and "NonCommercial" in head:
                return "CC-BY-NC-4.0"
    return None


def _checkpoint_loaders(cfg: SafeConfig) -> list[Mapping[str, Any]]:
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if _class_name(node.get("_target_"), ("", "monai.handlers.")) == "CheckpointLoader":
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg.config)
    return found


def _find_weights(bundle: Path, cfg: SafeConfig) -> tuple[Path, str | None]:
    """The weights file (where the CheckpointLoader points, else models/model.*) and its load_dict key."""
    for node in _checkpoint_loaders(cfg):
        where = "CheckpointLoader"
        path = Path(str(cfg.resolve(node.get("load_path"), where=f"{where}.load_path")))
        path = path if path.is_absolute() else bundle / path
        if not path.resolve().is_relative_to(bundle.resolve()):
            raise InvalidInputError(f"{cfg.path}: {where}.load_path={str(path)!r} leaves the bundle folder; refused")
        if path.suffix == ".ts":
            raise InvalidInputError(f"{cfg.path}: {where}.load_path={path.name}: TorchScript files are programs and are not loaded")
        load_dict = node.get("load_dict") or {}
        key = next(iter(load_dict), None) if isinstance(load_dict, Mapping) and len(load_dict) == 1 else None
        if path.is_file():
            return path, key
    for candidate in ("model.safetensors", "model.pt", "model.pth"):
        if (bundle / "models" / candidate).is_file():
            return bundle / "models" / candidate, "model"
    raise FileFormatError(
        f"{bundle}: no weights: the config's CheckpointLoader load_path and models/model.safetensors, "
        "models/model.pt, models/model.pth are all missing (TorchScript .ts files are programs and are not loaded)"
    )


def _load_weights(path: Path, key: str | None) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    from napari_medseg.registry.weights import _decode_weights, _state_dict_from

    if path.suffix.lower() == ".safetensors":
        return _decode_weights(path.read_bytes(), path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(
            f"{path}: refused: the file holds Python objects other than tensors, and unpickling them could run "
            f"arbitrary code (torch.load weights_only=True: {first})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise FileFormatError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from None
    if key is not None and isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
        obj = obj[key]  # as MONAI's CheckpointLoader: checkpoint[key], else the whole file
    return _state_dict_from(obj, path=path)


def _forward_check(network: torch.nn.Module, *, in_channels: int, out_channels: int, spatial_dims: int,
                   roi: tuple[int, ...], where: str) -> None:
    """Run the network once on a small input; refuse what cannot run or is not a segmentation network."""
    import torch

    sizes = [(32,) * spatial_dims]
    if tuple(roi) not in sizes and math.prod(roi) <= 160 ** 3:
        sizes.append(tuple(roi))
    error = None
    for size in sizes:
        x = torch.rand(1, in_channels, *size, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                y = network(x)
        except Exception as exc:  # noqa: BLE001 - any failure of a foreign network means "cannot run"
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (1, out_channels, *size):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise InvalidInputError(
                f"{where}: the network's output for a {tuple(x.shape)} input is {shape}, not a segmentation map "
                f"(1, {out_channels}, {', '.join(map(str, size))}); only segmentation bundles are imported"
            )
        return
    raise InvalidInputError(f"{where}: the network cannot run on a small input ({error}); refused")


@dataclass(frozen=True)
class _BundleNetwork:
    """What a bundle's ``network_def`` says: the MONAI class and the arguments the card records."""

    class_name: str
    params: dict[str, Any]
    spatial_dims: int
    in_channels: int
    out_channels: int
    dropout_rate: float


def _read_bundle(bundle: Path) -> tuple[Path, dict[str, Any], Path, dict[str, Any], SafeConfig]:
    """The bundle's metadata and inference configs (paths and contents) and the safe config view."""
    configs = bundle / "configs"
    if not configs.is_dir():
        raise FileFormatError(f"{bundle} is not a MONAI bundle: no configs/ folder")
    metadata_path = _find_config(configs, "metadata")
    if metadata_path is None:
        raise FileFormatError(f"{bundle}: configs/metadata.json is missing")
    inference_path = _find_config(configs, "inference")
    if inference_path is None:
        raise FileFormatError(f"{bundle}: configs/inference.json is missing")
    metadata = _read_config_file(metadata_path)
    inference = _read_config_file(inference_path)
    cfg = SafeConfig(inference, path=inference_path, bundle_root=str(bundle.resolve()))
    return metadata_path, metadata, inference_path, inference, cfg


def _segmentation_task(metadata: Mapping[str, Any], metadata_path: Path) -> tuple[str, Mapping, Mapping]:
    """The task, ``network_data_format`` and its first output; refuses a non-segmentation bundle."""
    task = str(metadata.get("task") or "segmentation")
    data_format = metadata.get("network_data_format") or {}
    outputs = data_format.get("outputs") or {}
    pred = next(iter(outputs.values()), {}) if isinstance(outputs, Mapping) else {}
    if "classif" in task.lower() or (pred.get("type") not in (None, "image")):
        raise InvalidInputError(
            f"{metadata_path}: the bundle's task is {task!r} (output type {pred.get('type')!r}); only segmentation "
            "bundles (an image of labels) can be imported"
        )
    return task, data_format, pred


def _bundle_network(cfg: SafeConfig, inference: Mapping[str, Any], inference_path: Path) -> _BundleNetwork:
    """The ``network_def``: a ``monai.networks.nets`` class, its channel counts and its other arguments."""
    net_def = cfg.component(inference.get("network_def"), where="network_def")
    if net_def is None:
        raise InvalidInputError(f"{inference_path}: network_def with a _target_ is missing")
    class_name = _class_name(net_def["_target_"], _NETS_PREFIXES)
    import monai.networks.nets as nets

    if class_name is None or not isinstance(getattr(nets, class_name, None), type):
        classes = [n for n in dir(nets) if n[:1].isupper()]
        raise InvalidInputError(
            f"{inference_path}: network_def._target_={net_def['_target_']!r} is not a monai.networks.nets class; "
            "the registry can only build those" + close_matches_message(str(class_name or net_def["_target_"]), classes)
        )
    kwargs = cfg.arguments(net_def, where="network_def")
    signature = inspect.signature(getattr(nets, class_name))

    def argument(key: str, *aliases: str) -> Any:
        for k in (key, *aliases):
            if k in kwargs:
                return kwargs.pop(k)
        parameter = signature.parameters.get(key)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            raise InvalidInputError(f"{inference_path}: network_def has no {key}")
        return parameter.default

    spatial_dims = int(argument("spatial_dims", "dimensions"))
    in_channels = int(argument("in_channels"))
    out_channels = int(argument("out_channels"))
    dropout_rate = 0.0
    for key in ("dropout", "dropout_prob", "dropout_rate"):
        if key in kwargs:
            value = kwargs.pop(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                dropout_rate = float(value)
    kwargs = json.loads(json.dumps(kwargs))  # tuples -> lists, so the card is plain data
    return _BundleNetwork(class_name, kwargs, spatial_dims, in_channels, out_channels, dropout_rate)


def _bundle_window(
    pipeline: BundlePipeline, network: _BundleNetwork, data_format: Mapping, inference_path: Path
) -> tuple[list[int], float]:
    """The sliding window's ROI (x, y, z) and overlap; refuses a dimension the inferer does not fit."""
    spatial_dims = network.spatial_dims
    if spatial_dims not in (2, 3) or (spatial_dims == 2) != (pipeline.inferer_name == "SliceInferer"):
        raise InvalidInputError(
            f"{inference_path}: network_def spatial_dims={spatial_dims} with inferer {pipeline.inferer_name}: "
            "3D networks and 2D networks run slice by slice over volumes (SliceInferer) are imported"
        )
    roi = pipeline.inferer_args.get("roi_size")
    if pipeline.inferer_name in ("SlidingWindowInferer", "SliceInferer"):
        roi = [int(roi)] * spatial_dims if isinstance(roi, int) else [int(r) for r in roi]
        if any(r < 1 for r in roi) and not all(r <= 0 for r in roi):
            raise InvalidInputError(f"{inference_path}: inferer.roi_size={roi}: expected positive sides")
    if not roi or any(r < 1 for r in roi):
        shape = (next(iter((data_format.get("inputs") or {}).values()), {}) or {}).get("spatial_shape")
        ok = isinstance(shape, list) and len(shape) == spatial_dims and all(isinstance(s, int) and s > 0 for s in shape)
        roi = [int(s) for s in shape] if ok else [96] * spatial_dims
    overlap = pipeline.inferer_args.get("overlap", 0.25)
    overlap = float(overlap[0] if isinstance(overlap, (list, tuple)) else overlap)
    return roi, overlap


def _bundle_channels(
    data_format: Mapping, pred: Mapping, network: _BundleNetwork, metadata_path: Path
) -> list[dict[str, str]]:
    """The card's input channels; refuses channel counts the metadata and the network disagree on."""
    in_channels = network.in_channels
    inputs = data_format.get("inputs") or {}
    image = next(iter(inputs.values()), {}) if isinstance(inputs, Mapping) else {}
    for what, spec, count in (("inputs", image, in_channels), ("outputs", pred, network.out_channels)):
        declared = spec.get("num_channels")
        if declared is not None and int(declared) != count:
            raise InvalidInputError(
                f"{metadata_path}: network_data_format.{what} num_channels={declared} but network_def says {count}"
            )
    modality = str(image.get("modality") or "unknown")
    channel_def = image.get("channel_def") or {}
    return [
        {"name": str(channel_def.get(str(i), channel_def.get(i, "image" if in_channels == 1 else f"channel{i}"))), "modality": modality}
        for i in range(in_channels)
    ]


def _bundle_labels(
    pipeline: BundlePipeline, pred: Mapping, out_channels: int, inference_path: Path
) -> tuple[dict[int, str], list[str], str]:
    """The label values and names the postprocessing produces, the output channel names, the activation."""
    out_def = pred.get("channel_def") or {}
    out_names = [str(out_def.get(str(i), out_def.get(i, f"channel{i}"))) for i in range(out_channels)]
    activation = pipeline.activation
    if activation == "none":
        activation = "softmax" if pipeline.discrete == "argmax" else "sigmoid"
    if pipeline.label_rule is not None:
        bad = [c for _, c in pipeline.label_rule if c >= out_channels]
        if bad:
            raise InvalidInputError(f"{inference_path}: the postprocessing label rule uses channel {bad[0]} of {out_channels}")
        labels = {0: "background", **{v: out_names[c] for v, c in pipeline.label_rule}}
    elif pipeline.discrete == "argmax":
        if out_channels < 2:
            raise InvalidInputError(f"{inference_path}: AsDiscreted argmax over {out_channels} channel gives only 0")
        labels = {i: (out_names[i] if str(i) in out_def or i in out_def else ("background" if i == 0 else f"label{i}"))
                  for i in range(out_channels)}
    elif out_channels == 1:
        labels = {0: "background", 1: out_names[0] if out_def else "foreground"}
    else:
        raise InvalidInputError(
            f"{inference_path}: {out_channels} sigmoid output channels thresholded without a rule that combines them "
            "into one label map (a Lambdad label rule); overlapping masks are not imported"
        )
    if len(set(labels.values())) != len(labels):  # names must be unique
        labels = {v: f"{n}_{v}" for v, n in labels.items()}
    return labels, out_names, activation


def _bundle_grid(cfg: SafeConfig) -> tuple[list[float] | None, str | None, dict[str, Any]]:
    """The card's spacing, orientation and normalisation, read from the preprocessing chain (informative:
    predict runs the bundle's own chain)."""
    spacing = orientation = None
    normalization: dict[str, Any] = {"kind": "none"}
    for name_, node, where in _chain(cfg, "preprocessing"):
        args = cfg.arguments(node, where=where, callables=_CALLABLE_ARGS, skip=("device",))
        if name_ == "Spacingd" and "pixdim" in args:
            pixdim = args["pixdim"]
            pixdim = [pixdim] * 3 if isinstance(pixdim, (int, float)) else list(pixdim)
            if len(pixdim) == 3 and all(isinstance(p, (int, float)) and p > 0 for p in pixdim):
                spacing = [float(p) for p in pixdim]
        elif name_ == "Orientationd" and isinstance(args.get("axcodes"), str):
            orientation = args["axcodes"]
        elif name_ == "NormalizeIntensityd":
            normalization = {"kind": "zscore", "nonzero_only": bool(args.get("nonzero", False))}
        elif name_ == "ScaleIntensityRanged" and (args.get("b_min"), args.get("b_max")) in ((0, 1), (0.0, 1.0)):
            normalization = {"kind": "ct_window", "window_center": (float(args["a_min"]) + float(args["a_max"])) / 2,
                             "window_width": float(args["a_max"]) - float(args["a_min"]), "clip": bool(args.get("clip", False))}
    return spacing, orientation, normalization


def _bundle_metadata_fields(bundle: Path, metadata: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The card fields copied from ``metadata.json`` (MONAI's names and meaning)."""
    metrics = {
        str(k): float(v) for k, v in (metadata.get("eval_metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    return {
        "version": str(metadata.get("version") or "0.0.0"),
        "description": str(metadata.get("description") or ""),
        "task": task,
        "license": str(metadata.get("license") or _guess_license(bundle) or "unknown"),
        "authors": metadata.get("authors") or [],
        "references": [str(r) for r in metadata.get("references") or []],
        "intended_use": metadata.get("intended_use"),
        "recipe": f"MONAI bundle {metadata.get('name') or bundle.name} {metadata.get('version', '')}".strip(),
        "metrics": metrics,
        "monai_bundle": json.loads(json.dumps(metadata)),
    }


def import_monai_bundle(
    bundle_dir: str | Path,
    folder: str | Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> RegistryModel:
    """Convert a MONAI bundle folder into a registry model folder, or refuse it saying why.

    See the module docstring and ``docs/model-card.md`` for the mapping. The bundle's
    ``configs/inference.json`` (or ``.yaml``) is stored in the model folder (``bundle/``) and its
    inference chain is rebuilt from it at every prediction; at import the chain is built once
    (refusing any transform, inferer or expression outside the allow-lists), the weights are
    found where the config's ``CheckpointLoader`` points (else ``models/model.(safetensors|pt|pth)``),
    loaded strictly, and the network runs once on a small input.

    Parameters
    ----------
    bundle_dir : path
        The bundle folder (``configs/``, ``models/``).
    folder : path
        The model folder to write (atomically).
    name : str, optional
        The registry name (default: the bundle folder's name, made registry-safe). The metadata's
        display name also finds the model when it is unambiguous (:meth:`Registry.get`).
    overwrite : bool, default False
        Replace ``folder`` if it exists and is not empty.
    check : bool, default True
        Load the weights strictly and run the network once before writing.

    Raises
    ------
    FileFormatError
        A missing or unreadable bundle file, or weights that hold pickled objects (refused).
    InvalidInputError
        A classification (non-segmentation) bundle, a network outside ``monai.networks.nets``, a
        transform, inferer or expression that is not reproduced, channel counts that disagree, or
        a network that cannot run.
    """
    from napari_medseg.registry.card import default_label_color
    from napari_medseg.registry.card_io import _validate_card
    from napari_medseg.registry.save import _write_model
    from napari_medseg.registry.weights import _encode_weights

    bundle = Path(bundle_dir)
    metadata_path, metadata, inference_path, inference, cfg = _read_bundle(bundle)
    task, data_format, pred = _segmentation_task(metadata, metadata_path)
    network = _bundle_network(cfg, inference, inference_path)
    pipeline = build_pipeline(cfg)
    roi, overlap = _bundle_window(pipeline, network, data_format, inference_path)
    channels = _bundle_channels(data_format, pred, network, metadata_path)
    labels, out_names, activation = _bundle_labels(pipeline, pred, network.out_channels, inference_path)

    state = _load_weights(*_find_weights(bundle, cfg))
    weights = _encode_weights(state, metadata={"napari_medseg.source": f"MONAI bundle {bundle.name}"})
    extra = {f"bundle/{p.name}": p.read_bytes() for p in (metadata_path, inference_path)}
    spacing, orientation, normalization = _bundle_grid(cfg)
    card_data: dict[str, Any] = {
        "name": bundle_name(bundle, name=name),
        **_bundle_metadata_fields(bundle, metadata, task),
        "architecture": {"name": f"monai.{network.class_name}", "params": network.params},
        "spatial_dims": network.spatial_dims,
        "axis_order": "xyz",
        "channels": channels,
        "labels": {v: {"name": n, "color": default_label_color(v)} for v, n in labels.items()},
        "outputs": {"activation": activation, "channels": out_names},
        "spacing": spacing,
        "orientation": orientation,
        "normalization": normalization,
        "patch_size": tuple(reversed(roi)),
        "overlap": overlap if 0 <= overlap < 1 else 0.25,
        "dropout": {"placement": [], "rate": network.dropout_rate},
        "weights": {"file": "model.safetensors", "sha256": hashlib.sha256(weights).hexdigest()},
        "files": [{"file": k, "sha256": hashlib.sha256(v).hexdigest()} for k, v in extra.items()],
        "bundle": {"config": f"bundle/{inference_path.name}"},
    }
    card = _validate_card(card_data, source=f"card made from {metadata_path}")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise InvalidInputError(f"{folder} exists and is not an empty folder; pass overwrite=True to replace it")
    if check:
        with tempfile.TemporaryDirectory(prefix=".medseg-bundle-") as tmp:
            staged = _write_model(Path(tmp) / card.name, card, weights, extra)
            _forward_check(staged.load_network(), in_channels=network.in_channels, out_channels=network.out_channels,
                           spatial_dims=network.spatial_dims, roi=tuple(roi), where=str(bundle))
    return _write_model(folder, card, weights, extra)


# ------------------------------------------------------------------------------------ predict
def load_pipeline(model: RegistryModel) -> BundlePipeline:
    """The stored config of an imported bundle (sha256 checked) built into its pipeline."""
    from napari_medseg.registry.weights import _read_checked

    card = model.card
    if card.bundle is None:
        raise InvalidInputError(f"model {card.name!r} is not an imported MONAI bundle (its card has no bundle.config)")
    path = model.file_paths()[card.bundle.config]
    spec = next(f for f in card.files if f.file == card.bundle.config)
    data = _read_checked(path, spec.sha256, card_path=model.card_path)
    cfg = SafeConfig(_read_config_file(path, data), path=path, bundle_root=str(path.parent))
    return build_pipeline(cfg)


def _in_memory_reader(volume: Volume, n_channels: int) -> Any:
    """A MONAI NibabelReader that returns ``volume`` as the NIfTI images LoadImaged would read.

    One image per channel, so several channels are stacked channel-first as MONAI stacks a list of
    files; the array is (x, y, z) with the RAS affine (LPS flipped), as nibabel reads a NIfTI.
    """
    import nibabel as nib
    from monai.data import NibabelReader

    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.geometry.index_to_physical()
    array = np.asarray(volume.array)
    parts = [array] if array.ndim == 3 else [array[..., c] for c in range(array.shape[-1])]
    images = [nib.Nifti1Image(np.ascontiguousarray(p.transpose(2, 1, 0)).astype(np.float32, copy=False), affine) for p in parts]

    class _Reader(NibabelReader):
        def verify_suffix(self, filename: Any) -> bool:
            return True

        def read(self, data: Any, **kwargs: Any) -> Any:
            from monai.data.utils import correct_nifti_header_if_necessary

            self.filenames = tuple(data) if isinstance(data, (list, tuple)) else (data,)
            found = [correct_nifti_header_if_necessary(image) for image in images]
            return found if n_channels > 1 else found[0]

    return _Reader()


def _window_batches(shape: tuple[int, ...], inferer: Any) -> int:
    """How many predictor calls MONAI's sliding window makes (for progress)."""
    roi = inferer.roi_size
    if hasattr(inferer, "spatial_dim"):  # SliceInferer: a 2D window, one slice thick along spatial_dim
        roi = [int(roi)] * 2 if isinstance(roi, int) else list(roi)
        roi.insert(int(inferer.spatial_dim), 1)
    roi = [int(roi)] * len(shape) if isinstance(roi, int) else [int(r) if r > 0 else s for r, s in zip(roi, shape)]
    overlap = inferer.overlap
    overlap = [float(overlap)] * len(shape) if isinstance(overlap, (int, float)) else list(overlap)
    count = 1
    for s, r, o in zip(shape, roi, overlap):
        s = max(s, r)
        step = r if r == s else max(int(r * (1 - o)), 1)
        count *= math.ceil((s - r) / step) + 1
    return math.ceil(count / int(inferer.sw_batch_size))


def predict_bundle(
    volume: Volume,
    model: RegistryModel,
    *,
    device: Any = "cpu",
    overlap: float | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> Prediction:
    """Run an imported bundle on ``volume`` exactly as MONAI's bundle workflow runs it.

    The bundle's own ``LoadImaged`` (reading ``volume`` from memory), preprocessing, inferer
    (``overlap`` / ``batch_size`` override the bundle's ``overlap`` / ``sw_batch_size``) and
    postprocessing (``Invertd`` included) run with MONAI's classes; the network is the
    registry's (sha256-checked), run as MONAI runs it. Progress is reported per predictor call,
    and ``cancel`` is checked before each.

    Returns
    -------
    Prediction
        ``labels``: the postprocessed label map on the input's grid; ``probabilities``: for
        softmax bundles the inverted softmax (channel ``i`` = label ``i``), otherwise the one-hot
        labels; ``uncertainty["entropy"]``: the softmax entropy, or for sigmoid bundles the sum of
        the output channels' binary entropies (nats), or zeros when the chain discretises before
        inverting.

    Raises
    ------
    InvalidInputError
        If the output does not come back onto the input's grid (a chain without ``Invertd``) or
        holds values that are not the card's labels.
    CancelledError
        If ``cancel`` is set.
    """
    import torch
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import LoadImaged, apply_transform

    from napari_medseg import __version__
    from napari_medseg.inference.result import Prediction, provenance_metadata
    from napari_medseg.progress import check_cancelled, report
    from napari_medseg.volume import Volume as _Volume

    card = model.card
    pipeline = load_pipeline(model)
    torch_device = torch.device(device) if not isinstance(device, torch.device) else device
    # the network as MONAI runs it (eval mode, contiguous): the optimised channels-last copy changes
    # float rounding and was slower for SegResNet's group norm (measured on wholeBody_ct_segmentation)
    network = model.load_network(torch_device)

    loader = LoadImaged(**pipeline.load_args, reader=_in_memory_reader(volume, card.in_channels))
    names = [f"{card.name}-input.nii"] if card.in_channels == 1 else [f"{card.name}-input-{i}.nii" for i in range(card.in_channels)]
    data = loader({_IMAGE_KEY: names[0] if card.in_channels == 1 else names})
    data = apply_transform(pipeline.preprocessing, data)
    batch = list_data_collate([data])
    inputs = batch[_IMAGE_KEY].to(torch_device)
    inferer = pipeline.inferer(overlap=overlap, sw_batch_size=batch_size)
    total = _window_batches(tuple(inputs.shape[2:]), inferer) if pipeline.inferer_name != "SimpleInferer" else 1
    calls = [0]

    def predictor(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        check_cancelled(cancel, "inference")
        out = network(x.as_tensor() if hasattr(x, "as_tensor") else x)
        calls[0] += 1
        report(progress, min(calls[0], total), total)
        return out

    with torch.no_grad():
        pred = inferer(inputs, predictor)
    check_cancelled(cancel, "inference")
    output = decollate_batch({_IMAGE_KEY: inputs, _PRED_KEY: pred})[0]
    item = dict(decollate_batch(batch)[0])
    item.update(output)
    probs = None
    for transform in pipeline.postprocessing:
        if probs is None and type(transform).__name__ in ("AsDiscreted", "Lambdad"):
            probs = item[_PRED_KEY]
        item = apply_transform(transform, item)

    result = item[_PRED_KEY]
    spatial = tuple(volume.shape)[::-1]
    expected_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.geometry.index_to_physical()
    arr = result.detach().cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    affine = getattr(result, "affine", None)
    affine = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, float) if affine is not None else None
    if arr.shape != spatial or affine is None or not np.allclose(affine, expected_affine, atol=1e-3):
        raise InvalidInputError(
            f"model {card.name!r}: the bundle's postprocessing leaves the prediction on a {arr.shape} grid, not the "
            f"input's {spatial} grid (the chain needs Invertd after spatial preprocessing); nothing was written"
        )
    values = np.rint(arr).astype(np.int64)
    unknown = sorted(set(np.unique(values).tolist()) - set(card.label_values))
    if unknown:
        raise InvalidInputError(f"model {card.name!r}: the bundle produced label values {unknown} that its card does not list")
    from napari_medseg.labelmaps import label_dtype as _label_dtype

    labels_zyx = np.ascontiguousarray(values.transpose(2, 1, 0)).astype(_label_dtype(max(card.label_values)))
    p = None
    if probs is not None and pipeline.inverted:
        pa = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
        if pa.shape[1:] == spatial:
            p = np.ascontiguousarray(np.moveaxis(pa, 0, -1).transpose(2, 1, 0, 3)).astype(np.float32)
    eps = 1e-12
    if p is not None and card.outputs is not None and card.outputs.activation == "sigmoid":
        q = np.clip(p, eps, 1 - eps)
        entropy = -(q * np.log(q) + (1 - q) * np.log1p(-q)).sum(axis=-1).astype(np.float32)
        p = None
    elif p is not None and p.shape[-1] == card.out_channels and card.outputs is not None and card.outputs.activation == "softmax":
        entropy = -(p * np.log(np.clip(p, eps, 1.0))).sum(axis=-1).astype(np.float32)
    else:
        p, entropy = None, np.zeros(labels_zyx.shape, np.float32)
    if p is None:
        p = np.stack([(labels_zyx == v) for v in card.label_values], axis=-1).astype(np.float32)

    provenance = {
        "package": "napari-medseg",
        "version": __version__,
        "models": [{"name": card.name, "version": card.version, "sha256": model.sha256,
                    "source": str(getattr(model.source, "value", model.source))}],
        "parameters": {"device": str(torch_device), "overlap": overlap, "batch_size": batch_size, "mc_samples": 0,
                       "dropout_rate": None, "tta_flips": False, "seed": 0, "n_samples": 1,
                       "pipeline": "MONAI bundle", "inferer": pipeline.inferer_name},
        "labels": {str(v): card.labels[v].name for v in card.label_values},
        "warnings": [],
    }
    meta = provenance_metadata(provenance)
    geometry = volume.geometry
    return Prediction(
        labels=_Volume(labels_zyx, geometry, meta),
        probabilities=_Volume(p, geometry, meta),
        uncertainty={"entropy": _Volume(entropy, geometry, meta)},
        provenance=provenance,
    )

