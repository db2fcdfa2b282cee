"""Segmentation losses: cross entropy, top-k cross entropy, Dice, Focal, the Tversky family and
their compounds (Combo, Mixed Focal, Unified Focal).

Every loss is a :class:`torch.nn.Module` called as ``loss(logits, target)``:

- ``logits``: raw network outputs, shape ``(B, C, *spatial)`` with ``C >= 2`` channels (class 0 is
  the background); the loss applies the softmax over ``C`` itself and computes in float32 (also
  under autocast).
- ``target``, in any of three forms:

  * class indices, shape ``(B, *spatial)`` or ``(B, 1, *spatial)``, integer values in ``[0, C)``
    (a floating tensor holding whole numbers is accepted too);
  * one-hot, shape ``(B, C, *spatial)``;
  * soft labels (probabilities), shape ``(B, C, *spatial)``, values in ``[0, 1]`` summing to 1 over
    the channel axis, e.g. the targets made by :func:`napari_medseg.training.mixup.mixup`.

  Soft targets enter the equations exactly as one-hot targets do: ``y_{i,c}`` in Eq. (2) and
  ``g_{i,c}`` in Eq. (9) of Yeung et al. are simply no longer 0 or 1.

The result is a scalar: per-pixel terms are averaged over the pixels of each sample, region terms
(Dice, Tversky, ...) are computed per sample and per class, combined over the classes (a sum, as
the paper's equations write it, or a mean) and averaged over the batch.

Notation (Yeung et al. 2021): ``p_{i,c}`` is the softmax probability of class ``c`` at pixel ``i``,
``g_{i,c}`` the target. Per sample and class, ``TP = sum_i p g``, ``FN = sum_i (1 - p) g``,
``FP = sum_i p (1 - g)`` and the modified Dice / Tversky index (Eq. 9) is
``mTI = (TP + eps) / (TP + delta * FN + (1 - delta) * FP + eps)``.

.. note:: **Which term ``delta`` weights.** Printed literally, Eqs. (9) and (12) of Yeung et al. put
   ``delta`` on ``sum p_0 g_1`` (foreground predicted on background, i.e. false positives), but the
   text says that ``delta = 0.7`` gives "a greater weight to false negatives" to raise recall, and
   the authors' code (github.com/mlyg/mixed-focal-loss, unified-focal-loss) and the original Tversky
   paper (Salehi et al. 2017, beta = 0.7 on FN) weight false negatives. We follow the stated intent
   and the reference code: **``delta`` weights false negatives**, ``1 - delta`` false positives.

.. note:: **Soft targets and region losses.** As the mixup paper (Isaksson et al. 2022, Sect. 4)
   warns, with soft targets the continuous Dice/Tversky index is not maximised at ``p = g``; the
   region losses still follow the equations with soft ``g``. That paper trained with mixup using
   the top-k cross entropy (:class:`TopKCrossEntropyLoss`), which has no such issue.

References
----------
.. [1] M. Yeung, E. Sala, C.-B. Schönlieb, L. Rundo, "A Mixed Focal Loss Function for Handling
   Class Imbalanced Medical Image Segmentation", arXiv:2102.04525v1, 2021
   (``shared/papers/mixed-focal-loss-yeung2021.txt``), Eqs. (1)-(24), Sect. III-D.
.. [2] M. Yeung, E. Sala, C.-B. Schönlieb, L. Rundo, "Unified Focal loss: Generalising Dice and
   cross entropy-based losses to handle class imbalanced medical image segmentation", Comput. Med.
   Imaging Graph. 95 (2022) 102026 (the later version of [1]); reference code
   github.com/mlyg/unified-focal-loss.
.. [3] L. J. Isaksson et al., "Mixup (sample pairing) can improve the performance of deep
   segmentation networks", JAISCR 12(1) (2022) (``shared/papers/mixup-segmentation-isaksson2022.txt``),
   Sect. 2.5 (top-k cross entropy).
.. [4] T.-Y. Lin et al., "Focal loss for dense object detection", ICCV 2017.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import nn

from napari_medseg._options import look_up_option
from napari_medseg.errors import InvalidInputError

__all__ = [
    "LossName",
    "ClassReduction",
    "UnifiedVariant",
    "get_loss",
    "loss_parameters",
    "target_to_probabilities",
    "SegmentationLoss",
    "CrossEntropyLoss",
    "TopKCrossEntropyLoss",
    "FocalLoss",
    "TverskyLoss",
    "DiceLoss",
    "FocalTverskyLoss",
    "CosineTverskyLoss",
    "ComboLoss",
    "MixedFocalLoss",
    "UnifiedFocalLoss",
]

#: The smallest base a power with an exponent below 1 is taken of; keeps gradients finite where
#: ``1 - p``, ``1 - TI`` or ``cos(pi/2 TI)`` reach 0 (their derivative there is infinite).
_TINY = 1e-12
#: Tolerance of the checks that soft targets lie in [0, 1] and sum to 1 over the classes.
_TARGET_ATOL = 1e-3


class LossName(StrEnum):
    """The losses :func:`get_loss` builds."""

    CE = "ce"
    TOPK_CE = "topk_ce"
    DICE = "dice"
    FOCAL = "focal"
    TVERSKY = "tversky"
    FOCAL_TVERSKY = "focal_tversky"
    COSINE_TVERSKY = "cosine_tversky"
    COMBO = "combo"
    MIXED_FOCAL = "mixed_focal"
    UNIFIED_FOCAL = "unified_focal"


class ClassReduction(StrEnum):
    """How per-class region terms are combined: ``sum`` as in Eqs. (11)-(15), (19), (22) of
    Yeung et al., or ``mean`` as in their reference code and MONAI."""

    SUM = "sum"
    MEAN = "mean"


class UnifiedVariant(StrEnum):
    """The two Unified Focal loss variants of Yeung et al. (2022)."""

    ASYMMETRIC = "asymmetric"
    SYMMETRIC = "symmetric"


# --------------------------------------------------------------------------------------------
# parameter checks
# --------------------------------------------------------------------------------------------


def _number(value, name: str, *, low: float | None = None, high: float | None = None, low_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name}={value!r} is not a finite number")
    value = float(value)
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and value > high
    if bad_low or bad_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}]"
        if low is not None and high is not None:
            expected = f"in {lo}, {hi}"
        elif low is not None:
            expected = f"{'>' if low_open else '>='} {low:g}"
        else:
            expected = f"<= {high:g}"
        raise InvalidInputError(f"{name}={value!r} is out of range; expected a number {expected}")
    return value


def _bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name}={value!r} must be True or False")
    return value


def _class_weights(value, name: str) -> float | tuple[float, ...]:
    """A non-negative scalar or a sequence of non-negative per-class weights."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(value, name, low=0.0)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().flatten().tolist()
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return tuple(_number(v, f"{name}[{i}]", low=0.0) for i, v in enumerate(value))
    raise InvalidInputError(f"{name}={value!r} must be a non-negative number or a sequence of them, one per class")


