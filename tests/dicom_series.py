"""Real DICOM image series written with pydicom for the tests (tiny: a few slices of a few pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def write_series(
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
    """Write ``array`` (z, y, x; int16) as a classic single-frame series, one file per slice."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
    from pydicom import Dataset

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
