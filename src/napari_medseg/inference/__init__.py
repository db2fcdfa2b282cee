"""Run registry models on a volume: probabilities, labels and uncertainty on the input's own grid.

A package along MONAI's lines: :mod:`.device` (``Device``, :func:`resolve_device`),
:mod:`.splitter` (the patch grid, Gaussian importance map, test-time flips),
:mod:`.sliding_window` (patches through the networks and the merged moments), :mod:`.result`
(:class:`Prediction`, :func:`provenance_metadata`) and :mod:`.predictor` (:func:`predict`: the
orchestration, and the hand-off to MONAI bundles and nnU-Net). The normalisation
(:mod:`napari_medseg.normalization`) and the argmax to label values
(:mod:`napari_medseg.labelmaps`) are torch-free modules outside, shared with training and
uncertainty.

:func:`predict` is the one entry point the faces call. It

1. stacks the input channels, checks them against the model card (channel count, finite
   values, a 3D model needs more than one slice) and warns (:class:`CardMismatchWarning`) when
   the spacing or orientation differs from the card's;
2. reorients (axis permutation and flips only) and resamples (linear) to the card's orientation
   and spacing, and normalises the intensities as the card says (:func:`normalize_intensities`);
3. runs a sliding window (:func:`sliding_window_moments`) with the card's patch size, overlap and
   Gaussian blending, 2D models slice by slice, optionally with Monte-Carlo dropout, test-time
   flips and an ensemble of models;
4. brings the blended moments back to the input grid (linear interpolation of probabilities) and
   takes labels as the argmax there.

The sliding window reproduces :func:`monai.inferers.sliding_window_inference` (same patch grid,
same Gaussian importance map, same zero padding of volumes smaller than a patch) and is faster:
see ``benchmarks/inference.py``. Its speed comes from a channels-last copy of the network with
fused normalisation (:func:`napari_medseg.networks.optimize_for_inference`), batched patches
under :func:`torch.inference_mode`, and, for Monte-Carlo dropout, from computing everything
before the first dropout layer once per patch and only the rest once per sample; when that rest
is dropout before a 1x1 head, all samples of a patch run as one fused, cache-blocked pass with
masks from a per-patch pool (:func:`napari_medseg.networks._fast.dropout_head_moments`).

Memory: the stitching buffers live on the CPU in float32 (the smallest dtype that accumulates
weighted probabilities without visible error; float16 would lose 1e-3): ``C + 1`` values per
voxel of the model grid, plus ``C + 1`` more with Monte-Carlo/TTA/ensemble moments; entropy,
variance and labels are computed slab by slab. A 512 x 512 x 300 int16 CT with a 2-class model
peaked at 2.05 GB RSS on the CPU (``python benchmarks/inference.py --memory``; target 4 GB).
"""

from napari_medseg._validate import MAX_BATCH_SIZE  # noqa: F401 - re-exported (old name)
from napari_medseg._validate import check_overlap as _check_overlap  # noqa: F401 - old private names
from napari_medseg._validate import check_positive_int as _check_positive_int  # noqa: F401
from napari_medseg.inference.device import Device, resolve_device
from napari_medseg.inference.predictor import CardMismatchWarning, predict
from napari_medseg.inference.result import Prediction, provenance_metadata
from napari_medseg.inference.sliding_window import WindowMoments, sliding_window_moments
from napari_medseg.inference.splitter import SIGMA_SCALE, flip_axes_sets, gaussian_importance_map, patch_grid
from napari_medseg.labelmaps import labels_from_probabilities
from napari_medseg.normalization import normalize_intensities
from napari_medseg.registry import card_warnings

__all__ = [
    "Device",
    "CardMismatchWarning",
    "card_warnings",
    "Prediction",
    "WindowMoments",
    "predict",
    "resolve_device",
    "sliding_window_moments",
    "normalize_intensities",
    "patch_grid",
    "gaussian_importance_map",
    "flip_axes_sets",
    "provenance_metadata",
    "labels_from_probabilities",
    "SIGMA_SCALE",
]
