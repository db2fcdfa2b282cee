"""Build real DICOM files for the tests: classic slices, Siemens mosaics with a CSA header,
enhanced multi-frame images (highdicom), patient-identifying series with a phantom, and compare
our reads with dcm2niix's NIfTI output. (One module: no test module imports another.)"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

ORIENTATIONS = {
    # ImageOrientationPatient (row cosines, column cosines) for common patient setups
    "axial_hfs": (1, 0, 0, 0, 1, 0),
    "axial_ffs": (-1, 0, 0, 0, 1, 0),
    "axial_hfp": (-1, 0, 0, 0, -1, 0),
    "sagittal": (0, 1, 0, 0, 0, -1),
    "coronal": (1, 0, 0, 0, 0, -1),
}


def oblique_orientation(degrees: float = 17.0) -> tuple[float, ...]:
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    m = rz @ rx
    return tuple(float(round(v, 6)) for v in (*m[:, 0], *m[:, 1]))


def dcm2niix_path() -> str | None:
    found = shutil.which("dcm2niix")
    if found:
        return found
    candidate = Path(sys.executable).parent / "dcm2niix"
    return str(candidate) if candidate.exists() else None


def _base(sop_class: str, series_uid: str, modality: str, number: int, description: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = modality
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.PatientName = "Test^Patient"
    ds.PatientID = "ID123"
    ds.StudyDate = "20240101"
    ds.Manufacturer = "SIEMENS"
    return ds


def _pixels(ds: Dataset, image: np.ndarray) -> None:
    image = np.ascontiguousarray(image)
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if image.dtype == np.int16 else 0
    ds.PixelData = image.tobytes()


def write_slice(
    path: Path,
    image: np.ndarray,
    *,
    position,
    orientation,
    spacing=(0.8, 0.9),
    thickness=2.0,
    series_uid: str,
    instance: int,
    acquisition: int = 1,
    modality: str = "MR",
    number: int = 1,
    description: str = "t1",
    slope: float | None = None,
    intercept: float | None = None,
    tilt: float | None = None,
) -> Path:
    """One classic single-frame image file."""
    ds = _base(CT_STORAGE if modality == "CT" else MR_STORAGE, series_uid, modality, number, description)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.InstanceNumber = instance
    ds.AcquisitionNumber = acquisition
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.SliceThickness = thickness
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if tilt is not None:
        ds.GantryDetectorTilt = tilt
    _pixels(ds, image)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    volumes: np.ndarray,
    *,
    orientation=(1, 0, 0, 0, 1, 0),
    origin=(-20.0, -30.0, 40.0),
    spacing=(0.8, 0.9),
    step=2.0,
    series_uid: str | None = None,
    number: int = 1,
    description: str = "t1",
    modality: str = "MR",
    reverse: bool = False,
    slope: float | None = None,
    intercept: float | None = None,
    skip: tuple[int, ...] = (),
    offsets: dict[int, np.ndarray] | None = None,
) -> list[Path]:
    """A classic series: ``volumes`` is (t, z, rows, cols); file names do not follow slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    volumes = np.asarray(volumes)
    if volumes.ndim == 3:
        volumes = volumes[None]
    uid = series_uid or generate_uid()
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    n_t, n_z = volumes.shape[:2]
    paths = []
    instance = 0
    for t in range(n_t):
        for z in range(n_z):
            if z in skip:
                continue
            instance += 1
            k = n_z - 1 - z if reverse else z
            position = np.asarray(origin) + k * step * normal * (-1 if reverse else 1)
            if reverse:
                position = np.asarray(origin) + (n_z - 1 - z) * step * normal
            if offsets and z in offsets:
                position = position + offsets[z]
            name = folder / f"IM{(instance * 7919) % 100003:06d}.dcm"
            paths.append(
                write_slice(
                    name, volumes[t, z], position=position, orientation=orientation, spacing=spacing,
                    series_uid=uid, instance=instance, acquisition=t + 1, modality=modality, number=number,
                    description=description, slope=slope, intercept=intercept,
                )
            )
    return paths


