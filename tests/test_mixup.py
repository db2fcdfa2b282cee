"""Tests of napari_medseg.training.mixup (Isaksson et al. 2022, Sect. 2.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from napari_medseg.errors import InvalidInputError
from napari_medseg.training import Mixup, get_loss
from napari_medseg.training.mixup import mixup
from napari_medseg.training.losses import target_to_probabilities


def _batch(batch=4, classes=4, shape=(3, 5)):
    """Sample b is the constant image b + 1 with every pixel labelled class b % classes."""
    images = torch.stack([torch.full((1, *shape), float(b + 1)) for b in range(batch)])
    labels = torch.stack([torch.full(shape, b % classes, dtype=torch.long) for b in range(batch)])
    return images, labels


def test_images_and_labels_mixed_with_the_same_lambda():
    images, labels = _batch()
    out = mixup(images, labels, num_classes=4, generator=3)
    lam = float(out.lam[0])
    assert 0.0 < lam < 1.0
    assert torch.all(out.lam == out.lam[0])  # one lambda per batch by default
    onehot = target_to_probabilities(labels, 4)
    for b in range(4):
        j = int(out.index[b])
        expected_image = lam * (b + 1) + (1 - lam) * (j + 1)
        assert torch.allclose(out.images[b], torch.full_like(out.images[b], expected_image), atol=1e-6)
        assert torch.allclose(out.targets[b], lam * onehot[b] + (1 - lam) * onehot[j], atol=1e-6)
    assert sorted(out.index.tolist()) == [0, 1, 2, 3]  # a permutation of the batch
    assert torch.allclose(out.targets.sum(1), torch.ones(4, 3, 5))
    assert out.targets.dtype == torch.float32


def test_alpha_zero_is_off():
    images, labels = _batch()
    out = mixup(images, labels, alpha=0, num_classes=4, generator=1)
    assert out.images is images
    assert torch.equal(out.targets, target_to_probabilities(labels, 4))
    assert torch.equal(out.lam, torch.ones(4, dtype=torch.float64))
    assert torch.equal(out.index, torch.arange(4))
    assert not Mixup(0.0, num_classes=4).enabled


def test_lambda_is_beta_distributed():
    """2000 draws of Beta(0.5, 0.5): Kolmogorov-Smirnov against scipy's Beta (fixed seed)."""
    images, labels = _batch(batch=2000, classes=2, shape=(1, 1))
    out = mixup(images, labels, alpha=0.5, num_classes=2, generator=11, lambda_per_sample=True)
    lam = out.lam.numpy()
    assert stats.kstest(lam, stats.beta(0.5, 0.5).cdf).pvalue > 0.01
    assert stats.kstest(lam, stats.beta(2.0, 2.0).cdf).pvalue < 1e-6  # the test can tell shapes apart
    assert np.var(lam) == pytest.approx(1 / (4 * (2 * 0.5 + 1)), rel=0.1)  # var of Beta(a, a) = 1 / (4 (2a + 1))


def test_lambda_per_sample_pairs():
    images, labels = _batch(batch=6, classes=6)
    out = mixup(images, labels, num_classes=6, generator=5, lambda_per_sample=True)
    assert len(set(out.lam.tolist())) == 6
    onehot = target_to_probabilities(labels, 6)
    for b in range(6):
        lam, j = float(out.lam[b]), int(out.index[b])
        assert float(out.images[b, 0, 0, 0]) == pytest.approx(lam * (b + 1) + (1 - lam) * (j + 1), rel=1e-6)
        assert torch.allclose(out.targets[b], lam * onehot[b] + (1 - lam) * onehot[j], atol=1e-6)