def _safe_pow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """``base ** exponent`` for ``base`` in [0, 1] with finite gradients.

    Rounding can push ``base`` slightly below 0; for exponents below 1 the derivative is infinite at
    0, so the base is clamped to ``_TINY`` (where the clamp's gradient is 0).
    """
    if exponent == 1.0:
        return base
    if exponent > 1.0:
        return base.clamp_min(0.0).pow(exponent)
    return base.clamp_min(_TINY).pow(exponent)


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


def target_to_probabilities(target: torch.Tensor, num_classes: int, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Turn class indices, one-hot or soft labels into per-class probabilities ``(B, C, *spatial)``.

    Parameters
    ----------
    target : torch.Tensor
        Class indices ``(B, *spatial)`` or ``(B, 1, *spatial)`` (integer, or floating holding whole
        numbers) in ``[0, num_classes)``; or one-hot / soft labels ``(B, num_classes, *spatial)`` with
        values in ``[0, 1]`` summing to 1 over the channel axis (tolerance 1e-3).
    num_classes : int
        ``C``, at least 2.
    like : torch.Tensor, optional
        Logits ``(B, C, *spatial)`` the target must match in batch size and spatial shape. Without
        it, a target with ``ndim >= 3`` whose axis 1 has length ``num_classes`` is read as one-hot /
        soft and any other shape as indices. Default: None.

    Returns
    -------
    torch.Tensor
        Float32 tensor ``(B, C, *spatial)`` on the target's device; a new tensor (the input is not
        modified).

    Raises
    ------
    InvalidInputError
        If ``num_classes < 2``, the shape matches neither form, indices are not whole numbers or lie
        outside ``[0, num_classes)``, or soft labels leave ``[0, 1]`` or do not sum to 1.

    Examples
    --------
    >>> import torch
    >>> target_to_probabilities(torch.tensor([[0, 2]]), 3).tolist()
    [[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]]
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidInputError(f"num_classes={num_classes!r} must be an integer >= 2 (background and at least one class)")
    if not isinstance(target, torch.Tensor):
        raise InvalidInputError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if like is not None:
        batch, spatial = like.shape[0], tuple(like.shape[2:])
        shape = tuple(target.shape)
        if shape == (batch, *spatial):
            form = "indices"
        elif shape == (batch, 1, *spatial):
            form = "indices"
            target = target[:, 0]
        elif shape == (batch, num_classes, *spatial):
            form = "probabilities"
        else:
            raise InvalidInputError(
                f"target has shape {shape}; for logits of shape {tuple(like.shape)} expected class indices "
                f"{(batch, *spatial)} or {(batch, 1, *spatial)}, or one-hot/soft labels {(batch, num_classes, *spatial)}"
            )
    else:
        if target.ndim >= 3 and target.shape[1] == num_classes:
            form = "probabilities"
        elif target.ndim >= 3 and target.shape[1] == 1:
            form = "indices"
            target = target[:, 0]
        elif target.ndim >= 2:
            form = "indices"
        else:
            raise InvalidInputError(f"target has shape {tuple(target.shape)}; expected (B, *spatial) indices or (B, C, *spatial)")

    if form == "indices":
        if target.is_floating_point():
            if bool((target != torch.round(target)).any()):
                raise InvalidInputError("target holds class indices that are not whole numbers")
        elif target.is_complex():
            raise InvalidInputError("target must be real, not complex")
        index = target.to(torch.int64)
        if index.numel():
            low, high = torch.aminmax(index)  # one pass, one device sync
            if int(low) < 0 or int(high) >= num_classes:
                found = sorted({int(v) for v in torch.unique(index).tolist() if v < 0 or v >= num_classes})
                raise InvalidInputError(
                    f"target holds class indices {found[:10]} outside [0, {num_classes}) for {num_classes} output channels"
                )
        one_hot = torch.zeros((index.shape[0], num_classes, *index.shape[1:]), dtype=torch.float32, device=index.device)
        return one_hot.scatter_(1, index.unsqueeze(1), 1.0)

    probs = target.to(torch.float32)
    if probs is target:
        probs = probs.clone()
    if probs.numel():
        low, high = torch.aminmax(probs)
        deviation = (probs.sum(dim=1) - 1.0).abs().max()
        checks = torch.stack([low, high, deviation]).tolist()  # NaN fails every comparison below
        if not (checks[0] >= -_TARGET_ATOL and checks[1] <= 1 + _TARGET_ATOL and checks[2] <= _TARGET_ATOL):
            raise InvalidInputError(
                "target of shape (B, C, ...) must hold one-hot or soft labels: values in [0, 1] summing to 1 over "
                "the class axis (use class indices of shape (B, ...) for label maps)"
            )
    return probs