# ------------------------------------------------------------------------------------------- CSA
def csa2_bytes(tags: dict[str, tuple[str, list[str]]]) -> bytes:
    """A Siemens CSA2 ("SV10") header with ``name -> (VR, values)`` (the format nibabel's csareader reads)."""
    out = [b"SV10", b"\x04\x03\x02\x01", struct.pack("<2I", len(tags), 77)]
    for name, (vr, values) in tags.items():
        out.append(struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0, len(values), 77))
        for value in values:
            data = value.encode() + b"\x00"
            out.append(struct.pack("<4i", len(data), len(data), 77, len(data)))
            out.append(data + b"\x00" * ((4 - len(data) % 4) % 4))
    return b"".join(out)


def write_mosaic(
    path: Path,
    slices: np.ndarray,
    *,
    orientation,
    first_slice_position,
    spacing=(3.0, 3.0),
    step=3.5,
    series_uid: str,
    instance: int,
    flip_normal: bool = False,
    number: int = 5,
) -> Path:
    """A Siemens mosaic: ``slices`` (n, rows, cols) tiled on a ceil(sqrt(n)) grid, with a CSA header.

    ImagePositionPatient is written as Siemens does: the position of the top-left pixel of the
    whole mosaic as if it were one big slice.
    """
    n, rows, cols = slices.shape
    grid = int(np.ceil(np.sqrt(n)))
    mosaic = np.zeros((grid * rows, grid * cols), dtype=slices.dtype)
    for k in range(n):
        r, c = divmod(k, grid)
        mosaic[r * rows : (r + 1) * rows, c * cols : (c + 1) * cols] = slices[k]
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col) * (-1 if flip_normal else 1)
    # Siemens' IPP: shift the first slice's corner back by half the mosaic's extra size
    shift = ((grid * rows - rows) / 2) * spacing[0] * col + ((grid * cols - cols) / 2) * spacing[1] * row
    ipp = np.asarray(first_slice_position) - shift
    ds = _base(MR_STORAGE, series_uid, "MR", number, "fmri")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.InstanceNumber = instance
    ds.AcquisitionNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.SliceThickness = step
    ds.SpacingBetweenSlices = step
    ds.RepetitionTime = 2000
    ds.EchoTime = 30
    ds.AcquisitionMatrix = [0, cols, rows, 0]
    csa = csa2_bytes(
        {
            "NumberOfImagesInMosaic": ("US", [str(n)]),
            "SliceNormalVector": ("FD", [f"{v:.8f}" for v in normal]),
            "MosaicRefAcqTimes": ("FD", [f"{v:.1f}" for v in range(n)]),
        }
    )
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", csa)
    _pixels(ds, mosaic)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------- comparisons
def run_dcm2niix(folder: Path, out: Path) -> list[Path]:
    exe = dcm2niix_path()
    assert exe, "dcm2niix not found"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [exe, "-z", "n", "-b", "n", "-f", "%s_%j", "-o", str(out), str(folder)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(out.glob("*.nii"))


def assert_matches_nifti(array_tzyx: np.ndarray, geometry, nifti_path: Path, *, atol_mm: float = 1e-3) -> None:
    """Every voxel of ours sits within ``atol_mm`` of a dcm2niix voxel with the same value."""
    import nibabel as nib

    image = nib.load(str(nifti_path))
    theirs = np.asanyarray(image.get_fdata())
    if theirs.ndim == 3:
        theirs = theirs[..., None]
    ours = np.asarray(array_tzyx, dtype=np.float64)
    if ours.ndim == 3:
        ours = ours[None]
    assert theirs.shape[3] == ours.shape[0], f"volumes: dcm2niix {theirs.shape}, ours {ours.shape}"
    ours_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.index_to_physical()
    to_theirs = np.linalg.inv(image.affine) @ ours_ras
    nx, ny, nz = ours.shape[3], ours.shape[2], ours.shape[1]
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1).reshape(-1, 3)
    homog = np.c_[idx, np.ones(len(idx))].T
    j_float = (to_theirs @ homog)[:3]
    j = np.round(j_float).astype(int)
    world_ours = (ours_ras @ homog)[:3]
    world_theirs = (image.affine @ np.r_[j, np.ones((1, j.shape[1]))])[:3]
    error = np.abs(world_ours - world_theirs).max()
    assert error < atol_mm, f"voxels {error:.4g} mm from dcm2niix's"
    assert (j >= 0).all() and (j < np.array(theirs.shape[:3])[:, None]).all(), "grids do not overlap"
    linear = np.ravel_multi_index(tuple(j), theirs.shape[:3])
    assert len(linear) == int(np.prod(theirs.shape[:3])) and len(np.unique(linear)) == len(linear), "not the same grid"
    # integer data must be identical; rescaled float data within the float32 rounding of dcm2niix's
    # output (NIfTI stores scl_slope/scl_inter and float voxels as float32)
    integer = np.array_equal(theirs, np.round(theirs)) and np.array_equal(ours, np.round(ours))
    atol = 0.0 if integer else 8 * np.finfo(np.float32).eps * float(np.abs(theirs).max())
    for t in range(ours.shape[0]):
        mine = ours[t].transpose(2, 1, 0)[idx[:, 0], idx[:, 1], idx[:, 2]]
        other = theirs[j[0], j[1], j[2], t]
        assert np.allclose(mine, other, rtol=0, atol=atol), f"volume {t}: values differ (max {np.abs(mine - other).max():.3g})"


