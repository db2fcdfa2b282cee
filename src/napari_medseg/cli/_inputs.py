"""The image-input options every command shares: ``--series-uid``, ``--series-number``, ``--volume``.

A command adds them with :func:`add_input_options` and reads each image input with
:func:`read_input`, so DICOM series choice and 4D handling behave the same everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_input_options", "read_input", "is_dicom_input"]


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--series-uid``, ``--series-number`` and ``--volume`` to ``parser``."""
    group = parser.add_argument_group("choosing the image in a DICOM folder or a 4D series")
    group.add_argument(
        "--series-uid", metavar="UID", help="DICOM folder holding several series: the SeriesInstanceUID to read"
    )
    group.add_argument(
        "--series-number", type=int, metavar="N", help="DICOM folder holding several series: the SeriesNumber to read"
    )
    group.add_argument(
        "--volume", type=int, metavar="K", help="4D series (DWI, fMRI): the volume to use, 0-based (3D operations need one)"
    )


def is_dicom_input(path: str | Path) -> bool:
    """True for a folder, a ``.dcm`` file or a file with the DICOM preamble."""
    from napari_medseg.dicom import is_dicom_file

    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(".dcm") or (p.is_file() and not p.suffix and is_dicom_file(p))


def read_input(args: argparse.Namespace, path: str | Path, *, labels: bool = False, allow_4d: bool = False):
    """Read one image input of a command with the shared options in ``args``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments; ``series_uid``, ``series_number`` and ``volume`` are used when present.
    path : str or Path
        The input (file or DICOM folder).
    labels : bool, default False
        Check and return a label map (non-negative integers in the smallest unsigned dtype).
    allow_4d : bool, default False
        Return a :class:`~napari_medseg.multivolume.MultiVolume` for a 4D series when no
        ``--volume`` is given (``info``, ``convert``); otherwise a 4D series without ``--volume``
        is refused, naming the number of volumes and the option.

    Raises
    ------
    UsageError
        If a DICOM option is given for a non-DICOM input, or ``--volume`` for a 3D image.
    MedsegError
        As the readers (several series and none chosen, integrity problems, ...).
    """
    from napari_medseg.cli import UsageError
    from napari_medseg.volume import Volume, as_label_array, read_volume

    uid = getattr(args, "series_uid", None)
    number = getattr(args, "series_number", None)
    volume = getattr(args, "volume", None)
    if volume is not None and volume < 0:
        raise UsageError(f"--volume {volume}: expected a 0-based volume index >= 0")
    p = Path(path)
    from napari_medseg.dicom_seg import is_dicom_seg

    if p.is_file() and is_dicom_seg(p):  # a DICOM Segmentation is a label map, not an image series
        if uid is not None or number is not None or volume not in (None, 0):
            raise UsageError(f"{p} is a DICOM Segmentation (one label map); --series-uid/--series-number/--volume do not apply")
        image = read_volume(p)
    elif p.exists() and is_dicom_input(p):
        from napari_medseg.dicom import read_dicom, read_dicom_volume

        if allow_4d and volume is None:
            image = read_dicom(p, series_uid=uid, series_number=number)
        else:
            image = read_dicom_volume(p, series_uid=uid, series_number=number, volume=volume)
    else:
        if uid is not None or number is not None:
            raise UsageError(f"--series-uid/--series-number choose a series in a DICOM folder; {p} is not one")
        image = read_volume(p)
        if volume not in (None, 0):
            raise UsageError(f"--volume {volume}: {p} holds a single 3D volume (only --volume 0 exists)")
    if getattr(args, "keep_dicom_tags", False) and p.exists() and is_dicom_input(p) and not is_dicom_seg(p):
        image = _with_every_dicom_tag(image, p, uid, number)
    if labels and isinstance(image, Volume):
        image = Volume(as_label_array(image.array, name=str(p)), image.geometry, image.metadata)
    return image


def _with_every_dicom_tag(image, path: Path, series_uid, series_number):
    """``--keep-dicom-tags``: the user asked for every attribute of the series' first file."""
    import pydicom

    from napari_medseg.dicom import find_series
    from napari_medseg.dicom_tags import dicom_metadata

    first = find_series(path, series_uid=series_uid, series_number=series_number).files[0]
    tags = dicom_metadata(pydicom.dcmread(first, stop_before_pixels=True), keep_dicom_tags=True)
    return type(image)(image.array, image.geometry, {**image.metadata, **tags})