# --------------------------------------------------------------------------------------------
# the building blocks (prepared tensors in, per-sample terms out)
# --------------------------------------------------------------------------------------------


def _region_stats(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, FN, FP per sample and class, shape (B, C): Eq. (9)'s sums.

    ``FN = sum (1 - p) g = sum g - TP`` and ``FP = sum p (1 - g) = sum p - TP``: one product over
    the volume instead of three (as MONAI's Dice loss does).
    """
    axes = tuple(range(2, probs.ndim))
    tp = (probs * target).sum(dim=axes)
    fn = target.sum(dim=axes) - tp
    fp = probs.sum(dim=axes) - tp
    return tp, fn, fp


def _tversky_index(probs, target, delta: float, smooth: float) -> torch.Tensor:
    """mTI of Eq. (9) (``delta`` on FN, see the module note), shape (B, C)."""
    tp, fn, fp = _region_stats(probs, target)
    return (tp + smooth) / (tp + delta * fn + (1.0 - delta) * fp + smooth)


def _reduce_classes(per_class: torch.Tensor, reduction: ClassReduction) -> torch.Tensor:
    """(B, C') -> scalar: sum or mean over classes, mean over the batch."""
    per_sample = per_class.sum(dim=1) if reduction is ClassReduction.SUM else per_class.mean(dim=1)
    return per_sample.mean()


def _log1m_softmax(log_probs: torch.Tensor) -> torch.Tensor:
    """``log(1 - p)`` from ``log p``, stable for ``p`` near 0 and clamped at ``log(1e-7)`` near 1."""
    return torch.log(-torch.expm1(log_probs.clamp(max=math.log1p(-1e-7))))


class SegmentationLoss(nn.Module):
    """Base class: validates and prepares ``(logits, target)`` and applies the background option.

    Parameters
    ----------
    include_background : bool, keyword-only
        If False, class 0 (background) is left out of the loss after the softmax over all ``C``
        channels (the probabilities still sum to 1 over all classes). Default: True.
    """

    def __init__(self, *, include_background: bool = True) -> None:
        super().__init__()
        self.include_background = _bool(include_background, "include_background")

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.include_background else x[:, 1:]

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor):
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise InvalidInputError("logits must be a floating-point torch.Tensor of shape (B, C, *spatial)")
        if logits.ndim < 3:
            raise InvalidInputError(f"logits has shape {tuple(logits.shape)}; expected (B, C, *spatial) with >= 1 spatial axis")
        channels = logits.shape[1]
        if channels < 2:
            raise InvalidInputError(
                f"logits has {channels} channel; expected C >= 2 (background and foreground classes, softmax over C)"
            )
        if logits.numel() == 0:
            raise InvalidInputError(f"logits of shape {tuple(logits.shape)} is empty")
        logits = logits.float()
        target = target_to_probabilities(target, channels, like=logits).to(logits.device)
        log_probs = torch.log_softmax(logits, dim=1)
        return log_probs, log_probs.exp(), target

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss of ``logits`` ``(B, C, *spatial)`` against ``target``.

        Raises
        ------
        InvalidInputError
            If the logits are not a float tensor ``(B, C >= 2, *spatial)`` or the target does not
            match them (see :func:`target_to_probabilities`).
        """
        log_probs, probs, target = self._prepare(logits, target)
        return self._compute(log_probs, probs, target)

    def _compute(self, log_probs, probs, target) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# distribution-based losses
# --------------------------------------------------------------------------------------------


class CrossEntropyLoss(SegmentationLoss):
    """Categorical cross entropy, Eq. (2) of Yeung et al.:
    ``L_CCE = -1/N sum_i sum_c y_{i,c} log p_{i,c}``, averaged over pixels and the batch.

    Equals :func:`torch.nn.functional.cross_entropy` for index targets and accepts soft targets.

    Parameters
    ----------
    include_background : bool, keyword-only
        If False, the ``c = 0`` term is dropped from the inner sum. Default: True.

    Examples
    --------
    >>> import torch
    >>> loss = CrossEntropyLoss()
    >>> round(float(loss(torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1, 0]]))), 4)  # log 2
    0.6931
    """

    def _compute(self, log_probs, probs, target):
        per_pixel = -(self._keep(target) * self._keep(log_probs)).sum(dim=1)
        return per_pixel.mean()


class TopKCrossEntropyLoss(SegmentationLoss):
    """Top-k pixel cross entropy (Isaksson et al. 2022, Sect. 2.5; Wu et al. 2016).

    The per-pixel cross entropy of Eq. (2) is computed for every pixel; for each sample only the
    ``k`` largest values contribute, and the loss is their mean over the batch (``k`` per sample).

    Parameters
    ----------
    k : float or int, keyword-only
        A float in ``(0, 1]`` is a fraction of each sample's pixels (``round(k * n_pixels)``, at
        least 1); an int ``>= 1`` is a pixel count, which must not exceed the pixels per sample.
        ``k=1.0`` is the plain cross entropy. Default: 0.05, the paper's 5 %.
    include_background : bool, keyword-only
        If False, the ``c = 0`` term is dropped from each pixel's cross entropy. Default: True.

    Raises
    ------
    InvalidInputError
        If ``k`` is not a fraction in ``(0, 1]`` or a positive integer; at call time, if an integer
        ``k`` exceeds the number of pixels per sample.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 2, 4)
    >>> logits[0, 0, 2] = 2.0  # pixel 2 is confidently background but labelled 1
    >>> round(float(TopKCrossEntropyLoss(k=1)(logits, torch.tensor([[0, 0, 1, 1]]))), 4)  # log(1 + e^2)
    2.1269
    """

    def __init__(self, *, k: float | int = 0.05, include_background: bool = True) -> None:
        super().__init__(include_background=include_background)
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise InvalidInputError(f"k={k!r} must be a fraction in (0, 1] (float) or a pixel count >= 1 (int)")
        if isinstance(k, int):
            if k < 1:
                raise InvalidInputError(f"k={k!r} must be a pixel count >= 1 (int) or a fraction in (0, 1] (float)")
        else:
            _number(k, "k", low=0.0, high=1.0, low_open=True)
        self.k = k

    def _count(self, n_pixels: int) -> int:
        if isinstance(self.k, int):
            if self.k > n_pixels:
                raise InvalidInputError(f"k={self.k} pixels exceeds the {n_pixels} pixels of each sample")
            return self.k
        return max(1, min(n_pixels, round(self.k * n_pixels)))

    def _compute(self, log_probs, probs, target):
        per_pixel = -(self._keep(target) * self._keep(log_probs)).sum(dim=1).flatten(1)
        k = self._count(per_pixel.shape[1])
        if k == per_pixel.shape[1]:
            return per_pixel.mean()
        return torch.topk(per_pixel, k, dim=1, sorted=False).values.mean()


class FocalLoss(SegmentationLoss):
    """Categorical Focal loss, Eq. (7) of Yeung et al. (Lin et al. 2017):
    ``L_CF = -1/N sum_i sum_c alpha_c (1 - p_{i,c})^gamma y_{i,c} log p_{i,c}``.

    With ``beta`` set, the cross entropy inside is the modified one of Eq. (17) applied per class
    (one-vs-rest), giving Eq. (21):
    ``-1/N sum_i sum_c alpha_c [beta (1-p)^gamma y log p + (1-beta) p^gamma (1-y) log(1-p)]``.

    Parameters
    ----------
    alpha : float or sequence of float, keyword-only
        Class weights: a scalar applies to every class (Eq. 7 with a constant vector); a sequence
        gives one weight per output channel (length ``C``, background first). Default: 0.25
        (Sect. III-D, after Lin et al.). ``alpha=1, gamma=0`` is the cross entropy.
    gamma : float, keyword-only
        Focusing parameter ``>= 0``; larger values down-weight easy pixels more. Default: 2.
    beta : float or None, keyword-only
        ``None`` uses the categorical cross entropy (Eq. 2), as the paper's experiments do; a value
        in ``[0, 1]`` uses Eq. (17) with ``beta > 0.5`` penalising false negatives more. Default: None.
    include_background : bool, keyword-only
        If False, the ``c = 0`` term is dropped. Default: True.

    Raises
    ------
    InvalidInputError
        If ``alpha`` is negative, ``gamma < 0``, ``beta`` is outside ``[0, 1]``; at call time, if a
        sequence ``alpha`` does not have ``C`` entries.

    Examples
    --------
    >>> import torch
    >>> logits, target = torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1, 0]])
    >>> round(float(FocalLoss()(logits, target)), 5)  # 0.25 * 0.5**2 * log 2
    0.04332
    """

    def __init__(
        self,
        *,
        alpha: float | Sequence[float] = 0.25,
        gamma: float = 2.0,
        beta: float | None = None,
        include_background: bool = True,
    ) -> None:
        super().__init__(include_background=include_background)
        self.alpha = _class_weights(alpha, "alpha")
        self.gamma = _number(gamma, "gamma", low=0.0)
        self.beta = None if beta is None else _number(beta, "beta", low=0.0, high=1.0)

    def _alpha(self, channels: int, like: torch.Tensor) -> torch.Tensor | float:
        if isinstance(self.alpha, float):
            return self.alpha
        if len(self.alpha) != channels:
            raise InvalidInputError(f"alpha has {len(self.alpha)} class weights; the logits have {channels} channels")
        return torch.tensor(self.alpha, dtype=like.dtype, device=like.device).view(1, channels, *([1] * (like.ndim - 2)))

    def _per_class(self, log_probs, probs, target) -> torch.Tensor:
        """Per-pixel, per-class focal terms (B, C, *spatial), before the background option."""
        alpha = self._alpha(probs.shape[1], probs)
        positive = -target * log_probs
        if self.gamma != 0.0:
            positive = _safe_pow(1.0 - probs, self.gamma) * positive
        if self.beta is not None:
            negative = -(1.0 - target) * _log1m_softmax(log_probs)
            if self.gamma != 0.0:
                negative = _safe_pow(probs, self.gamma) * negative
            positive = self.beta * positive + (1.0 - self.beta) * negative
        return positive if isinstance(alpha, float) and alpha == 1.0 else alpha * positive

    def _compute(self, log_probs, probs, target):
        return self._keep(self._per_class(log_probs, probs, target)).sum(dim=1).mean()


# --------------------------------------------------------------------------------------------
# region-based losses
# --------------------------------------------------------------------------------------------


class TverskyLoss(SegmentationLoss):
    """Tversky loss, Eqs. (12)-(13) of Yeung et al. (Salehi et al. 2017):
    ``L_T = sum_c (1 - TI_c)`` with ``TI = (TP + eps) / (TP + delta FN + (1 - delta) FP + eps)``.

    Parameters
    ----------
    delta : float, keyword-only
        Weight of false negatives in ``[0, 1]`` (``1 - delta`` weights false positives; see the
        module note on Eq. 9). ``0.5`` gives the Dice loss. Default: 0.7 (Eq. 12).
    smooth : float, keyword-only
        ``eps >= 0`` added to numerator and denominator; keeps the index defined (= 1) for a class
        absent from both target and prediction. Default: 1e-6 (the authors' code).
    class_reduction : {"sum", "mean"}, keyword-only
        Combine the per-class terms by the paper's sum (Eq. 13) or by their mean. Default: "sum".
    include_background : bool, keyword-only
        If False, class 0 is left out of the sum. Default: True.

    Raises
    ------
    InvalidInputError
        If ``delta`` is outside ``[0, 1]``, ``smooth < 0`` or ``class_reduction`` is unknown.

    Examples
    --------
    >>> import torch
    >>> logits = torch.log(torch.tensor([[[0.9, 0.6], [0.1, 0.4]]]))  # (1, 2, 2), p_fg = 0.1, 0.4
    >>> target = torch.tensor([[1, 0]])  # TP_fg = 0.1, FN_fg = 0.9, FP_fg = 0.4
    >>> round(float(TverskyLoss(smooth=0, include_background=False)(logits, target)), 6)  # 1 - 0.1/0.85
    0.882353
    """

    _exponent_name = ""

    def __init__(
        self,
        *,
        delta: float = 0.7,
        smooth: float = 1e-6,
        class_reduction: ClassReduction | str = ClassReduction.SUM,
        include_background: bool = True,
    ) -> None:
        super().__init__(include_background=include_background)
        self.delta = _number(delta, "delta", low=0.0, high=1.0)
        self.smooth = _number(smooth, "smooth", low=0.0)
        self.class_reduction = look_up_option(class_reduction, ClassReduction, name="class_reduction")

    def _index(self, probs, target) -> torch.Tensor:
        return self._keep(_tversky_index(probs, target, self.delta, self.smooth))

    def _per_class(self, index: torch.Tensor) -> torch.Tensor:
        return 1.0 - index

    def _compute(self, log_probs, probs, target):
        return _reduce_classes(self._per_class(self._index(probs, target)), self.class_reduction)


class DiceLoss(TverskyLoss):
    """Dice loss, Eqs. (10)-(11) of Yeung et al.: ``L_DSC = sum_c (1 - DSC_c)`` with
    ``DSC = (TP + eps) / (TP + FN/2 + FP/2 + eps) = (2 TP + 2 eps) / (2 TP + FN + FP + 2 eps)``,
    i.e. :class:`TverskyLoss` with ``delta = 0.5``. Matches MONAI's ``DiceLoss(softmax=True,
    smooth_nr=2 eps, smooth_dr=2 eps)`` (with ``class_reduction="mean"``).

    Parameters
    ----------
    smooth : float, keyword-only
        ``eps >= 0`` as in :class:`TverskyLoss`. Default: 1e-6.
    class_reduction : {"sum", "mean"}, keyword-only
        Paper's sum over classes or the mean. Default: "sum".
    include_background : bool, keyword-only
        If False, class 0 is left out. Default: True.

    Raises
    ------
    InvalidInputError
        If ``smooth < 0`` or ``class_reduction`` is unknown.

    Examples
    --------
    >>> import torch
    >>> logits = torch.log(torch.tensor([[[0.9, 0.6], [0.1, 0.4]]]))
    >>> round(float(DiceLoss(smooth=0, include_background=False)(logits, torch.tensor([[1, 0]]))), 6)  # 1 - 0.2/1.5
    0.866667
    """

    def __init__(
        self,
        *,
        smooth: float = 1e-6,
        class_reduction: ClassReduction | str = ClassReduction.SUM,
        include_background: bool = True,
    ) -> None:
        super().__init__(delta=0.5, smooth=smooth, class_reduction=class_reduction, include_background=include_background)


class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss, Eq. (14) of Yeung et al. (Abraham & Khan 2019):
    ``L_FT = sum_c (1 - TI_c)^(1/gamma)``; ``gamma = 1`` gives the Tversky loss.

    Parameters
    ----------
    delta : float, keyword-only
        False-negative weight of the Tversky index, in ``[0, 1]``. Default: 0.7.
    gamma : float, keyword-only
        Focal parameter ``> 0``; the exponent is ``1/gamma``. Default: 4/3 (Sect. III-D).
    smooth : float, keyword-only
        ``eps >= 0`` of the Tversky index. Default: 1e-6.
    class_reduction : {"sum", "mean"}, keyword-only
        Paper's sum over classes or the mean. Default: "sum".
    include_background : bool, keyword-only
        If False, class 0 is left out. Default: True.

    Raises
    ------
    InvalidInputError
        If ``gamma <= 0`` or another parameter is out of range (see :class:`TverskyLoss`).

    Examples
    --------
    >>> import torch
    >>> logits = torch.log(torch.tensor([[[0.9, 0.6], [0.1, 0.4]]]))
    >>> loss = FocalTverskyLoss(gamma=0.5, smooth=0, include_background=False)  # (1 - TI)^2
    >>> round(float(loss(logits, torch.tensor([[1, 0]]))), 6)  # (0.75 / 0.85)**2
    0.778547
    """

    def __init__(
        self,
        *,
        delta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        smooth: float = 1e-6,
        class_reduction: ClassReduction | str = ClassReduction.SUM,
        include_background: bool = True,
    ) -> None:
        super().__init__(delta=delta, smooth=smooth, class_reduction=class_reduction, include_background=include_background)
        self.gamma = _number(gamma, "gamma", low=0.0, low_open=True)

    def _per_class(self, index):
        return _safe_pow(1.0 - index, 1.0 / self.gamma)


