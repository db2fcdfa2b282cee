"""MRML nodes <-> napari-medseg Volumes, with the geometry kept exactly.

Slicer stores a volume's placement as IJK-to-RAS: spacing, origin (RAS, mm) and a 3x3 direction
matrix whose columns are the I, J, K axes in RAS. napari-medseg's :class:`~napari_medseg.volume.Geometry`
is SimpleITK's: spacing, origin and direction in ``(x, y, z)`` = ``(I, J, K)`` order, in LPS. The two
differ only by ``RAS = diag(-1, -1, 1) LPS``, a sign flip, which is exact in floating point: a
volume round-trips through a node bit for bit (values, spacing, origin, direction). Slicer's array
order ``(k, j, i)`` is the core's ``(z, y, x)``.

Everything here takes the MRML scene explicitly and imports only VTK, MRML (``slicer`` from the
application or from the ``slicer-core`` wheel) and the core, so it runs without the Slicer
application.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.volume import Geometry, Volume, as_label_array

__all__ = [
    "LABEL_VALUE_TAG",
    "LPS_TO_RAS",
    "component_nodes",
    "field_to_grid_transform",
    "geometry_from_node",
    "labels_to_segmentation",
    "metrics_to_table",
    "register_segmentation_converters",
    "segmentation_to_labels",
    "volume_from_node",
    "volume_to_node",
]

#: ``RAS = LPS_TO_RAS @ LPS`` (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: segment tag that records the label value a segment came from (read back by segmentation_to_labels)
LABEL_VALUE_TAG = "medseg.label_value"

_VOLUME_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode")


def _slicer():
    """The ``slicer`` module: the application's, or the ``slicer-core`` wheel's."""
    import slicer

    return slicer


def _segmentation_core():
    slicer = _slicer()
    if hasattr(slicer, "vtkSegmentationConverterFactory"):
        return slicer
    import vtkSegmentationCorePython as core  # pragma: no cover - Slicer builds that do not re-export it

    return core


def register_segmentation_converters() -> None:
    """Register the binary labelmap <-> closed surface converter rules once per process.

    The Slicer application does this at start-up; the ``slicer-core`` wheel does not, and a
    segmentation without rules cannot make the closed surface its display needs. Idempotent.
    """
    core = _segmentation_core()
    factory = core.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    have = {type(rule).__name__ for rule in rules} if isinstance(rules, (list, tuple)) else set()
    for name in (
        "vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    ):
        if name not in have and hasattr(core, name):
            factory.RegisterConverterRule(getattr(core, name)())


# ------------------------------------------------------------------------------------- geometry
def _matrix3(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


def _vtk_matrix(direction_ras: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(direction_ras[r, c]))
    return matrix


def _ras_placement(geometry: Geometry) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """(spacing, RAS origin, RAS direction) of a core geometry."""
    origin = tuple(float(v) for v in LPS_TO_RAS @ np.asarray(geometry.origin))
    return geometry.spacing, origin, LPS_TO_RAS @ geometry.direction_matrix


def _geometry_from_ras(spacing, origin_ras, direction_ras: np.ndarray) -> Geometry:
    origin = LPS_TO_RAS @ np.asarray(origin_ras, float)
    direction = LPS_TO_RAS @ np.asarray(direction_ras, float)
    return Geometry(tuple(spacing), tuple(origin), tuple(direction.ravel()))


def _check_volume_node(node, name: str = "volume_node") -> None:
    if node is None or not any(node.IsA(cls) for cls in _VOLUME_CLASSES):
        kind = "None" if node is None else node.GetClassName()
        raise InvalidInputError(f"{name}: expected a scalar, label map or vector volume node; got {kind}")


def geometry_from_node(volume_node) -> Geometry:
    """The core :class:`~napari_medseg.volume.Geometry` (LPS) of a volume node's IJK-to-RAS.

    Raises
    ------
    InvalidInputError
        If ``volume_node`` is not a volume node, or its spacing or directions are invalid.
    """
    _check_volume_node(volume_node)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    return _geometry_from_ras(volume_node.GetSpacing(), volume_node.GetOrigin(), _matrix3(matrix))


def _image_to_array(image: vtk.vtkImageData) -> np.ndarray:
    """``(k, j, i[, c])`` copy of a vtkImageData's scalars."""
    scalars = image.GetPointData().GetScalars()
    nx, ny, nz = image.GetDimensions()
    if scalars is None or nx * ny * nz == 0:
        raise InvalidInputError("the node has no image data (load or compute a volume first)")
    array = numpy_support.vtk_to_numpy(scalars)
    comps = scalars.GetNumberOfComponents()
    shape = (nz, ny, nx) if comps == 1 else (nz, ny, nx, comps)
    return np.array(array.reshape(shape), copy=True)


