"""Sample data: the demo MRI with its tissue labels and the synthetic MALDI/MRI pair open in a viewer."""

from __future__ import annotations

import numpy as np

from napari_medseg.plugin._layers import GEOMETRY_KEY, volume_from_layer
from napari_medseg.plugin._sample_data import (
    MALDI_PIXEL_MM,
    MALDI_SHAPE,
    maldi_mri_pair,
)
from napari_medseg.sample_data import TISSUE_LABELS, mni152_t1


def test_demo_mri_opens_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medseg", "demo_mri")
    t1_layer, labels_layer = viewer.layers["MNI152 T1"], viewer.layers["MNI152 tissue labels"]
    t1 = mni152_t1()
    assert t1_layer.data.shape == (189, 233, 197) and np.array_equal(t1_layer.data, t1.array)
    assert volume_from_layer(t1_layer).geometry.isclose(t1.geometry)
    assert volume_from_layer(labels_layer).geometry.isclose(t1.geometry)
    assert np.allclose(labels_layer.scale, t1_layer.scale) and np.allclose(labels_layer.translate, t1_layer.translate)
    assert set(np.unique(labels_layer.data)) == {0, 1, 2}
    assert list(labels_layer.features["name"]) == [n for n, _ in TISSUE_LABELS.values()]
    assert np.allclose(labels_layer.colormap.map(np.array([1]))[0][:3], TISSUE_LABELS[1][1])


def test_maldi_mri_pair_layers():
    layers = maldi_mri_pair()
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == ["MRI (fixed)", "MALDI (moving)", "MRI mask", "MALDI mask"]
    assert [kind for _, _, kind in layers] == ["image", "image", "labels", "labels"]
    for data, kwargs, _ in layers:
        assert data.shape == (1, *MALDI_SHAPE)
        assert tuple(kwargs["scale"]) == (1.0, MALDI_PIXEL_MM, MALDI_PIXEL_MM)
        assert kwargs["metadata"][GEOMETRY_KEY]["spacing"] == [MALDI_PIXEL_MM, MALDI_PIXEL_MM, 1.0]
    fixed_mask = layers[2][0]
    assert set(np.unique(fixed_mask)) == {0, 1} and fixed_mask.dtype == np.uint8
    # the fixed image is brighter inside its mask than outside (the masks belong to the images)
    fixed = layers[0][0]
    assert fixed[fixed_mask == 1].mean() > fixed[fixed_mask == 0].mean()


def test_maldi_mri_pair_opens_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medseg", "maldi_mri_pair")
    assert [layer.name for layer in viewer.layers] == ["MRI (fixed)", "MALDI (moving)", "MRI mask", "MALDI mask"]