class CosineTverskyLoss(TverskyLoss):
    """Cosine Tversky loss, Eq. (15) of Yeung et al.: ``L_cosT = sum_c cos^gamma(pi/2 * TI_c)``.

    Parameters
    ----------
    delta : float, keyword-only
        False-negative weight of the Tversky index, in ``[0, 1]``. Default: 0.7.
    gamma : float, keyword-only
        Focal parameter ``> 0`` (the exponent of the cosine). Default: 1 (Sect. III-D).
    smooth : float, keyword-only
        ``eps >= 0`` of the Tversky index. Default: 1e-6.
    class_reduction : {"sum", "mean"}, keyword-only
        Paper's sum over classes or the mean. Default: "sum".
    include_background : bool, keyword-only
        If False, class 0 is left out. Default: True.

    Raises
    ------
    InvalidInputError
        If ``gamma <= 0`` or another parameter is out of range (see :class:`TverskyLoss`).

    Examples
    --------
    >>> import torch
    >>> logits = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    >>> loss = CosineTverskyLoss(delta=0.5, smooth=0, include_background=False)  # TI = 0.5
    >>> round(float(loss(logits, torch.tensor([[1, 0]]))), 6)  # cos(pi/4)
    0.707107
    """

    def __init__(
        self,
        *,
        delta: float = 0.7,
        gamma: float = 1.0,
        smooth: float = 1e-6,
        class_reduction: ClassReduction | str = ClassReduction.SUM,
        include_background: bool = True,
    ) -> None:
        super().__init__(delta=delta, smooth=smooth, class_reduction=class_reduction, include_background=include_background)
        self.gamma = _number(gamma, "gamma", low=0.0, low_open=True)

    def _per_class(self, index):
        return _safe_pow(torch.cos(0.5 * math.pi * index), self.gamma)


