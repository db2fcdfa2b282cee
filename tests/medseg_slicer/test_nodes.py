"""MedSegLib.nodes on real MRML (slicer-core): exact geometry both ways, segmentations, transforms, tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import vtk
from conftest import oblique_geometry
from MedSegLib import nodes
from scipy.ndimage import gaussian_filter

from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.metrics import METRIC_KEYS, evaluate
from napari_medseg.registration.volumes import apply_field, displacement_to_volume
from napari_medseg.volume import Geometry, Volume

ANISO = Geometry((0.5, 0.75, 3.0), (-12.25, 40.5, 7.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0))


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.mark.parametrize(
    "geometry, array",
    [
        (oblique_geometry(), np.random.default_rng(0).normal(size=(6, 20, 24)).astype(np.float32)),
        (ANISO, np.array([np.iinfo(np.int32).min, -1, 0, 1, np.iinfo(np.int32).max] * 12, np.int32).reshape(3, 4, 5)),
        (oblique_geometry(0.7, (0.31, 0.29, 4.0)), np.array([1e300, -1e-300, np.pi, 0.0] * 6, np.float64).reshape(2, 3, 4)),
        (ANISO, np.arange(60, dtype=np.uint16).reshape(3, 4, 5) * 1000),
    ],
)
def test_volume_round_trip_is_exact(scene, geometry, array):
    volume = Volume(array, geometry)
    node = nodes.volume_to_node(volume, scene, name="in")
    # Slicer's IJK-to-RAS is the LPS affine with the first two rows negated
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.index_to_physical()
    np.testing.assert_allclose(ijk_to_ras(node), expected, rtol=0, atol=1e-12)
    assert node.GetImageData().GetDimensions() == array.shape[::-1]
    back = nodes.volume_from_node(node)
    assert back.array.dtype == array.dtype and np.array_equal(back.array, array)
    assert back.geometry == geometry  # bit for bit: the conversion is a sign flip
    assert back.metadata["name"] == "in"


def test_volume_from_node_copies_and_reads_ras_placement(scene):
    from slicer import vtkMRMLScalarVolumeNode

    node = scene.AddNode(vtkMRMLScalarVolumeNode())
    image = nodes._array_to_image(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    node.SetAndObserveImageData(image)
    node.SetSpacing(0.5, 2.0, 3.0)
    node.SetOrigin(10.0, -20.0, 5.0)  # RAS
    volume = nodes.volume_from_node(node)
    assert volume.geometry.origin == (-10.0, 20.0, 5.0)  # LPS
    assert volume.geometry.spacing == (0.5, 2.0, 3.0)
    assert volume.geometry.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # identity RAS = RAS in LPS
    assert volume.array[1, 2, 3] == 23 and volume.array[0, 1, 0] == 4  # (k, j, i)
    volume.array[:] = 0
    assert nodes.volume_from_node(node).array[1, 2, 3] == 23  # a copy, not a view of VTK's memory


def test_vector_volume_and_components(scene):
    probs = np.random.default_rng(1).random((4, 5, 6, 3)).astype(np.float32)
    volume = Volume(probs, ANISO)
    node = nodes.volume_to_node(volume, scene, class_name="vtkMRMLVectorVolumeNode")
    assert np.array_equal(nodes.volume_from_node(node).array, probs)
    made = nodes.component_nodes(volume, scene, names=["a", "b", "c"], prefix="case ")
    assert [n.GetName() for n in made.values()] == ["case a", "case b", "case c"]
    assert np.array_equal(nodes.volume_from_node(made["b"]).array, probs[..., 1])
    np.testing.assert_array_equal(ijk_to_ras(made["c"]), ijk_to_ras(node))


def test_invalid_volume_conversions(scene):
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode

    with pytest.raises(InvalidInputError, match="volume node"):
        nodes.volume_from_node(scene.AddNode(vtkMRMLTableNode()))
    with pytest.raises(InvalidInputError, match="no image data"):
        nodes.volume_from_node(scene.AddNode(vtkMRMLScalarVolumeNode()))
    with pytest.raises(InvalidInputError, match="vtkMRMLVectorVolumeNode"):
        nodes.volume_to_node(Volume(np.zeros((2, 2, 2, 3)), ANISO), scene)
    with pytest.raises(InvalidInputError, match="class_name"):
        nodes.volume_to_node(Volume(np.zeros((2, 2, 2)), ANISO), scene, class_name="vtkMRMLModelNode")
    with pytest.raises(InvalidInputError, match="Volume"):
        nodes.volume_to_node(np.zeros((2, 2, 2)), scene)
    with pytest.raises(InvalidInputError, match="names"):
        nodes.component_nodes(Volume(np.zeros((2, 2, 2, 3)), ANISO), scene, names=["a"])


def _labels(geometry=None):
    array = np.zeros((6, 20, 24), np.uint8)
    array[1:4, 3:10, 4:12] = 1
    array[2:5, 12:18, 5:20] = 3
    return Volume(array, geometry or oblique_geometry())


SPECS = {0: ("background", (0, 0, 0)), 1: ("liver", (1.0, 0.0, 0.0)), 2: ("spleen", (0.0, 0.5, 1.0)), 3: ("kidney", (0.2, 0.8, 0.2))}


def test_labels_to_segmentation_names_colours_and_exact_round_trip(scene):
    labels = _labels()
    reference = nodes.volume_to_node(labels.derive(labels.array.astype(np.float32)), scene, name="ref")
    seg = nodes.labels_to_segmentation(labels, scene, label_specs=SPECS, name="pred", reference_volume_node=reference,
                                       terminology={1: "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver^^~^^~^^"})
    segmentation = seg.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert ids == ["label_1", "label_2", "label_3"]  # every card label, present or not (2 is empty: paintable)
    assert [segmentation.GetSegment(i).GetName() for i in ids] == ["liver", "spleen", "kidney"]
    assert segmentation.GetSegment("label_2").GetColor() == pytest.approx((0.0, 0.5, 1.0))
    tag = vtk.reference("")
    assert segmentation.GetSegment("label_1").GetTag("TerminologyEntry", tag) and "Liver" in str(tag)
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == reference.GetID()
    back = nodes.segmentation_to_labels(seg, labels)
    assert np.array_equal(back.array, labels.array) and back.geometry == labels.geometry
    assert back.metadata["Segment2_Name"] == "kidney" and back.metadata["Segment2_LabelValue"] == "3"
    # the same again on the reference node: same grid, same labels
    assert np.array_equal(nodes.segmentation_to_labels(seg, reference).array, labels.array)
    # a re-run into the same node replaces the segments (stable ids)
    nodes.labels_to_segmentation(_labels(), scene, label_specs={1: ("liver", None)}, node=seg)
    assert segmentation.GetNumberOfSegments() == 2 and segmentation.GetSegment("label_3").GetName() == "Segment_3"


def test_segmentation_to_labels_on_another_grid_and_painted_segments(scene):
    from slicer import vtkMRMLSegmentationNode

    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    labels = _labels(geometry)
    seg = nodes.labels_to_segmentation(labels, scene)
    assert seg.GetSegmentation().GetSegment("label_3").GetName() == "Segment_3"
    # a reference grid shifted by 2 voxels along x (LPS x = -RAS x): nearest neighbour is a pure shift
    shifted = Geometry((1.0, 1.0, 2.0), (2.0, 0.0, 0.0))
    out = nodes.segmentation_to_labels(seg, Volume(np.zeros((6, 20, 24)), shifted))
    expected = np.zeros_like(labels.array)
    expected[:, :, :-2] = labels.array[:, :, 2:]
    assert np.array_equal(out.array, expected)
    # a segmentation painted by hand (no medseg tag): values from the name map, else the position
    painted = scene.AddNode(vtkMRMLSegmentationNode())
    for name, value in (("tumour", 1), ("cyst", 3)):
        image = nodes._oriented_image((labels.array == value).astype(np.uint8), geometry)
        painted.AddSegmentFromBinaryLabelmapRepresentation(image, name, [1.0, 0.0, 0.0])
    by_position = nodes.segmentation_to_labels(painted, labels)
    assert np.array_equal(by_position.array, np.where(labels.array == 3, 2, labels.array))
    by_name = nodes.segmentation_to_labels(painted, labels, label_values={"tumour": 1, "cyst": 3})
    assert np.array_equal(by_name.array, labels.array)


def test_invalid_segmentation_arguments(scene):
    from slicer import vtkMRMLTableNode

    labels = _labels()
    with pytest.raises(InvalidInputError, match="integer"):
        nodes.labels_to_segmentation(labels.derive(labels.array + 0.5), scene)
    with pytest.raises(InvalidInputError, match="colour"):
        nodes.labels_to_segmentation(labels, scene, label_specs={1: ("a", (2.0, 0, 0))})
    other = nodes.volume_to_node(Volume(np.zeros((6, 20, 24), np.float32), ANISO), scene)
    with pytest.raises(GeometryMismatchError, match="grid"):
        nodes.labels_to_segmentation(labels, scene, reference_volume_node=other)
    with pytest.raises(InvalidInputError, match="vtkMRMLSegmentationNode"):
        nodes.segmentation_to_labels(scene.AddNode(vtkMRMLTableNode()), labels)
    seg = nodes.labels_to_segmentation(labels, scene)
    with pytest.raises(InvalidInputError, match="segment_ids"):
        nodes.segmentation_to_labels(seg, labels, segment_ids=["nope"])


@pytest.mark.parametrize("geometry, shape", [(oblique_geometry(), (6, 20, 24)), (Geometry((0.5, 0.7, 1.0), (1, 2, 3)), (1, 40, 36))])
def test_grid_transform_maps_points_as_the_core_field(scene, geometry, shape):
    """The node's from-parent transform sends a fixed point p to p + u(p), as apply_field samples it."""
    rng = np.random.default_rng(3)
    ndim = 3 if shape[0] > 1 else 2
    grid_shape = shape if ndim == 3 else shape[1:]
    u = np.stack([gaussian_filter(rng.normal(size=grid_shape), 2.0) * 4.0 for _ in range(ndim)]).astype(np.float32)
    field = displacement_to_volume(u, geometry)
    node = nodes.field_to_grid_transform(field, scene, name="phi")
    assert node.IsA("vtkMRMLGridTransformNode") and node.GetName() == "phi"
    # coordinate images: apply_field interpolates linear functions exactly, giving phi(p) per fixed voxel
    index = np.indices(shape, dtype=np.float64)  # z, y, x
    ijk = np.stack([index[2], index[1], index[0], np.ones(shape)])
    physical = np.einsum("ij,j...->i...", geometry.index_to_physical(), ijk)[:3]
    mapped = [apply_field(Volume(physical[a], geometry), field).array for a in range(3)]
    transform = node.GetTransformFromParent()
    checked = 0
    kz = [0, 0, 0, 0] if shape[0] == 1 else [2, 3, 3, 2]  # interior points: phi(p) stays inside the grid
    for k, j, i in zip(kz, (10, 8, 12, 7), (12, 9, 15, 17)):
        p_ras = nodes.LPS_TO_RAS @ physical[:, k, j, i]
        q_lps = nodes.LPS_TO_RAS @ np.array(transform.TransformPoint(*p_ras))
        np.testing.assert_allclose(q_lps, [mapped[a][k, j, i] for a in range(3)], atol=1e-4)
        np.testing.assert_allclose(q_lps - physical[:, k, j, i], field.array[k, j, i], atol=1e-5)
        checked += 1
    assert checked == 4
    # to-parent (moving -> fixed) is the inverse
    q = transform.TransformPoint(*(nodes.LPS_TO_RAS @ physical[:, kz[0], 10, 12]))
    np.testing.assert_allclose(node.GetTransformToParent().TransformPoint(*q), nodes.LPS_TO_RAS @ physical[:, kz[0], 10, 12], atol=1e-2)


