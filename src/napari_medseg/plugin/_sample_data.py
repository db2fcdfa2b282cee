"""napari sample data: the demo brain MRI with its tissue labels, and the synthetic MALDI/MRI pair.

Nothing is downloaded: the MRI is nilearn's shipped MNI152 2009c T1 template
(:mod:`napari_medseg.sample_data`), the pair is generated
(:func:`napari_medseg.registration.synthetic.synthetic_pair`).
"""

from __future__ import annotations

import numpy as np

from napari_medseg.plugin._layers import (
    image_layer_data,
    label_style,
    labels_layer_data,
)
from napari_medseg.volume import Geometry, Volume

__all__ = ["demo_mri", "maldi_mri_pair", "MALDI_PIXEL_MM", "MALDI_SHAPE"]

#: in-plane pixel size of the synthetic pair (a 100 micrometre MALDI raster on a small-animal MRI)
MALDI_PIXEL_MM = 0.1
#: (y, x) size of the synthetic pair
MALDI_SHAPE = (128, 128)


def demo_mri() -> list[tuple]:
    """The MNI152 T1 template (1 mm) and its reference grey/white matter labels.

    Returns
    -------
    list of LayerDataTuple
        An Image layer ``"MNI152 T1"`` and a Labels layer ``"MNI152 tissue labels"`` (0
        background, 1 grey matter, 2 white matter, with names and colours), both with the
        template's geometry.
    """
    from napari_medseg.sample_data import TISSUE_LABELS, mni152_t1, mni152_tissue_labels

    t1 = mni152_t1()
    labels = mni152_tissue_labels()
    style = label_style({v: n for v, (n, _) in TISSUE_LABELS.items()}, {v: c for v, (_, c) in TISSUE_LABELS.items()})
    return [
        image_layer_data(t1, name="MNI152 T1", colormap="gray"),
        labels_layer_data(labels, name="MNI152 tissue labels", opacity=0.5, **style),
    ]


def maldi_mri_pair() -> list[tuple]:
    """The synthetic MALDI-MS / MRI registration pair (paper Fig. 4-like), on one grid.

    Returns
    -------
    list of LayerDataTuple
        ``"MRI (fixed)"`` and ``"MALDI (moving)"`` Image layers and their masks
        ``"MRI mask"`` / ``"MALDI mask"`` (Labels, value 1), each ``(1, 128, 128)`` with a pixel
        size of 0.1 mm (slice thickness 1 mm), origin 0, identity direction: the inputs of the
        Register widget.
    """
    from napari_medseg.registration.synthetic import synthetic_pair

    pair = synthetic_pair(MALDI_SHAPE)
    geometry = Geometry((MALDI_PIXEL_MM, MALDI_PIXEL_MM, 1.0))
    mask_style = label_style({0: "background", 1: "tissue"})

    def volume(array: np.ndarray, kind: str) -> Volume:
        return Volume(np.asarray(array)[None], geometry, {"medseg_sample": f"synthetic_pair {kind}"})

    return [
        image_layer_data(volume(pair.fixed.astype(np.float32), "fixed"), name="MRI (fixed)", colormap="gray"),
        image_layer_data(volume(pair.moving.astype(np.float32), "moving"), name="MALDI (moving)", colormap="magma",
                         blending="additive"),
        labels_layer_data(volume(pair.fixed_mask.astype(np.uint8), "fixed mask"), name="MRI mask", visible=False,
                          **mask_style),
        labels_layer_data(volume(pair.moving_mask.astype(np.uint8), "moving mask"), name="MALDI mask",
                          visible=False, **mask_style),
    ]