# --------------------------------------------------------------------------------------------
# compound losses
# --------------------------------------------------------------------------------------------


class ComboLoss(SegmentationLoss):
    """Combo loss, Eqs. (16)-(18) of Yeung et al. (Taghanaki et al. 2019).

    With ``alpha=None`` (the paper's experiments, Eq. 18): ``L_combo = L_CCE - DSC``; with ``alpha``
    set (Eq. 16): ``alpha * L_mCE - (1 - alpha) * DSC``, where ``L_mCE`` is the cross entropy of
    Eq. (2), or of Eq. (17) (per class, one-vs-rest) when ``beta`` is set. ``DSC`` is the Dice
    coefficient of Eq. (10) combined over the classes like the region losses, so with the default
    sum ``L_combo = L_CCE + L_DSC - C'`` (``C'`` the classes kept).

    Parameters
    ----------
    alpha : float or None, keyword-only
        Weight in ``[0, 1]`` of the cross entropy term against the Dice term; None for Eq. (18).
        Default: None.
    beta : float or None, keyword-only
        Eq. (17)'s false-negative weight in ``[0, 1]``; None for the standard cross entropy (as the
        paper uses). Default: None.
    smooth : float, keyword-only
        ``eps >= 0`` of the Dice coefficient. Default: 1e-6.
    class_reduction : {"sum", "mean"}, keyword-only
        Sum or mean of the per-class Dice coefficients. Default: "sum".
    include_background : bool, keyword-only
        If False, class 0 is left out of both terms. Default: True.

    Raises
    ------
    InvalidInputError
        If ``alpha`` or ``beta`` is outside ``[0, 1]``, ``smooth < 0`` or ``class_reduction`` is
        unknown.

    Examples
    --------
    >>> import torch
    >>> logits, target = torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1, 0]])
    >>> round(float(ComboLoss(smooth=0)(logits, target)), 4)  # log 2 - (0.5 + 0.5)
    -0.3069
    """

    def __init__(
        self,
        *,
        alpha: float | None = None,
        beta: float | None = None,
        smooth: float = 1e-6,
        class_reduction: ClassReduction | str = ClassReduction.SUM,
        include_background: bool = True,
    ) -> None:
        super().__init__(include_background=include_background)
        self.alpha = None if alpha is None else _number(alpha, "alpha", low=0.0, high=1.0)
        self.cross_entropy = FocalLoss(alpha=1.0, gamma=0.0, beta=beta, include_background=include_background)
        self.dice = DiceLoss(smooth=smooth, class_reduction=class_reduction, include_background=include_background)

    def _compute(self, log_probs, probs, target):
        ce = self.cross_entropy._compute(log_probs, probs, target)
        dsc = _reduce_classes(self.dice._index(probs, target), self.dice.class_reduction)
        if self.alpha is None:
            return ce - dsc
        return self.alpha * ce - (1.0 - self.alpha) * dsc


