"""Tests of napari_medseg.training.losses: hand-computed values, the papers' identities, MONAI
agreement where the definitions coincide, soft targets, finite gradients and invalid input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_medseg.errors import InvalidInputError
from napari_medseg.training.losses import (
    ClassReduction,
    LossName,
    UnifiedFocalLoss,
    get_loss,
    loss_parameters,
    target_to_probabilities,
)

LN2 = math.log(2.0)

# Two pixels, two classes: p_fg = (0.1, 0.4), p_bg = (0.9, 0.6); pixel 0 is foreground.
P_LOGITS = torch.log(torch.tensor([[[0.9, 0.6], [0.1, 0.4]]], dtype=torch.float64)).float()
P_TARGET = torch.tensor([[1, 0]])
# Per class (smooth 0): fg TP 0.1, FN 0.9, FP 0.4; bg TP 0.6, FN 0.4, FP 0.9.

# Four pixels, logits 0 except pixel 2 (confidently background, labelled 1).
Z_LOGITS = torch.zeros(1, 2, 4)
Z_LOGITS[0, 0, 2] = 2.0
Z_TARGET = torch.tensor([[0, 0, 1, 1]])
CE_PIX2 = math.log(1.0 + math.e**2)  # -log(1 / (1 + e^2))

# One pixel, three classes, p = (0.2, 0.5, 0.3), labelled 1: exercises Eq. (17)'s beta (for two
# classes the one-vs-rest terms coincide, so beta would have no effect at gamma = 0).
L3 = torch.log(torch.tensor([0.2, 0.5, 0.3])).view(1, 3, 1)
T3 = torch.tensor([[1]])
CE_BETA = 0.3 * -math.log(0.8) + 0.7 * -math.log(0.5) + 0.3 * -math.log(0.7)

HAND_CASES = [
    # name, params, logits, target, expected (written out from the paper's equations)
    ("ce", {}, torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1, 0]]), LN2),
    ("topk_ce", {"k": 1}, Z_LOGITS, Z_TARGET, CE_PIX2),
    ("topk_ce", {"k": 0.5}, Z_LOGITS, Z_TARGET, (CE_PIX2 + LN2) / 2),
    ("topk_ce", {"k": 1.0}, Z_LOGITS, Z_TARGET, (3 * LN2 + CE_PIX2) / 4),
    ("focal", {}, torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1, 0]]), 0.25 * 0.5**2 * LN2),
    ("focal", {"alpha": [0.2, 0.8], "gamma": 1.0}, P_LOGITS, P_TARGET,
     (0.8 * 0.9 * -math.log(0.1) + 0.2 * 0.4 * -math.log(0.6)) / 2),
    ("focal", {"alpha": 1.0, "gamma": 0.0, "beta": 0.7}, L3, T3, CE_BETA),
    ("focal", {"alpha": 1.0, "gamma": 2.0, "beta": 0.7}, L3, T3,
     0.3 * 0.2**2 * -math.log(0.8) + 0.7 * 0.5**2 * -math.log(0.5) + 0.3 * 0.3**2 * -math.log(0.7)),
    ("combo", {"alpha": 0.5, "beta": 0.7, "smooth": 0.0}, L3, T3, 0.5 * CE_BETA - 0.5 * (0.5 / (0.5 + 0.25))),
    ("tversky", {"smooth": 0.0, "include_background": False}, P_LOGITS, P_TARGET, 1 - 0.1 / (0.1 + 0.7 * 0.9 + 0.3 * 0.4)),
    ("tversky", {"smooth": 0.0}, P_LOGITS, P_TARGET,
     (1 - 0.1 / (0.1 + 0.7 * 0.9 + 0.3 * 0.4)) + (1 - 0.6 / (0.6 + 0.7 * 0.4 + 0.3 * 0.9))),
    ("tversky", {"smooth": 0.0, "class_reduction": "mean"}, P_LOGITS, P_TARGET,
     ((1 - 0.1 / 0.85) + (1 - 0.6 / 1.15)) / 2),
    ("tversky", {"smooth": 1.0, "include_background": False}, P_LOGITS, P_TARGET, 1 - 1.1 / 1.85),
    ("dice", {"smooth": 0.0, "include_background": False}, P_LOGITS, P_TARGET, 1 - 2 * 0.1 / (2 * 0.1 + 0.9 + 0.4)),
    ("focal_tversky", {"smooth": 0.0, "include_background": False}, P_LOGITS, P_TARGET, (0.75 / 0.85) ** 0.75),
    ("focal_tversky", {"gamma": 0.5, "smooth": 0.0, "include_background": False}, P_LOGITS, P_TARGET, (0.75 / 0.85) ** 2),
    ("cosine_tversky", {"smooth": 0.0, "include_background": False}, P_LOGITS, P_TARGET, math.cos(math.pi / 2 * 0.1 / 0.85)),
    ("cosine_tversky", {"delta": 0.5, "gamma": 2.0, "smooth": 0.0, "include_background": False},
     torch.zeros(1, 2, 2), P_TARGET, math.cos(math.pi / 4) ** 2),
    ("combo", {"smooth": 0.0}, torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1, 0]]), LN2 - (0.5 + 0.5)),
    ("combo", {"alpha": 0.3, "smooth": 0.0}, torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1, 0]]), 0.3 * LN2 - 0.7 * 1.0),
    ("mixed_focal", {"smooth": 0.0, "include_background": False}, P_LOGITS, P_TARGET,
     0.5 * (0.25 * 0.9**2 * -math.log(0.1) / 2) + 0.5 * (0.75 / 0.85) ** 0.75),
    # Unified Focal, delta 0.6, gamma 0.5: focal pixel 0 = 0.6 * -log 0.1, pixel 1 = 0.4 * 0.4**0.5 * -log 0.6;
    # TI_bg = 0.6 / (0.6 + 0.6*0.4 + 0.4*0.9) = 0.5, TI_fg = 0.1 / (0.1 + 0.6*0.9 + 0.4*0.4) = 0.125.
    ("unified_focal", {"smooth": 0.0}, P_LOGITS, P_TARGET,
     0.5 * (0.6 * -math.log(0.1) + 0.4 * 0.4**0.5 * -math.log(0.6)) / 2 + 0.5 * ((1 - 0.5) + 0.875**0.5)),
    ("unified_focal", {"variant": "symmetric", "smooth": 0.0}, P_LOGITS, P_TARGET,
     0.5 * (0.6 * 0.9**0.5 * -math.log(0.1) + 0.4 * 0.4**0.5 * -math.log(0.6)) / 2 + 0.5 * (0.5**0.5 + 0.875**0.5)),
    ("unified_focal", {"lambda_": 1.0, "delta": 0.5, "gamma": 0.0}, P_LOGITS, P_TARGET,
     0.5 * (-math.log(0.1) - math.log(0.6)) / 2),
]


@pytest.mark.parametrize(("name", "params", "logits", "target", "expected"), HAND_CASES)
def test_hand_computed_values(name, params, logits, target, expected):
    value = get_loss(name, **params)(logits, target)
    assert value.dtype == torch.float32 and value.ndim == 0
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_delta_weights_false_negatives():
    """delta = 0.7 costs a missed foreground pixel (FN) more than a spurious one (FP) (Sect. II-D)."""
    target = torch.tensor([[1, 1, 0, 0]])
    miss = torch.log(torch.tensor([[[0.5, 0.5, 1 - 1e-6, 1 - 1e-6], [0.5, 0.5, 1e-6, 1e-6]]]))  # FN 1, FP ~0
    spurious = torch.log(torch.tensor([[[1e-6, 1e-6, 0.5, 0.5], [1 - 1e-6, 1 - 1e-6, 0.5, 0.5]]]))  # FN ~0, FP 1
    loss = get_loss("tversky", smooth=0.0, include_background=False)
    assert float(loss(miss, target)) == pytest.approx(1 - 1 / (1 + 0.7 * 1), rel=1e-4)
    assert float(loss(spurious, target)) == pytest.approx(1 - 2 / (2 + 0.3 * 1), rel=1e-4)
    assert float(loss(miss, target)) > float(loss(spurious, target))


def _random_case(seed: int, shape=(2, 3, 5, 6), empty_class: int | None = None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * 2
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if empty_class is not None:
        target[target == empty_class] = 0
    return logits, target


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 2, 3, 4, 5)])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_identities_from_the_paper(shape, include_background, reduction):
    logits, target = _random_case(1, shape)
    common = {"include_background": include_background, "class_reduction": reduction, "smooth": 1e-5}

    tversky_half = get_loss("tversky", delta=0.5, **common)(logits, target)
    dice = get_loss("dice", **common)(logits, target)
    assert torch.allclose(tversky_half, dice, atol=1e-6)  # Eq. (9) with delta 1/2 is Eq. (10)

    tversky = get_loss("tversky", delta=0.7, **common)(logits, target)
    focal_tversky_1 = get_loss("focal_tversky", gamma=1.0, **common)(logits, target)
    assert torch.allclose(focal_tversky_1, tversky, atol=1e-6)  # Eq. (14) with gamma = 1

    n_kept = shape[1] - (0 if include_background else 1)
    combo = get_loss("combo", **common)(logits, target)
    ce = get_loss("ce", include_background=include_background)(logits, target)
    dsc = 1 - dice if reduction == "mean" else n_kept - dice
    assert torch.allclose(combo, ce - dsc, atol=1e-5)  # Eq. (18)

    for lam in (0.0, 0.3, 0.5, 1.0):
        mixed = get_loss("mixed_focal", lambda_=lam, **common)(logits, target)
        focal = get_loss("focal", include_background=include_background)(logits, target)
        ft = get_loss("focal_tversky", **common)(logits, target)
        assert torch.allclose(mixed, lam * focal + (1 - lam) * ft, atol=1e-6)  # Eq. (23)


def test_focal_gamma0_alpha1_is_cross_entropy():
    logits, target = _random_case(2)
    reference = F.cross_entropy(logits, target)
    assert torch.allclose(get_loss("focal", gamma=0.0, alpha=1.0)(logits, target), reference, atol=1e-6)
    assert torch.allclose(get_loss("ce")(logits, target), reference, atol=1e-6)
    assert torch.allclose(get_loss("topk_ce", k=1.0)(logits, target), reference, atol=1e-6)
    assert torch.allclose(get_loss("topk_ce", k=30)(logits, target), reference, atol=1e-6)  # 5 x 6 pixels


def test_topk_keeps_the_k_largest_per_sample():
    logits, target = _random_case(3)
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten(1)  # (2, 30)
    expected = per_pixel.sort(dim=1, descending=True).values[:, :3].mean()
    assert torch.allclose(get_loss("topk_ce", k=0.1)(logits, target), expected, atol=1e-6)  # round(0.1 * 30) = 3
    assert torch.allclose(get_loss("topk_ce", k=3)(logits, target), expected, atol=1e-6)


def test_combo_alpha_half_is_half_of_eq18():
    logits, target = _random_case(4)
    assert torch.allclose(
        get_loss("combo", alpha=0.5)(logits, target), 0.5 * get_loss("combo")(logits, target), atol=1e-6
    )


def test_unified_without_focusing_is_ce_plus_dice():
    """gamma = 0, delta = 0.5: L = lambda * CE / 2 + (1 - lambda) * Dice loss, both variants."""
    logits, target = _random_case(5)
    ce = get_loss("ce")(logits, target)
    dice = get_loss("dice", smooth=1e-6)(logits, target)
    for variant in ("asymmetric", "symmetric"):
        for lam in (0.0, 0.25, 1.0):
            value = get_loss("unified_focal", variant=variant, lambda_=lam, delta=0.5, gamma=0.0)(logits, target)
            assert torch.allclose(value, lam * ce / 2 + (1 - lam) * dice, atol=1e-5)


def test_unified_components_relate_to_monai_as_documented():
    """MONAI's binary asymmetric components average over the 2 channels and take probabilities:
    its focal term is half ours, its Focal Tversky term equals ours with class_reduction='mean'."""
    from monai.losses.unified_focal_loss import AsymmetricFocalLoss, AsymmetricFocalTverskyLoss

    logits, target = _random_case(6, shape=(2, 2, 6, 7))
    probs = torch.softmax(logits, 1)
    onehot = target_to_probabilities(target, 2)
    ours = UnifiedFocalLoss(delta=0.6, gamma=0.5, smooth=1e-7, class_reduction="mean")
    log_probs = torch.log_softmax(logits, 1)
    monai_focal = AsymmetricFocalLoss(delta=0.6, gamma=0.5)(probs, onehot)
    monai_ft = AsymmetricFocalTverskyLoss(delta=0.6, gamma=0.5)(probs, onehot)
    assert torch.allclose(ours.focal_term(log_probs, probs, onehot), 2 * monai_focal, atol=1e-5)
    assert torch.allclose(ours.tversky_term(probs, onehot), monai_ft, atol=1e-5)


@pytest.mark.parametrize("include_background", [True, False])
def test_agrees_with_monai_dice_and_tversky(include_background):
    from monai.losses import DiceLoss, TverskyLoss

    logits, target = _random_case(7, shape=(3, 4, 6, 5, 4))
    monai_target = target[:, None]
    dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=include_background, smooth_nr=2e-5, smooth_dr=2e-5)
    ours = get_loss("dice", smooth=1e-5, class_reduction="mean", include_background=include_background)
    assert torch.allclose(ours(logits, target), dice(logits, monai_target), atol=1e-6)

    tversky = TverskyLoss(
        softmax=True, to_onehot_y=True, include_background=include_background, alpha=0.3, beta=0.7, smooth_nr=1e-5, smooth_dr=1e-5
    )
    ours = get_loss("tversky", delta=0.7, smooth=1e-5, class_reduction="mean", include_background=include_background)
    assert torch.allclose(ours(logits, target), tversky(logits, monai_target), atol=1e-6)

    # soft targets: MONAI's default (soft_label=False) uses the same sums
    soft = torch.softmax(torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)), 1)
    dice_soft = DiceLoss(softmax=True, include_background=include_background, smooth_nr=2e-5, smooth_dr=2e-5)
    ours = get_loss("dice", smooth=1e-5, class_reduction="mean", include_background=include_background)
    assert torch.allclose(ours(logits, soft), dice_soft(logits, soft), atol=1e-6)


def test_agrees_with_monai_focal():
    from monai.losses import FocalLoss

    logits, target = _random_case(8, shape=(2, 3, 7, 5))
    batch = logits.shape[0]
    # MONAI 'sum' = sum over batch and classes of spatial means; ours = mean over batch of class sums
    monai = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0, alpha=[0.25] * 3, reduction="sum")
    assert torch.allclose(get_loss("focal")(logits, target), monai(logits, target[:, None]) / batch, atol=1e-6)
    monai = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=1.5, alpha=None, reduction="mean")
    ours = get_loss("focal", gamma=1.5, alpha=1.0)
    assert torch.allclose(ours(logits, target), monai(logits, target[:, None]) * 3, atol=1e-6)


def test_target_forms_give_the_same_loss():
    logits, target = _random_case(9)
    forms = [target, target[:, None], target.float(), target.to(torch.uint8), target_to_probabilities(target, 3)]
    for name in LossName:
        loss = get_loss(name)
        values = [float(loss(logits, t)) for t in forms]
        assert values == pytest.approx([values[0]] * len(values), abs=1e-6), name


@pytest.mark.parametrize("name", ["ce", "focal", "combo", "mixed_focal", "unified_focal"])
def test_soft_target_follows_the_equations(name):
    """A mixed (soft) target enters Eqs. (2), (7), (9) as y_{i,c} / g_{i,c}; per-pixel terms are
    linear in the target, so L(lam y1 + (1 - lam) y2) is checked against the explicit formula."""
    logits, t1 = _random_case(10)
    _, t2 = _random_case(11)
    lam = 0.3
    y1, y2 = target_to_probabilities(t1, 3), target_to_probabilities(t2, 3)
    soft = lam * y1 + (1 - lam) * y2
    loss = get_loss(name, smooth=0.0) if name not in ("ce", "focal") else get_loss(name)
    value = loss(logits, soft)

    logp = torch.log_softmax(logits, 1)
    p = logp.exp()
    ce = -(soft * logp).sum(1).mean()
    focal = -(0.25 * (1 - p) ** 2 * soft * logp).sum(1).mean()
    tp, fn, fp = [(a * b).sum((2, 3)) for a, b in ((p, soft), (1 - p, soft), (p, 1 - soft))]
    dsc = tp / (tp + 0.5 * fn + 0.5 * fp)
    ti = tp / (tp + 0.7 * fn + 0.3 * fp)
    if name == "ce":
        expected = ce
        assert torch.allclose(value, lam * loss(logits, t1) + (1 - lam) * loss(logits, t2), atol=1e-6)
    elif name == "focal":
        expected = focal
        assert torch.allclose(value, lam * loss(logits, t1) + (1 - lam) * loss(logits, t2), atol=1e-6)
    elif name == "combo":
        expected = ce - dsc.sum(1).mean()
    elif name == "mixed_focal":
        expected = 0.5 * focal + 0.5 * ((1 - ti) ** 0.75).sum(1).mean()
    else:
        ti6 = tp / (tp + 0.6 * fn + 0.4 * fp)
        fl = (-(0.4 * (1 - p[:, :1]) ** 0.5 * soft[:, :1] * logp[:, :1]).sum(1) - (0.6 * soft[:, 1:] * logp[:, 1:]).sum(1)).mean()
        ftl = ((1 - ti6[:, 0]) + ((1 - ti6[:, 1:]) ** 0.5).sum(1)).mean()
        expected = 0.5 * fl + 0.5 * ftl
    assert torch.allclose(value, expected, atol=1e-5)


@pytest.mark.parametrize("name", list(LossName))
@pytest.mark.parametrize("saturated", [False, True])
def test_gradients_finite_with_an_empty_class(name, saturated):
    """Class 2 is absent from the target; with saturated logits the prediction is exactly one-hot
    in float32 (1 - p = 0, 1 - TI = 0), where fractional powers have infinite derivatives."""
    logits, target = _random_case(12, empty_class=2)
    if saturated:
        logits = 1000.0 * target_to_probabilities(target, 3)
    logits = logits.clone().requires_grad_(True)
    variants = [{"variant": "asymmetric"}, {"variant": "symmetric"}] if name == "unified_focal" else [{}]
    for params in variants:
        logits.grad = None
        value = get_loss(name, **params)(logits, target)
        value.backward()
        assert torch.isfinite(value), (name, params)
        assert torch.isfinite(logits.grad).all(), (name, params)


def test_region_loss_of_a_perfect_prediction_is_zero():
    logits, target = _random_case(13, empty_class=2)
    perfect = 1000.0 * target_to_probabilities(target, 3)
    for name in ("dice", "tversky", "focal_tversky", "cosine_tversky"):
        assert float(get_loss(name)(perfect, target)) == pytest.approx(0.0, abs=1e-5), name


def test_gradient_descends():
    logits, target = _random_case(14)
    logits.requires_grad_(True)
    loss = get_loss("mixed_focal")
    before = loss(logits, target)
    before.backward()
    with torch.no_grad():
        after = loss(logits - 0.5 * logits.grad, target)
    assert after.item() < before.item()


def test_paper_defaults():
    assert loss_parameters("focal")["alpha"] == 0.25 and loss_parameters("focal")["gamma"] == 2.0
    assert loss_parameters("focal_tversky")["gamma"] == pytest.approx(4 / 3)
    assert loss_parameters("cosine_tversky")["gamma"] == 1.0
    assert loss_parameters("tversky")["delta"] == 0.7
    mixed = loss_parameters("mixed_focal")
    assert (mixed["lambda_"], mixed["alpha"], mixed["gamma_focal"], mixed["delta"]) == (0.5, 0.25, 2.0, 0.7)
    assert mixed["gamma_tversky"] == pytest.approx(4 / 3)
    unified = loss_parameters("unified_focal")
    assert (unified["variant"], unified["lambda_"], unified["delta"], unified["gamma"]) == ("asymmetric", 0.5, 0.6, 0.5)
    assert loss_parameters("topk_ce")["k"] == 0.05
    assert loss_parameters("dice")["class_reduction"] == ClassReduction.SUM


def test_get_loss_names_and_lambda_spelling():
    for name in LossName:
        assert isinstance(get_loss(name), torch.nn.Module)
    assert get_loss("Mixed_Focal", **{"lambda": 0.2}).lambda_ == 0.2
    assert get_loss("unified_focal", variant="Symmetric").variant == "symmetric"


def test_does_not_modify_inputs():
    logits, target = _random_case(15)
    soft = target_to_probabilities(target, 3)
    logits_copy, soft_copy = logits.clone(), soft.clone()
    for name in LossName:
        get_loss(name)(logits, soft)
    assert torch.equal(logits, logits_copy) and torch.equal(soft, soft_copy)


# ------------------------------------------------------------------------------------------
# invalid input
# ------------------------------------------------------------------------------------------


def test_invalid_loss_name_suggests():
    with pytest.raises(InvalidInputError, match="did you mean 'focal_tversky'"):
        get_loss("focal_tverski")


def test_invalid_parameter_name():
    with pytest.raises(InvalidInputError, match="has no parameter delta"):
        get_loss("dice", delta=0.3)
    with pytest.raises(InvalidInputError, match="did you mean 'gamma'"):
        get_loss("focal", gama=2)
    with pytest.raises(InvalidInputError, match="lambda or lambda_"):
        get_loss("mixed_focal", **{"lambda": 0.2, "lambda_": 0.3})


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("focal", {"alpha": -0.1}, "alpha"),
        ("focal", {"alpha": [0.5, -1]}, r"alpha\[1\]"),
        ("focal", {"alpha": "x"}, "alpha"),
        ("focal", {"gamma": -1}, "gamma"),
        ("focal", {"beta": 1.5}, "beta"),
        ("tversky", {"delta": 1.2}, "delta"),
        ("tversky", {"smooth": -1e-6}, "smooth"),
        ("tversky", {"class_reduction": "avg"}, "class_reduction"),
        ("dice", {"include_background": "no"}, "include_background"),
        ("focal_tversky", {"gamma": 0.0}, "gamma"),
        ("cosine_tversky", {"gamma": float("nan")}, "gamma"),
        ("topk_ce", {"k": 0}, "k="),
        ("topk_ce", {"k": 1.5}, "k="),
        ("topk_ce", {"k": True}, "k="),
        ("combo", {"alpha": 2.0}, "alpha"),
        ("mixed_focal", {"lambda_": -0.5}, "lambda_"),
        ("unified_focal", {"variant": "asymetric"}, "did you mean 'asymmetric'"),
        ("unified_focal", {"gamma": 1.5}, "gamma"),
        ("unified_focal", {"delta": -0.1}, "delta"),
    ],
)
def test_invalid_parameter_values(name, params, match):
    with pytest.raises(InvalidInputError, match=match):
        get_loss(name, **params)


def test_invalid_targets():
    logits, target = _random_case(16)
    loss = get_loss("dice")
    with pytest.raises(InvalidInputError, match=r"outside \[0, 3\)"):
        loss(logits, target + 1)
    with pytest.raises(InvalidInputError, match="expected class indices"):
        loss(logits, target[:, :4])
    with pytest.raises(InvalidInputError, match="not whole numbers"):
        loss(logits, target.float() + 0.5)
    with pytest.raises(InvalidInputError, match="summing to 1"):
        loss(logits, torch.full_like(logits, 0.5))
    with pytest.raises(InvalidInputError, match="summing to 1"):
        loss(logits, torch.full_like(logits, float("nan")))


def test_invalid_logits():
    logits, target = _random_case(17)
    loss = get_loss("ce")
    with pytest.raises(InvalidInputError, match="C >= 2"):
        loss(logits[:, :1], target.clamp(max=0))
    with pytest.raises(InvalidInputError, match="floating-point"):
        loss(logits.long(), target)
    with pytest.raises(InvalidInputError, match="spatial"):
        loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_invalid_call_time_parameters():
    logits, target = _random_case(18)
    with pytest.raises(InvalidInputError, match="alpha has 2 class weights"):
        get_loss("focal", alpha=[0.5, 0.5])(logits, target)
    with pytest.raises(InvalidInputError, match="k=31 pixels exceeds the 30"):
        get_loss("topk_ce", k=31)(logits, target)


def test_invalid_num_classes():
    with pytest.raises(InvalidInputError, match="num_classes"):
        target_to_probabilities(torch.zeros(1, 4, dtype=torch.long), 1)


@pytest.mark.parametrize("name", list(LossName))
def test_minimising_recovers_the_segmentation(name):
    """Adam on free logits: every loss is minimised by the true label map (rare class 2 included)."""
    g = torch.Generator().manual_seed(19)
    target = torch.randint(0, 2, (2, 8, 8), generator=g)
    target[0, 2:4, 5:7] = 2  # a rare class: 4 of 128 pixels
    logits = (0.01 * torch.randn(2, 3, 8, 8, generator=g)).requires_grad_(True)
    loss = get_loss(name, **({"k": 0.25} if name == "topk_ce" else {}))
    optimiser = torch.optim.Adam([logits], lr=0.1)
    first = None
    for _ in range(40):
        optimiser.zero_grad()
        value = loss(logits, target)
        first = value.item() if first is None else first
        value.backward()
        optimiser.step()
    assert value.item() < first
    assert torch.equal(logits.argmax(1), target)


def test_half_precision_logits_are_computed_in_float32():
    logits, target = _random_case(20)
    for name in ("dice", "focal", "unified_focal"):
        loss = get_loss(name)
        low = loss(logits.bfloat16(), target)
        assert low.dtype == torch.float32
        assert torch.allclose(low, loss(logits.bfloat16().float(), target), atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert loss(logits, target).dtype == torch.float32
