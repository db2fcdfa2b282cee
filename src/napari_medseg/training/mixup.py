"""Mixup for segmentation (Isaksson et al. 2022, Sect. 2.1; Zhang et al. 2018).

Each sample ``x_i`` of a batch is paired with a sample ``x_j`` of the same batch (a random
permutation ``j = perm(i)``) and replaced by ``lambda * x_i + (1 - lambda) * x_j`` with
``lambda ~ Beta(alpha, alpha)``; its one-hot label map is mixed with the *same* ``lambda``, so the
target becomes soft (per-pixel class probabilities). The paper found ``alpha = 0.5`` best
(Sect. 3); ``alpha = 0`` switches mixup off. Every loss in :mod:`napari_medseg.training.losses`
accepts the soft targets.

References
----------
.. [1] L. J. Isaksson et al., "Mixup (sample pairing) can improve the performance of deep
   segmentation networks", JAISCR 12(1) (2022) (``shared/papers/mixup-segmentation-isaksson2022.txt``).
.. [2] H. Zhang, M. Cisse, Y. N. Dauphin, D. Lopez-Paz, "mixup: Beyond empirical risk
   minimization", ICLR 2018.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from napari_medseg.errors import InvalidInputError
from napari_medseg.training.losses import target_to_probabilities

__all__ = ["MixupBatch", "mixup", "Mixup", "DEFAULT_ALPHA"]

#: The paper's best Beta shape parameter (Isaksson et al. 2022, Sect. 3 and Fig. 4).
DEFAULT_ALPHA = 0.5


class MixupBatch(NamedTuple):
    """What :func:`mixup` returns.

    Attributes
    ----------
    images : torch.Tensor
        ``(B, C_in, *spatial)``: ``lam[b] * images[b] + (1 - lam[b]) * images[index[b]]``.
    targets : torch.Tensor
        Float32 ``(B, C, *spatial)`` soft labels mixed with the same ``lam``.
    lam : torch.Tensor
        Float64 ``(B,)``: the ``lambda`` of each sample (all equal unless ``lambda_per_sample``).
    index : torch.Tensor
        Int64 ``(B,)``: the partner of each sample.
    """

    images: torch.Tensor
    targets: torch.Tensor
    lam: torch.Tensor
    index: torch.Tensor


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise InvalidInputError(f"alpha={alpha!r} must be a finite number >= 0 (0 switches mixup off)")
    return float(alpha)


def _torch_generator(generator) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        g = torch.Generator()
        g.manual_seed(int(generator))
        return g
    raise InvalidInputError(f"generator={generator!r} must be a torch.Generator, an integer seed or None")


def mixup(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    num_classes: int | None = None,
    generator: torch.Generator | int | None = None,
    lambda_per_sample: bool = False,
) -> MixupBatch:
    """Mix a batch with a permutation of itself, images and one-hot labels with the same lambda.

    Parameters
    ----------
    images : torch.Tensor
        Floating ``(B, C_in, *spatial)`` batch. Not modified.
    targets : torch.Tensor
        Class indices ``(B, *spatial)`` or ``(B, 1, *spatial)``, or one-hot / soft labels
        ``(B, C, *spatial)`` (see :func:`~napari_medseg.training.losses.target_to_probabilities`).
        Not modified.
    alpha : float, keyword-only
        Shape parameter of the symmetric ``Beta(alpha, alpha)`` that ``lambda`` is drawn from,
        ``>= 0``; ``0`` switches mixup off (images returned as given, targets as one-hot,
        ``lam = 1``, ``index = arange(B)``). Default: 0.5 (the paper's best value).
    num_classes : int, keyword-only
        Number of classes ``C`` (>= 2); required for index targets, inferred from one-hot / soft
        targets. Default: None.
    generator : torch.Generator or int or None, keyword-only
        Randomness for ``lambda`` and the permutation: a CPU :class:`torch.Generator` (advanced by
        the call), an integer seed, or None for torch's global generator (so ``torch.manual_seed``
        makes runs reproducible). ``lambda`` is drawn with numpy's Beta sampler seeded from it.
        Default: None.
    lambda_per_sample : bool, keyword-only
        If True, every pair gets its own ``lambda``; otherwise one ``lambda`` per batch, as in Zhang
        et al.'s implementation. Default: False.

    Returns
    -------
    MixupBatch
        ``(images, targets, lam, index)``; ``targets`` are float32 soft labels on the images' device.

    Raises
    ------
    InvalidInputError
        If ``alpha < 0``, the images are not a floating ``(B, C_in, *spatial)`` tensor, the targets do
        not match them, ``num_classes`` is missing for index targets, or ``generator`` is of the
        wrong type.

    Examples
    --------
    >>> import torch
    >>> images = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])  # (B=2, C_in=1, 2 pixels)
    >>> batch = mixup(images, torch.tensor([[0, 0], [1, 1]]), num_classes=2, generator=0)
    >>> lam = float(batch.lam[0])
    >>> bool(torch.allclose(batch.targets[:, 1].sum(), torch.tensor(2.0)))  # class mass is kept
    True
    """
    alpha = _check_alpha(alpha)
    if not isinstance(lambda_per_sample, bool):
        raise InvalidInputError(f"lambda_per_sample={lambda_per_sample!r} must be True or False")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim < 3:
        raise InvalidInputError("images must be a floating-point torch.Tensor of shape (B, C_in, *spatial)")
    if not isinstance(targets, torch.Tensor):
        raise InvalidInputError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    batch = images.shape[0]
    if num_classes is None:
        if targets.ndim == images.ndim and targets.shape[1] >= 2 and targets.is_floating_point():
            num_classes = int(targets.shape[1])
        else:
            raise InvalidInputError("num_classes is required when targets are class indices")
    like = torch.empty((batch, num_classes, *images.shape[2:]), device="meta")
    soft = target_to_probabilities(targets, num_classes, like=like).to(images.device)
    generator = _torch_generator(generator)

    if alpha == 0.0 or batch == 0:
        return MixupBatch(
            images, soft, torch.ones(batch, dtype=torch.float64), torch.arange(batch, dtype=torch.int64)
        )
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    draws = np.random.default_rng(seed).beta(alpha, alpha, size=batch if lambda_per_sample else 1)
    lam = torch.as_tensor(np.broadcast_to(draws, (batch,)).copy(), dtype=torch.float64)
    index = torch.randperm(batch, generator=generator)

    def mix(x: torch.Tensor) -> torch.Tensor:
        weight = lam.to(device=x.device, dtype=x.dtype).view(batch, *([1] * (x.ndim - 1)))
        partner = x[index.to(x.device)]
        return weight * x + (1.0 - weight) * partner

    return MixupBatch(mix(images), mix(soft), lam, index)


class Mixup:
    """Mixup with its own seeded generator, for a training loop; see :func:`mixup`.

    Parameters
    ----------
    alpha : float
        ``Beta(alpha, alpha)`` shape parameter ``>= 0``; 0 switches mixup off. Default: 0.5.
    num_classes : int, keyword-only
        Number of classes for index targets. Default: None (inferred from soft targets).
    seed : int or None, keyword-only
        Seed of the generator; None draws one from torch's global generator. Default: None.
    lambda_per_sample : bool, keyword-only
        One ``lambda`` per pair instead of per batch. Default: False.

    Raises
    ------
    InvalidInputError
        If ``alpha < 0`` or ``seed`` is not an integer.

    Examples
    --------
    >>> import torch
    >>> mix = Mixup(0.5, num_classes=2, seed=1)
    >>> out = mix(torch.rand(4, 1, 8, 8), torch.randint(0, 2, (4, 8, 8)))
    >>> tuple(out.targets.shape)
    (4, 2, 8, 8)
    """

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        *,
        num_classes: int | None = None,
        seed: int | None = None,
        lambda_per_sample: bool = False,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        self.num_classes = num_classes
        self.lambda_per_sample = lambda_per_sample
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InvalidInputError(f"seed={seed!r} must be an integer or None")
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))

    @property
    def enabled(self) -> bool:
        """False when ``alpha == 0``."""
        return self.alpha > 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> MixupBatch:
        return mixup(
            images,
            targets,
            alpha=self.alpha,
            num_classes=self.num_classes,
            generator=self.generator,
            lambda_per_sample=self.lambda_per_sample,
        )

    def state_dict(self) -> dict:
        """The generator state, for checkpoints (resume continues the same random sequence)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises
        ------
        InvalidInputError
            If ``state`` has no ``generator`` entry.
        """
        if not isinstance(state, dict) or "generator" not in state:
            raise InvalidInputError("state must be a dict from Mixup.state_dict() with a 'generator' entry")
        self.generator.set_state(state["generator"])