class MixedFocalLoss(SegmentationLoss):
    """Mixed Focal loss, Eq. (23) of Yeung et al.:
    ``L_MF = lambda * L_mF + (1 - lambda) * L_mFD``, with ``L_mF`` the (modified) Focal loss of
    Eqs. (7)/(21) (:class:`FocalLoss`) and ``L_mFD`` the modified Focal Dice loss of Eq. (22), i.e.
    the Focal Tversky loss (:class:`FocalTverskyLoss`). With ``lambda = 0.5`` this is half of the
    categorical variant of Eq. (24), ``L_CMF = L_FT + L_CF``.

    Parameters
    ----------
    lambda_ : float, keyword-only
        ``lambda`` in ``[0, 1]``, the weight of the Focal term. Default: 0.5 (equal weights).
    alpha : float or sequence of float, keyword-only
        Class weights of the Focal term. Default: 0.25 (Sect. III-D: "same parameters as for the
        individual Focal loss and Focal Tversky loss").
    gamma_focal : float, keyword-only
        Focusing parameter ``>= 0`` of the Focal term. Default: 2.
    beta : float or None, keyword-only
        Eq. (17)'s false-negative weight of the Focal term, or None for Eq. (7). Default: None.
    delta : float, keyword-only
        False-negative weight of the Tversky index in ``[0, 1]``. Default: 0.7.
    gamma_tversky : float, keyword-only
        Focal parameter ``> 0`` of the Focal Tversky term (exponent ``1/gamma``). Default: 4/3.
    smooth : float, keyword-only
        ``eps >= 0`` of the Tversky index. Default: 1e-6.
    class_reduction : {"sum", "mean"}, keyword-only
        Sum or mean over classes of the Focal Tversky term. Default: "sum".
    include_background : bool, keyword-only
        If False, class 0 is left out of both terms. Default: True.

    Raises
    ------
    InvalidInputError
        If ``lambda_`` is outside ``[0, 1]`` or a component's parameter is invalid.
    """

    def __init__(
        self,
        *,
        lambda_: float = 0.5,
        alpha: float | Sequence[float] = 0.25,
        gamma_focal: float = 2.0,
        beta: float | None = None,
        delta: float = 0.7,
        gamma_tversky: float = 4.0 / 3.0,
        smooth: float = 1e-6,
        class_reduction: ClassReduction | str = ClassReduction.SUM,
        include_background: bool = True,
    ) -> None:
        super().__init__(include_background=include_background)
        self.lambda_ = _number(lambda_, "lambda_", low=0.0, high=1.0)
        self.focal = FocalLoss(alpha=alpha, gamma=gamma_focal, beta=beta, include_background=include_background)
        self.focal_tversky = FocalTverskyLoss(
            delta=delta,
            gamma=gamma_tversky,
            smooth=smooth,
            class_reduction=class_reduction,
            include_background=include_background,
        )

    def _compute(self, log_probs, probs, target):
        return self.lambda_ * self.focal._compute(log_probs, probs, target) + (
            1.0 - self.lambda_
        ) * self.focal_tversky._compute(log_probs, probs, target)