def test_reproducible_with_seed_generator_and_global_seed():
    images, labels = _batch()
    a = mixup(images, labels, num_classes=4, generator=42)
    b = mixup(images, labels, num_classes=4, generator=torch.Generator().manual_seed(42))
    c = mixup(images, labels, num_classes=4, generator=43)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.lam, c.lam)
    torch.manual_seed(7)
    d = mixup(images, labels, num_classes=4)
    torch.manual_seed(7)
    e = mixup(images, labels, num_classes=4)
    assert torch.equal(d.images, e.images) and torch.equal(d.index, e.index)


def test_mixup_object_resumes_its_sequence():
    images, labels = _batch()
    mix = Mixup(0.5, num_classes=4, seed=9)
    mix(images, labels)
    state = mix.state_dict()
    expected = [mix(images, labels).lam[0].item() for _ in range(3)]
    resumed = Mixup(0.5, num_classes=4, seed=123)
    resumed.load_state_dict(state)
    assert [resumed(images, labels).lam[0].item() for _ in range(3)] == expected


def test_soft_targets_inferred_and_inputs_unchanged():
    images, labels = _batch()
    soft = target_to_probabilities(labels, 4)
    images_copy, soft_copy = images.clone(), soft.clone()
    out = mixup(images, soft, generator=0)  # num_classes from the one-hot target
    assert out.targets.shape == (4, 4, 3, 5)
    assert torch.equal(images, images_copy) and torch.equal(soft, soft_copy)


@pytest.mark.parametrize("name", ["ce", "topk_ce", "focal", "dice", "mixed_focal"])
def test_losses_on_mixed_targets(name):
    """The losses take the soft target; for per-pixel losses linear in the target the result is
    lam * L(y_i) + (1 - lam) * L(y_j) exactly (Eq. 2 with y = lam y_i + (1 - lam) y_j)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 1, 6, 6, generator=g)
    labels = torch.randint(0, 3, (4, 6, 6), generator=g)
    logits = torch.randn(4, 3, 6, 6, generator=g)
    out = mixup(images, labels, num_classes=3, generator=2)
    lam, index = float(out.lam[0]), out.index
    loss = get_loss(name)
    value = loss(logits, out.targets)
    assert torch.isfinite(value)
    if name in ("ce", "focal"):
        expected = lam * loss(logits, labels) + (1 - lam) * loss(logits, labels[index])
        assert torch.allclose(value, expected, atol=1e-6)
    if name == "ce":
        assert torch.allclose(value, -(out.targets * torch.log_softmax(logits, 1)).sum(1).mean(), atol=1e-6)


def test_invalid_alpha():
    images, labels = _batch()
    for alpha in (-0.1, float("nan"), True, "0.5"):
        with pytest.raises(InvalidInputError, match="alpha"):
            mixup(images, labels, alpha=alpha, num_classes=4)
    with pytest.raises(InvalidInputError, match="alpha"):
        Mixup(-1.0)


def test_invalid_inputs():
    images, labels = _batch()
    with pytest.raises(InvalidInputError, match="num_classes is required"):
        mixup(images, labels)
    with pytest.raises(InvalidInputError, match="images must be a floating"):
        mixup(images.long(), labels, num_classes=4)
    with pytest.raises(InvalidInputError, match="expected class indices"):
        mixup(images, labels[:, :2], num_classes=4)
    with pytest.raises(InvalidInputError, match=r"outside \[0, 2\)"):
        mixup(images, labels, num_classes=2)
    with pytest.raises(InvalidInputError, match="targets must be a torch.Tensor"):
        mixup(images, labels.numpy(), num_classes=4)
    with pytest.raises(InvalidInputError, match="generator"):
        mixup(images, labels, num_classes=4, generator="seed")
    with pytest.raises(InvalidInputError, match="lambda_per_sample"):
        mixup(images, labels, num_classes=4, lambda_per_sample=1)
    with pytest.raises(InvalidInputError, match="seed"):
        Mixup(0.5, seed=1.5)
    with pytest.raises(InvalidInputError, match="generator"):
        Mixup(0.5, seed=1).load_state_dict({})