def _array_to_image(array: np.ndarray) -> vtk.vtkImageData:
    """A vtkImageData (origin 0, spacing 1: Slicer keeps geometry in the node) holding a deep copy."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    nz, ny, nx = array.shape[:3]
    comps = 1 if array.ndim == 3 else array.shape[3]
    flat = np.ascontiguousarray(array).reshape(-1, comps) if comps > 1 else np.ascontiguousarray(array).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True)
    scalars.SetName("ImageScalars")
    image = vtk.vtkImageData()
    image.SetDimensions(nx, ny, nz)
    image.GetPointData().SetScalars(scalars)
    return image


def volume_from_node(volume_node) -> Volume:
    """The core :class:`~napari_medseg.volume.Volume` of a volume node (array copied).

    Parameters
    ----------
    volume_node : vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode or vtkMRMLVectorVolumeNode
        Its image data ``(i, j, k[, c])`` becomes the array ``(z, y, x[, c])``; its IJK-to-RAS
        becomes the geometry (LPS). A parent transform of the node is not applied (harden it first
        if it should be).

    Returns
    -------
    Volume
        Metadata: ``{"name": node name}``.

    Raises
    ------
    InvalidInputError
        If the node is not a volume node or has no image data.
    """
    _check_volume_node(volume_node)
    image = volume_node.GetImageData()
    if image is None:
        raise InvalidInputError(f"volume node {volume_node.GetName()!r} has no image data")
    array = _image_to_array(image)
    return Volume(array, geometry_from_node(volume_node), {"name": volume_node.GetName() or ""})


def volume_to_node(
    volume: Volume,
    scene,
    *,
    name: str = "volume",
    node=None,
    class_name: str = "vtkMRMLScalarVolumeNode",
):
    """Put a Volume into a volume node with the exact geometry (IJK-to-RAS from LPS).

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)``, or ``(z, y, x, c)`` for a vector volume node. bool becomes uint8 and
        float16 float32; every other dtype is kept.
    scene : vtkMRMLScene
        Where a new node is added.
    name : str, keyword-only
        Name of a new node (Slicer makes it unique). Default ``"volume"``.
    node : volume node or None, keyword-only
        Update this node instead of adding one (its name is kept).
    class_name : str, keyword-only
        Class of a new node: ``"vtkMRMLScalarVolumeNode"`` (default), ``"vtkMRMLLabelMapVolumeNode"``,
        or ``"vtkMRMLVectorVolumeNode"`` (required for multi-component volumes).

    Returns
    -------
    vtkMRMLVolumeNode
        With default display nodes.

    Raises
    ------
    InvalidInputError
        If ``class_name`` is not a volume class, or a multi-component volume goes into a scalar node.
    """
    if not isinstance(volume, Volume):
        raise InvalidInputError(f"volume: expected a napari_medseg Volume; got {type(volume).__name__}")
    if node is None:
        if class_name not in _VOLUME_CLASSES:
            raise InvalidInputError(f"class_name={class_name!r}: expected one of {', '.join(_VOLUME_CLASSES)}")
        if volume.n_components > 1 and class_name != "vtkMRMLVectorVolumeNode":
            raise InvalidInputError(
                f"a {volume.n_components}-component volume needs class_name='vtkMRMLVectorVolumeNode' "
                "(or component_nodes for one scalar node per component)"
            )
        node = scene.AddNewNodeByClass(class_name, name)
    else:
        _check_volume_node(node, "node")
        if volume.n_components > 1 and not node.IsA("vtkMRMLVectorVolumeNode"):
            raise InvalidInputError(f"node {node.GetName()!r}: a {volume.n_components}-component volume needs a vector volume node")
    spacing, origin, direction = _ras_placement(volume.geometry)
    was_modifying = node.StartModify()
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    node.SetIJKToRASDirectionMatrix(_vtk_matrix(direction))
    node.SetAndObserveImageData(_array_to_image(volume.array))
    node.EndModify(was_modifying)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def component_nodes(
    volume: Volume,
    scene,
    *,
    names: Sequence[str],
    prefix: str = "",
) -> dict[str, object]:
    """One scalar volume node per component (probabilities per label, uncertainty maps).

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` (one component) or ``(z, y, x, c)``.
    scene : vtkMRMLScene
    names : sequence of str, keyword-only
        One name per component (e.g. ``entropy``, ``mutual_information``, ``variance_liver``).
    prefix : str, keyword-only
        Prepended to each node name (e.g. the input's name and a space). Default ``""``.

    Returns
    -------
    dict of str to vtkMRMLScalarVolumeNode
        Component name -> node, each with the volume's exact geometry.

    Raises
    ------
    InvalidInputError
        If the number of names differs from the number of components.
    """
    names = [str(n) for n in names]
    if len(names) != volume.n_components:
        raise InvalidInputError(f"names: {len(names)} given for a volume with {volume.n_components} component(s)")
    nodes = {}
    for index, component in enumerate(names):
        array = volume.array if volume.n_components == 1 else volume.array[..., index]
        nodes[component] = volume_to_node(Volume(array, volume.geometry), scene, name=f"{prefix}{component}")
    return nodes


# --------------------------------------------------------------------------------- segmentations
def _oriented_image(array: np.ndarray, geometry: Geometry):
    core = _segmentation_core()
    spacing, origin, direction = _ras_placement(geometry)
    image = core.vtkOrientedImageData()
    image.ShallowCopy(_array_to_image(array))
    image.SetSpacing(*spacing)
    image.SetOrigin(*origin)
    image.SetDirectionMatrix(_vtk_matrix(direction))
    return image


def _check_color(value: int, color) -> tuple[float, float, float]:
    rgb = tuple(float(c) for c in color)
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise InvalidInputError(f"label {value}: colour {color!r} must be 3 values in [0, 1]")
    return rgb  # type: ignore[return-value]


def _fallback_color(value: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(value)
    return tuple(float(c) for c in rng.uniform(0.2, 1.0, 3))  # type: ignore[return-value]


def labels_to_segmentation(
    labels: Volume,
    scene,
    *,
    label_specs: Mapping[int, tuple[str, Sequence[float] | None]] | None = None,
    name: str = "segmentation",
    node=None,
    reference_volume_node=None,
    terminology: Mapping[int, str] | None = None,
):
    """A Segmentation node with one segment per label, on the label map's exact geometry.

    The segments share one binary labelmap layer (as Slicer's Segment Editor keeps them), each with
    its label value (``vtkSegment.GetLabelValue`` and the tag :data:`LABEL_VALUE_TAG`).

    Parameters
    ----------
    labels : Volume
        Integer label map ``(z, y, x)``; 0 is background.
    scene : vtkMRMLScene
    label_specs : mapping of int to (name, colour) or None, keyword-only
        Label value -> (segment name, RGB in [0, 1] or None), e.g. from a model card. With it, every
        non-zero label it names gets a segment, present or not (so it can be painted in Segment
        Editor); labels present but not named get ``Segment_<value>``. Default: the labels present.
    name : str, keyword-only
        Name of a new node. Default ``"segmentation"``.
    node : vtkMRMLSegmentationNode or None, keyword-only
        Replace the segments of this node instead of adding one.
    reference_volume_node : volume node or None, keyword-only
        Set as the node's reference geometry (what Segment Editor paints on); it must be on the
        label map's grid. Default: the label map's own geometry is the reference.
    terminology : mapping of int to str or None, keyword-only
        Label value -> a Slicer terminology entry string, stored in the segment's
        ``TerminologyEntry`` tag where given.

    Returns
    -------
    vtkMRMLSegmentationNode
        Segment ids are ``label_<value>``: stable across runs, so a re-run replaces the same segments.

    Raises
    ------
    InvalidInputError
        If ``labels`` is not an integer label map, a colour is invalid, or a value is negative.
    GeometryMismatchError
        If ``reference_volume_node`` is not on the label map's grid.
    """
    if not isinstance(labels, Volume):
        raise InvalidInputError(f"labels: expected a napari_medseg Volume; got {type(labels).__name__}")
    array = as_label_array(labels.array, name="labels")
    if reference_volume_node is not None:
        reference = geometry_from_node(reference_volume_node)
        dims = reference_volume_node.GetImageData().GetDimensions() if reference_volume_node.GetImageData() else None
        if not reference.isclose(labels.geometry, atol=1e-4) or (dims is not None and tuple(dims[::-1]) != labels.shape):
            raise GeometryMismatchError(
                f"reference_volume_node {reference_volume_node.GetName()!r} ({reference.describe()}) is not on the "
                f"label map's grid ({labels.geometry.describe()}, shape {labels.shape})"
            )
    register_segmentation_converters()
    core = _segmentation_core()
    present = [int(v) for v in np.unique(array) if v != 0]
    specs: dict[int, tuple[str, Sequence[float] | None]] = {}
    for value, spec in (label_specs or {}).items():
        value = int(value)
        if value < 0:
            raise InvalidInputError(f"label_specs: label value {value} must be >= 0")
        if value != 0:
            specs[value] = (str(spec[0]), spec[1] if len(spec) > 1 else None)
    values = sorted(set(present) | set(specs))
    dtype = np.uint8 if not values or max(values) < 256 else (np.uint16 if max(values) < 65536 else np.uint32)
    shared = _oriented_image(array.astype(dtype, copy=False), labels.geometry)

    if node is None:
        node = _slicer().vtkMRMLSegmentationNode()
        node.SetName(name)
        scene.AddNode(node)
    elif not node.IsA("vtkMRMLSegmentationNode"):
        raise InvalidInputError(f"node: expected a vtkMRMLSegmentationNode; got {node.GetClassName()}")
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    was_modifying = node.StartModify()
    segmentation.RemoveAllSegments()
    segmentation.SetSourceRepresentationName(core.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if reference_volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    else:
        geometry_string = core.vtkSegmentationConverter.SerializeImageGeometry(shared)
        segmentation.SetConversionParameter(
            core.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry_string
        )
    representation = core.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for value in values:
        segment_name, color = specs.get(value, (f"Segment_{value}", None))
        segment = core.vtkSegment()
        segment.SetName(segment_name)
        segment.SetColor(*(_check_color(value, color) if color is not None else _fallback_color(value)))
        segment.SetLabelValue(value)
        segment.SetTag(LABEL_VALUE_TAG, str(value))
        if terminology and value in terminology:
            segment.SetTag("TerminologyEntry", str(terminology[value]))
        segment.AddRepresentation(representation, shared)
        segmentation.AddSegment(segment, f"label_{value}")
    node.EndModify(was_modifying)
    return node


def _segment_value(segment, index: int, label_values: Mapping[str, int] | None) -> int:
    tag = vtk.reference("")
    if segment.GetTag(LABEL_VALUE_TAG, tag) and str(tag).strip():
        return int(str(tag))
    if label_values and segment.GetName() in label_values:
        return int(label_values[segment.GetName()])
    return index + 1


def segmentation_to_labels(
    segmentation_node,
    reference: Volume | object,
    *,
    label_values: Mapping[str, int] | None = None,
    segment_ids: Sequence[str] | None = None,
) -> Volume:
    """Export a Segmentation node to a label map on a reference grid (nearest neighbour).

    For evaluation and for fine-tuning on segmentations corrected in Segment Editor.

    Parameters
    ----------
    segmentation_node : vtkMRMLSegmentationNode
        Its binary labelmap representation is used (created from the source representation if needed).
        A parent transform of the node is not applied.
    reference : Volume or volume node
        The grid of the result (shape, spacing, origin, direction).
    label_values : mapping of str to int or None, keyword-only
        Segment name -> label value, for segments that were not made by
        :func:`labels_to_segmentation` (those carry their value in :data:`LABEL_VALUE_TAG`). Other
        segments get their 1-based position.
    segment_ids : sequence of str or None, keyword-only
        The segments to export, in painting order (a later segment wins where they overlap).
        Default: all, in the node's order.

    Returns
    -------
    Volume
        uint8 (uint16 when a value exceeds 255) on the reference geometry; metadata ``Segment*``
        fields (names, colours, values) as in a ``.seg.nrrd``.

    Raises
    ------
    InvalidInputError
        If the node is not a segmentation node, a segment id is unknown, or a value is out of range.
    """
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        kind = "None" if segmentation_node is None else segmentation_node.GetClassName()
        raise InvalidInputError(f"segmentation_node: expected a vtkMRMLSegmentationNode; got {kind}")
    if isinstance(reference, Volume):
        geometry, shape = reference.geometry, reference.shape
    else:
        _check_volume_node(reference, "reference")
        geometry = geometry_from_node(reference)
        dims = reference.GetImageData().GetDimensions()
        shape = (dims[2], dims[1], dims[0])
    register_segmentation_converters()
    core = _segmentation_core()
    segmentation = segmentation_node.GetSegmentation()
    representation = core.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(representation) and segmentation.GetNumberOfSegments():
        segmentation.CreateRepresentation(representation)
    all_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    ids = list(all_ids) if segment_ids is None else [str(s) for s in segment_ids]
    unknown = [s for s in ids if s not in all_ids]
    if unknown:
        raise InvalidInputError(f"segment_ids: {unknown} not in segmentation {segmentation_node.GetName()!r} ({all_ids})")
    reference_image = _oriented_image(np.zeros(shape, np.uint8), geometry)
    out = np.zeros(shape, np.uint32)
    meta: dict[str, str] = {}
    for n, segment_id in enumerate(ids):
        segment = segmentation.GetSegment(segment_id)
        value = _segment_value(segment, all_ids.index(segment_id), label_values)
        if not 0 < value < 2**32:
            raise InvalidInputError(f"segment {segment.GetName()!r}: label value {value} must be in [1, 2^32)")
        mask = _segment_mask(segmentation_node, segment_id, reference_image, shape)
        out[mask] = value
        meta[f"Segment{n}_ID"] = segment_id
        meta[f"Segment{n}_Name"] = segment.GetName()
        meta[f"Segment{n}_LabelValue"] = str(value)
        meta[f"Segment{n}_Color"] = " ".join(f"{c:.6g}" for c in segment.GetColor())
    top = int(out.max()) if out.size else 0
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)
    return Volume(out.astype(dtype), geometry, meta)


def _segment_mask(segmentation_node, segment_id: str, reference_image, shape) -> np.ndarray:
    """Boolean ``shape`` mask of one segment resampled (nearest) onto the reference image's grid."""
    core = _segmentation_core()
    binary = core.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, binary)
    mask = np.zeros(shape, bool)
    extent = binary.GetExtent()
    if extent[1] < extent[0] or binary.GetPointData().GetScalars() is None:
        return mask  # an empty segment
    resampled = core.vtkOrientedImageData()
    core.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        binary, reference_image, resampled, False, True
    )
    extent = resampled.GetExtent()
    if extent[1] < extent[0] or resampled.GetPointData().GetScalars() is None:
        return mask
    values = _image_to_array(resampled) != 0
    # the resampled image covers ``extent`` of the reference grid; clip it to the grid
    lo = [extent[4], extent[2], extent[0]]
    hi = [extent[5] + 1, extent[3] + 1, extent[1] + 1]
    src = tuple(slice(max(0, -l), min(h, n) - l) for l, h, n in zip(lo, hi, shape))
    dst = tuple(slice(max(0, l), min(h, n)) for l, h, n in zip(lo, hi, shape))
    if all(s.stop > s.start for s in dst):
        mask[dst] = values[src]
    return mask


# ------------------------------------------------------------------------------------ transforms
def field_to_grid_transform(field: Volume, scene, *, name: str = "displacement", node=None):
    """A grid transform node from a registration's displacement field (``medseg register --field``).

    The core's field ``u`` is a ``(z, y, x, 3)`` Volume of LPS displacements (mm, components x, y,
    z) on the fixed image's grid, with ``phi(p) = p + u(p)`` mapping a fixed-space point to the
    moving-space point the warped image samples. That is the resampling transform, which Slicer
    stores as the node's *from-parent* transform (as it does for ITK registration results): put the
    moving image (or any node in the moving space) under this transform node and Slicer shows it
    warped onto the fixed image; its to-parent transform (moving -> fixed points) is the inverse.
    The grid is the field's geometry in RAS and the vectors are converted to RAS.

    Parameters
    ----------
    field : Volume
        3 components per voxel.
    scene : vtkMRMLScene
    name : str, keyword-only
        Name of a new node. Default ``"displacement"``.
    node : vtkMRMLGridTransformNode or None, keyword-only
        Update this node instead of adding one.

    Returns
    -------
    vtkMRMLGridTransformNode

    Raises
    ------
    InvalidInputError
        If ``field`` does not have 3 components, or ``node`` is not a grid transform node.
    """
    if not isinstance(field, Volume) or field.n_components != 3:
        got = type(field).__name__ if not isinstance(field, Volume) else f"{field.n_components} component(s)"
        raise InvalidInputError(f"field: expected a 3-component displacement Volume (LPS mm); got {got}")
    slicer = _slicer()
    vectors = np.asarray(field.array, np.float64) * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS components
    spacing, origin, direction = _ras_placement(field.geometry)
    grid = _array_to_image(vectors)
    grid.SetSpacing(*spacing)
    grid.SetOrigin(*origin)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(_vtk_matrix(direction))
    transform.SetInterpolationModeToLinear()
    if node is None:
        node = slicer.vtkMRMLGridTransformNode()
        node.SetName(name)
        scene.AddNode(node)
    elif not node.IsA("vtkMRMLGridTransformNode"):
        raise InvalidInputError(f"node: expected a vtkMRMLGridTransformNode; got {node.GetClassName()}")
    node.SetAndObserveTransformFromParent(transform)
    return node


# ---------------------------------------------------------------------------------------- tables
def metrics_to_table(
    metrics: Mapping,
    scene,
    *,
    label_names: Mapping[int, str] | None = None,
    name: str = "metrics",
    node=None,
):
    """A table node with one row per label and one column per metric of :func:`napari_medseg.metrics.evaluate`.

    Parameters
    ----------
    metrics : mapping
        ``evaluate``'s result ``{"labels": {"1": {"dice": ..., ...}, ...}}``.
    scene : vtkMRMLScene
    label_names : mapping of int to str or None, keyword-only
        Label value -> name for the ``name`` column (default ``Segment_<value>``).
    name : str, keyword-only
        Name of a new node. Default ``"metrics"``.
    node : vtkMRMLTableNode or None, keyword-only
        Replace the contents of this node instead of adding one.

    Returns
    -------
    vtkMRMLTableNode
        Columns ``label`` (int), ``name`` (string), then the metric keys in
        :data:`napari_medseg.metrics.METRIC_KEYS` order (double; NaN where ``evaluate`` gives None:
        an infinite distance or aRVD with one empty mask). Distances are in mm, volumes in ml.

    Raises
    ------
    InvalidInputError
        If ``metrics`` has no ``"labels"`` mapping.
    """
    from napari_medseg.metrics import METRIC_KEYS

    per_label = metrics.get("labels") if isinstance(metrics, Mapping) else None
    if not isinstance(per_label, Mapping):
        raise InvalidInputError("metrics: expected evaluate()'s result, a dict with a 'labels' mapping")
    if node is None:
        node = _slicer().vtkMRMLTableNode()
        node.SetName(name)
        scene.AddNode(node)
    elif not node.IsA("vtkMRMLTableNode"):
        raise InvalidInputError(f"node: expected a vtkMRMLTableNode; got {node.GetClassName()}")
    keys = list(METRIC_KEYS) + sorted({k for v in per_label.values() for k in v} - set(METRIC_KEYS))
    table = vtk.vtkTable()
    label_column = vtk.vtkIntArray()
    label_column.SetName("label")
    name_column = vtk.vtkStringArray()
    name_column.SetName("name")
    columns = []
    for key in keys:
        column = vtk.vtkDoubleArray()
        column.SetName(key)
        columns.append(column)
    for label in sorted(per_label, key=int):
        values = per_label[label]
        label_column.InsertNextValue(int(label))
        name_column.InsertNextValue((label_names or {}).get(int(label), f"Segment_{int(label)}"))
        for key, column in zip(keys, columns):
            value = values.get(key)
            column.InsertNextValue(math.nan if value is None else float(value))
    for column in (label_column, name_column, *columns):
        table.AddColumn(column)
    node.SetAndObserveTable(table)
    for key in keys:
        unit = "mm" if key.startswith(("hd", "hausdorff", "mean_surface", "assd", "msd")) else ("ml" if key.endswith("_ml") else "")
        if unit:
            node.SetColumnUnitLabel(key, unit)
    return node