class UnifiedFocalLoss(SegmentationLoss):
    """Unified Focal loss, symmetric and asymmetric (Yeung et al. 2022, the later version of the
    Mixed Focal paper): ``L_UF = lambda * L_F + (1 - lambda) * L_FT`` with, per pixel ``i``,
    class 0 the background and classes ``c >= 1`` the rare (foreground) classes:

    - asymmetric (``L_aUF``): ``L_maF = -1/N sum_i [(1-delta)(1-p_{i,0})^gamma y_{i,0} log p_{i,0}
      + delta sum_{c>=1} y_{i,c} log p_{i,c}]`` (only the background is focally suppressed) and
      ``L_maFT = (1 - mTI_0) + sum_{c>=1} (1 - mTI_c)^(1-gamma)`` (only the foreground is enhanced);
    - symmetric (``L_sUF``): the focal factor ``(1-p_{i,c})^gamma`` on every class in ``L_mF`` and the
      exponent ``1-gamma`` on every class in ``L_mFT``.

    ``mTI`` is Eq. (9) with ``delta`` on false negatives. ``gamma = 0`` removes both focal terms:
    with ``delta = 0.5`` the loss becomes ``lambda/2 * CE + (1-lambda) * Dice loss``.

    **Differences from MONAI (MONAI 1.x ``AsymmetricUnifiedFocalLoss``).** We follow the paper and
    its reference code, not MONAI: MONAI defaults to ``delta = 0.7`` where the paper and the reference
    code use 0.6; its ``weight`` multiplies the other component than the reference code's ``weight``
    does; it takes probabilities rather than logits, averages its focal term over the two channels
    (half of ours) and its Focal Tversky term over the classes (``class_reduction="mean"`` here); it
    is binary only, this class takes ``C >= 2`` classes (class 0 background).

    **Which term ``lambda`` weights.** Here ``lambda`` multiplies the focal (distribution-based)
    term, as ``lambda`` does in Eq. (23) of the Mixed Focal paper; the reference code's ``weight``
    multiplies the Focal Tversky term instead. The two agree at the default ``lambda = 0.5``; for
    another value, ``lambda_=x`` here equals the reference code's ``weight=1-x``.

    Parameters
    ----------
    variant : {"asymmetric", "symmetric"}, keyword-only
        Which Unified Focal loss. Default: "asymmetric" (the paper's recommended form).
    lambda_ : float, keyword-only
        Weight in ``[0, 1]`` of the focal (distribution) term. Default: 0.5.
    delta : float, keyword-only
        In ``[0, 1]``: the foreground weight of the focal term (``1 - delta`` for the background) and
        the false-negative weight of the Tversky index. Default: 0.6 (paper and reference code).
    gamma : float, keyword-only
        In ``[0, 1]``: background suppression exponent ``gamma`` and foreground enhancement
        exponent ``1 - gamma``. Default: 0.5.
    smooth : float, keyword-only
        ``eps >= 0`` of the Tversky index. Default: 1e-6.
    class_reduction : {"sum", "mean"}, keyword-only
        Sum or mean over classes of the Focal Tversky term (the reference code takes the mean of
        its two classes). Default: "sum".

    Raises
    ------
    InvalidInputError
        If ``variant`` is unknown or a parameter is outside its range.
    """

    def __init__(
        self,
        *,
        variant: UnifiedVariant | str = UnifiedVariant.ASYMMETRIC,
        lambda_: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        smooth: float = 1e-6,
        class_reduction: ClassReduction | str = ClassReduction.SUM,
    ) -> None:
        super().__init__(include_background=True)
        self.variant = look_up_option(variant, UnifiedVariant, name="variant")
        self.lambda_ = _number(lambda_, "lambda_", low=0.0, high=1.0)
        self.delta = _number(delta, "delta", low=0.0, high=1.0)
        self.gamma = _number(gamma, "gamma", low=0.0, high=1.0)
        self.smooth = _number(smooth, "smooth", low=0.0)
        self.class_reduction = look_up_option(class_reduction, ClassReduction, name="class_reduction")

    def focal_term(self, log_probs, probs, target) -> torch.Tensor:
        """``L_maF`` / ``L_mF`` from prepared log-probabilities, probabilities and target."""
        ce = -target * log_probs
        background = (1.0 - self.delta) * _safe_pow(1.0 - probs[:, :1], self.gamma) * ce[:, :1]
        foreground = ce[:, 1:]
        if self.variant is UnifiedVariant.SYMMETRIC:
            foreground = _safe_pow(1.0 - probs[:, 1:], self.gamma) * foreground
        return (background.sum(dim=1) + self.delta * foreground.sum(dim=1)).mean()

    def tversky_term(self, probs, target) -> torch.Tensor:
        """``L_maFT`` / ``L_mFT`` from prepared probabilities and target."""
        index = _tversky_index(probs, target, self.delta, self.smooth)
        background = 1.0 - index[:, :1]
        if self.variant is UnifiedVariant.SYMMETRIC:
            background = _safe_pow(background, 1.0 - self.gamma)
        foreground = _safe_pow(1.0 - index[:, 1:], 1.0 - self.gamma)
        return _reduce_classes(torch.cat([background, foreground], dim=1), self.class_reduction)

    def _compute(self, log_probs, probs, target):
        return self.lambda_ * self.focal_term(log_probs, probs, target) + (1.0 - self.lambda_) * self.tversky_term(
            probs, target
        )


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------