# ------------------------------------------------------------------- patient-identifying series
PATIENT = {
    "PatientName": "DOE^JANE^Q",
    "PatientID": "PID-90210-XYZ",
    "PatientBirthDate": "19610704",
    "PatientSex": "F",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "AccessionNumber": "ACC778899",
}
#: strings that must never appear in an output unless the user asks for the DICOM tags
PATIENT_STRINGS = ("DOE^JANE", "PID-90210-XYZ", "19610704", "Saint Elsewhere", "HOUSE^GREGORY", "ACC778899")


def oblique_direction(angle_deg: float = 20.0) -> np.ndarray:
    """Columns: row direction, column direction, slice normal (LPS), rotated about two axes."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(angle_deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def write_patient_series(
    folder: Path,
    array: np.ndarray,
    *,
    spacing_xyz=(0.8, 0.9, 2.5),
    origin=(-10.0, 20.0, 30.0),
    direction: np.ndarray | None = None,
    modality: str = "CT",
    patient: dict | None = PATIENT,
    series_uid: str | None = None,
    shuffle_names: bool = True,
) -> Path:
    """Write ``array`` (z, y, x; int16) as a classic single-frame series, one file per slice, with
    the patient-identifying attributes of ``patient`` (default :data:`PATIENT`) and shuffled names."""
    from pydicom.uid import CTImageStorage, MRImageStorage

    folder.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    study_uid, series_uid = generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    order = np.random.default_rng(3).permutation(array.shape[0]) if shuffle_names else np.arange(array.shape[0])
    for k in range(array.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = modality
        for key, value in (patient or {"PatientName": "", "PatientID": ""}).items():
            setattr(ds, key, value)
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101010", "1"
        ds.SeriesNumber, ds.InstanceNumber = 7, k + 1
        ds.SeriesDescription = "T1 DOE^JANE head" if patient else "head"
        ds.Manufacturer = "ACME"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness = spacing_xyz[2]
        position = np.asarray(origin, float) + k * spacing_xyz[2] * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(array[k].astype("<i2")).tobytes()
        ds.save_as(folder / f"im{order[k]:03d}.dcm", enforce_file_format=True)
    return folder


def phantom(shape=(6, 12, 16), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 image and its labels 0/1/2 (two nested ellipsoids) of ``shape`` (z, y, x)."""
    z, y, x = np.indices(shape)
    c = [(n - 1) * f for n, f in zip(shape, (0.4, 0.45, 0.55))]  # off-centre: a flip would show
    r = ((z - c[0]) / (shape[0] / 2)) ** 2 + ((y - c[1]) / (shape[1] / 2.5)) ** 2 + ((x - c[2]) / (shape[2] / 2.5)) ** 2
    labels = np.where(r < 0.35, 2, np.where(r < 1.0, 1, 0)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = (labels.astype(np.int16) * 300 + rng.normal(0, 20, shape)).astype(np.int16)
    return image, labels