def test_invalid_field(scene):
    with pytest.raises(InvalidInputError, match="3-component"):
        nodes.field_to_grid_transform(Volume(np.zeros((2, 3, 4)), ANISO), scene)
    with pytest.raises(InvalidInputError, match="vtkMRMLGridTransformNode"):
        nodes.field_to_grid_transform(Volume(np.zeros((2, 3, 4, 3)), ANISO), scene, node=nodes.volume_to_node(Volume(np.zeros((2, 3, 4)), ANISO), scene))


def test_metrics_table_equals_evaluate(scene):
    geometry = Geometry((1.0, 1.0, 2.0))
    pred = np.zeros((8, 16, 16), np.uint8)
    ref = np.zeros_like(pred)
    pred[2:6, 4:12, 4:12] = 1
    ref[2:6, 5:13, 4:12] = 1
    pred[1:3, 1:3, 1:3] = 2  # label 2 only in pred: infinite distances -> NaN in the table
    result = evaluate(Volume(pred, geometry), Volume(ref, geometry))
    table = nodes.metrics_to_table(result, scene, label_names={1: "liver"})
    vt = table.GetTable()
    assert vt.GetNumberOfRows() == 2
    assert [vt.GetColumnName(c) for c in range(2 + len(METRIC_KEYS))] == ["label", "name", *METRIC_KEYS]
    assert vt.GetValueByName(0, "name").ToString() == "liver" and vt.GetValueByName(1, "name").ToString() == "Segment_2"
    for row, label in enumerate(("1", "2")):
        assert vt.GetValueByName(row, "label").ToInt() == int(label)
        for key in METRIC_KEYS:
            value = vt.GetValueByName(row, key).ToDouble()
            expected = result["labels"][label][key]
            assert (math.isnan(value) and expected is None) or value == pytest.approx(expected, rel=1e-12)
    assert result["labels"]["1"]["dice"] == pytest.approx(2 * 4 * 7 * 8 / (2 * 4 * 8 * 8))
    with pytest.raises(InvalidInputError, match="labels"):
        nodes.metrics_to_table({"dice": 1.0}, scene)