_CLASSES: dict[LossName, type[SegmentationLoss]] = {
    LossName.CE: CrossEntropyLoss,
    LossName.TOPK_CE: TopKCrossEntropyLoss,
    LossName.DICE: DiceLoss,
    LossName.FOCAL: FocalLoss,
    LossName.TVERSKY: TverskyLoss,
    LossName.FOCAL_TVERSKY: FocalTverskyLoss,
    LossName.COSINE_TVERSKY: CosineTverskyLoss,
    LossName.COMBO: ComboLoss,
    LossName.MIXED_FOCAL: MixedFocalLoss,
    LossName.UNIFIED_FOCAL: UnifiedFocalLoss,
}


def loss_parameters(name: LossName | str) -> dict[str, object]:
    """The keyword parameters of loss ``name`` with their defaults.

    Raises
    ------
    InvalidInputError
        If ``name`` is not a :class:`LossName` (the message suggests the closest name).
    """
    cls = _CLASSES[look_up_option(name, LossName, name="loss")]
    return {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def get_loss(name: LossName | str, **params) -> SegmentationLoss:
    """Build the loss ``name`` with keyword ``params``.

    Parameters
    ----------
    name : LossName or str
        One of ``ce``, ``topk_ce``, ``dice``, ``focal``, ``tversky``, ``focal_tversky``,
        ``cosine_tversky``, ``combo``, ``mixed_focal``, ``unified_focal`` (case-insensitive).
    **params
        The loss's keyword parameters (see each class; defaults follow Yeung et al. Sect. III-D and
        Isaksson et al. Sect. 2.5): e.g. ``k`` (``topk_ce``), ``alpha``/``gamma`` (``focal``),
        ``delta``, ``gamma``, ``smooth``, ``class_reduction``, ``include_background``, ``lambda_``,
        ``variant`` (``unified_focal``). ``lambda`` is accepted as a spelling of ``lambda_`` (so
        YAML configs can use the paper's name).

    Returns
    -------
    SegmentationLoss
        A module called as ``loss(logits (B, C, *spatial), target)`` returning a scalar tensor.

    Raises
    ------
    InvalidInputError
        If ``name`` is unknown (with a "did you mean"), a parameter does not belong to that loss,
        or a value is invalid; the message names the parameter.

    Examples
    --------
    >>> import torch
    >>> loss = get_loss("focal", gamma=0.0, alpha=1.0)
    >>> round(float(loss(torch.zeros(1, 2, 3), torch.tensor([[0, 1, 1]]))), 4)
    0.6931
    """
    member = look_up_option(name, LossName, name="loss")
    accepted = loss_parameters(member)
    if "lambda" in params and "lambda_" in accepted:
        if "lambda_" in params:
            raise InvalidInputError("give lambda or lambda_, not both")
        params["lambda_"] = params.pop("lambda")
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        from napari_medseg._options import close_matches_message

        hints = "".join(close_matches_message(u, list(accepted)) for u in unknown[:1])
        raise InvalidInputError(
            f"loss {member.value!r} has no parameter {', '.join(unknown)}{hints}; its parameters are "
            f"{', '.join(accepted)}"
        )
    return _CLASSES[member](**params)
