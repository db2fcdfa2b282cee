"""Hostile headers (issue 11, classes 7 and 8): refused with exit 2 naming the file and the field,
quickly and with little memory, before anything is allocated.

Real FIFOs (``os.mkfifo``) with a timeout on the subprocess, gzip bombs streamed on the fly, crafted
NIfTI / NRRD / MetaImage headers, and an address-space limit (``RLIMIT_AS``) on the child process so
an allocation of the claimed size would fail instead of passing unnoticed.
"""

from __future__ import annotations

import gzip
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medseg.errors import FileFormatError
from napari_medseg.volume import Geometry, Volume, read_volume, write_volume

LIMIT_AS = 1500 * 2**20  # 1.5 GiB of address space for the child


# A small Python process starts the CLI and reports its child's peak RSS: a child forked (or
# vforked) straight from the test process would count the test process's own resident memory in its
# ru_maxrss (Linux folds the parent's high-water mark into the child's at fork and exec), so after
# napari's tests ran here the peak read as > 1 GB for a CLI that used 100 MB.
_LAUNCHER = """
import os, resource, subprocess, sys
limit, report, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def limited():
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
code = subprocess.call(argv, preexec_fn=limited)
with open(report, "w") as fh:
    fh.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def _medseg(*args, limit_as: bool = False, timeout: float = 60) -> tuple[int, str, float]:
    """Run the CLI; return (exit code, stderr, the CLI process's own peak RSS in MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "maxrss"
        argv = [sys.executable, "-m", "napari_medseg.cli", *map(str, args)]
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(LIMIT_AS if limit_as else 0), str(report), *argv],
            stdout=out, stderr=err, start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"medseg {' '.join(map(str, args))} did not finish within {timeout} s (it blocked)")
        err.seek(0)
        return proc.returncode, err.read().decode("utf-8", "replace"), int(report.read_text()) / 1024


def _nifti_header(shape_xyz, dtype=np.uint8) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape_xyz)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    return header.binaryblock + b"\0\0\0\0"  # 348 bytes + the 4-byte extension flag = vox_offset 352


def _write_gzip_bomb(path: Path, header: bytes, n_zero_bytes: int) -> None:
    """A valid gzip stream of ``header`` + ``n_zero_bytes`` zeros, without holding them in memory:
    one 16 MiB block of zeros is deflated once (full flush: byte-aligned, no history) and repeated."""
    chunk = 1 << 24
    assert n_zero_bytes % chunk == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    zeros = bytes(chunk)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip member header
        fh.write(head)
        for _ in range(n_zero_bytes // chunk):
            fh.write(block)
            crc = zlib.crc32(zeros, crc)
        fh.write(compressor.flush(zlib.Z_FINISH))
        fh.write((crc & 0xFFFFFFFF).to_bytes(4, "little") + ((len(header) + n_zero_bytes) & 0xFFFFFFFF).to_bytes(4, "little"))


# --------------------------------------------------------------------------------- class 7: FIFOs
@pytest.fixture
def no_hang():
    """In-process FIFO tests: a regression that opens the FIFO fails after 30 s instead of hanging."""

    def _raise(*_):
        raise TimeoutError("blocked on a FIFO for 30 s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "x.nii.gz"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["info", "{f}"],
        ["convert", "{f}", "{out}"],
        ["evaluate", "--pred", "{f}", "--ref", "{f}"],
        ["postprocess", "{f}", "{out}", "--fill-holes"],
        ["predict", "{f}", "{out}", "--model", "brain-tissue-t1-demo", "--no-progress"],
    ],
    ids=lambda c: c[0],
)
def test_fifo_named_like_a_volume_is_refused_at_once(tmp_path, fifo, command):
    args = [a.format(f=fifo, out=tmp_path / "out.nii.gz") for a in command]
    rc, err, _ = _medseg(*args, timeout=90)
    assert rc == 2, err
    assert f"{fifo}: is a FIFO (named pipe), not a regular file" in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_fifo_in_the_napari_reader_is_refused_at_once(fifo):
    code = (
        "import sys; from napari_medseg.plugin._reader import napari_get_reader;"
        "from napari_medseg.errors import MedsegError\n"
        "from napari_medseg.plugin import _reader\n"
        "try:\n    _reader._volume_layers(__import__('pathlib').Path(sys.argv[1]))\n"
        "except MedsegError as e:\n    print('refused:', e)\n"
        "print('reader:', napari_get_reader(sys.argv[1]) is not None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=120)
    assert f"refused: {fifo}: is a FIFO (named pipe)" in proc.stdout, proc.stderr


def test_detached_header_whose_data_file_is_a_fifo_is_refused(tmp_path, no_hang):
    os.mkfifo(tmp_path / "data.raw")
    (tmp_path / "v.nhdr").write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\nspacings: 1 1 1\ndata file: data.raw\n"
    )
    (tmp_path / "v.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\nElementDataFile = data.raw\n"
    )
    for name in ("v.nhdr", "v.mhd"):
        with pytest.raises(FileFormatError, match=r"data\.raw: is a FIFO"):
            read_volume(tmp_path / name)


# ------------------------------------------------------------------- class 7: crafted geometry fields
def _nifti(tmp_path, name, **fields) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((4, 3, 2))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.diag([2.0, 3.0, 4.0, 1.0]), code=1)
    header.set_sform(np.diag([2.0, 3.0, 4.0, 1.0]), code=0)
    for key, value in fields.items():
        if key.startswith("pixdim"):
            header["pixdim"][int(key[-1])] = value
        elif key.startswith("srow"):
            header[key] = value
            header["sform_code"] = 1
        else:
            header[key] = value
    path = tmp_path / name
    path.write_bytes(header.binaryblock + b"\0\0\0\0" + bytes(24))
    return path


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"pixdim1": np.nan}, r"pixdim\[1:4\] = \(nan 3 4\): value 0 is nan"),
        ({"pixdim2": 0.0}, r"pixdim\[1:4\] = \(2 0 4\): value 1 is 0"),
        ({"pixdim3": -4.0}, r"pixdim\[1:4\] = \(2 3 -4\): value 2 is -4"),
        ({"pixdim1": 1e30}, r"pixdim\[1:4\] = .*1e\+30 mm, outside the plausible range"),
        ({"pixdim1": 1e-9}, r"pixdim\[1:4\] = .*1e-09 mm, outside the plausible range"),
        ({"pixdim0": 0.5}, r"pixdim\[0\] \(qfac\) = 0.5"),
        ({"qoffset_x": np.inf}, r"qoffset_x/y/z = .*inf.*expected finite"),
        ({"quatern_b": np.nan}, r"quatern_b/c/d = .*nan"),
        ({"srow_x": [np.nan, 0, 0, 0]}, r"sform \(srow_x/y/z\) has non-finite values"),
        ({"srow_x": [0, 0, 0, 0]}, r"sform \(srow_x/y/z column lengths\) = \(0 3 4\): value 0 is 0"),
        ({"srow_y": [0, 3, 0, 1e30]}, r"sform \(srow_x/y/z offsets\) = .*more than"),
        ({"dim": [3, 4, 0, 2, 1, 1, 1, 1]}, r"dim\[2\] = 0: expected a size >= 1"),
    ],
)
def test_bad_nifti_geometry_fields_are_refused_naming_the_field(tmp_path, fields, message):
    path = _nifti(tmp_path, "bad.nii", **fields)
    with pytest.raises(FileFormatError, match=rf"bad\.nii: header field {message}"):
        read_volume(path)


def test_cli_names_the_file_and_field(tmp_path):
    path = _nifti(tmp_path, "zero.nii", pixdim2=0.0)
    rc, err, _ = _medseg("info", path)
    assert rc == 2
    assert err.strip().splitlines() == [f"medseg info: error: {path}: header field pixdim[1:4] = (2 0 4): value 1 is 0; expected finite voxel sizes > 0 mm"]


NRRD_CASES = {
    "nan": ("spacings: nan 1 1", r"spacings = \(nan 1 1\): value 0 is nan"),
    "zero": ("spacings: 1 0 1", r"spacings = \(1 0 1\): value 1 is 0"),
    "negative": ("spacings: 1 1 -2", r"spacings = \(1 1 -2\): value 2 is -2"),
    "huge": ("space: left-posterior-superior\nspace directions: (1e30,0,0) (0,1,0) (0,0,1)", r"space directions \(vector lengths\) = \(1e\+30 1 1\).*plausible range"),
    "sheared": ("space: left-posterior-superior\nspace directions: (1,0,0) (1,1,0) (0,0,1)", r"space directions = .* not orthonormal"),
    "origin": ("space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,nan,0)", r"space origin = \(0 nan 0\): expected finite"),
}
MHA_CASES = {
    "nan": ("ElementSpacing = nan 1 1", r"ElementSpacing = \(nan 1 1\): value 0 is nan"),
    "zero": ("ElementSpacing = 1 0 1", r"ElementSpacing = \(1 0 1\): value 1 is 0"),
    "negative": ("ElementSpacing = 1 1 -2", r"ElementSpacing = \(1 1 -2\): value 2 is -2"),
    "huge": ("ElementSpacing = 1e30 1 1", r"ElementSpacing = \(1e\+30 1 1\).*plausible range"),
    "sheared": ("TransformMatrix = 1 0 0 1 1 0 0 0 1", r"TransformMatrix = .* not orthonormal"),
    "origin": ("Offset = nan 0 0", r"Offset = \(nan 0 0\): expected finite"),
}


@pytest.mark.parametrize("case", sorted(NRRD_CASES))
def test_bad_nrrd_geometry_fields_are_refused(tmp_path, case):
    extra, message = NRRD_CASES[case]
    path = tmp_path / f"{case}.nrrd"
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\n{extra}\n\n".encode() + bytes(24))
    with pytest.raises(FileFormatError, match=rf"{case}\.nrrd: header field {message}"):
        read_volume(path)


@pytest.mark.parametrize("case", sorted(MHA_CASES))
def test_bad_metaimage_geometry_fields_are_refused(tmp_path, case):
    extra, message = MHA_CASES[case]
    path = tmp_path / f"{case}.mha"
    path.write_bytes(
        f"ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\n{extra}\nElementDataFile = LOCAL\n".encode() + bytes(24)
    )
    with pytest.raises(FileFormatError, match=rf"{case}\.mha: header field {message}"):
        read_volume(path)


def test_good_headers_still_read_with_their_geometry(tmp_path):
    # a negative NRRD space direction is a direction, not a bad spacing; vector axes have nan spacing
    path = tmp_path / "flip.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\nspace: left-posterior-superior\n"
        b"space directions: (-2,0,0) (0,1,0) (0,0,1)\nspace origin: (1,2,3)\n\n" + bytes(24)
    )
    volume = read_volume(path)
    assert volume.geometry.spacing == (2.0, 1.0, 1.0) and volume.geometry.direction[0] == -1.0
    vector = Volume(np.zeros((2, 3, 4, 3), np.float32), Geometry((0.5, 0.6, 0.7)))
    for suffix in (".nrrd", ".mha", ".nii.gz"):
        back = read_volume(write_volume(vector, tmp_path / f"vec{suffix}"))
        assert back.array.shape == (2, 3, 4, 3) and np.allclose(back.geometry.spacing, (0.5, 0.6, 0.7))


# ------------------------------------------------------------------------------ class 8: memory bombs
def test_gzip_bomb_is_refused_quickly_with_little_memory(tmp_path):
    # 2.7 GB of zeros behind a truthful header: fine on a big machine, refused under 1.5 GiB
    path = tmp_path / "bomb.nii.gz"
    n = 161 * (1 << 24)  # 2.70 GB
    _write_gzip_bomb(path, _nifti_header((1 << 12, 1 << 12, n >> 24)), n)
    assert path.stat().st_size < 4_000_000
    rc, err, peak_mb = _medseg("info", path, limit_as=True)
    assert rc == 2, err
    assert "bomb.nii.gz: the header claims 4096 x 4096 x 161 voxels of uint8; reading it needs 2.7 GB of memory" in err
    assert peak_mb < 700


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_tiny_header_claiming_1500_cubed_voxels_is_refused(tmp_path, suffix):
    header = _nifti_header((1500, 1500, 1500))
    path = tmp_path / f"claim{suffix}"
    path.write_bytes(gzip.compress(header) if suffix == ".nii.gz" else header)
    assert path.stat().st_size < 400
    rc, err, peak_mb = _medseg("info", path, limit_as=True)
    assert rc == 2, err
    assert "claims 1500 x 1500 x 1500 voxels of uint8" in err
    assert ("the file holds 0 bytes of voxel data" in err) if suffix == ".nii" else ("needs 3.4 GB of memory" in err)
    assert peak_mb < 700
    # without the address-space limit the same files are refused as truncated, still without touching GBs
    rc, err, peak_mb = _medseg("info", path)
    assert rc == 2 and "truncated" in err and peak_mb < 700


@pytest.mark.parametrize(
    "name, header, message",
    [
        ("raw.nrrd", "NRRD0004\ntype: uint16\ndimension: 3\nsizes: 1500 1500 1500\nencoding: raw\n\n", r"the file holds 0 bytes"),
        ("gz.nrrd", "NRRD0004\ntype: uint16\ndimension: 3\nsizes: 1500 1500 1500\nencoding: gzip\n\n", r"needs 6\.8 GB of memory"),
        ("raw.mha", "NDims = 3\nDimSize = 1500 1500 1500\nElementType = MET_USHORT\nElementDataFile = LOCAL\n", r"the file holds 0 bytes"),
        ("gz.mha", "NDims = 3\nDimSize = 1500 1500 1500\nElementType = MET_USHORT\nCompressedData = True\nElementDataFile = LOCAL\n", r"needs 6\.8 GB of memory"),
    ],
)
def test_nrrd_and_metaimage_claiming_huge_sizes_are_refused(tmp_path, name, header, message):
    path = tmp_path / name
    path.write_text(header)
    rc, err, peak_mb = _medseg("info", path, limit_as=True)
    assert rc == 2, err
    assert f"{name}: " in err and "the header claims 1500 x 1500 x 1500 voxels" in err
    assert re.search(message, err), err
    assert peak_mb < 700


def test_truncated_gzip_stream_is_refused(tmp_path):
    path = write_volume(Volume(np.ones((8, 16, 16), np.float32)), tmp_path / "v.nii.gz")
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(FileFormatError, match=r"cut\.nii\.gz: cannot read the file; it is truncated, corrupt"):
        read_volume(cut)


def test_mc_samples_beyond_the_documented_limit_is_refused_before_work(tmp_path):
    from napari_medseg.uncertainty import MAX_MC_SAMPLES

    image = write_volume(Volume(np.ones((4, 8, 8), np.float32)), tmp_path / "t1.nii.gz")
    out = tmp_path / "labels.nii.gz"
    rc, err, _ = _medseg("predict", image, out, "--model", "brain-tissue-t1-demo", "--mc-samples", "100000000", "--no-progress")
    assert rc == 2, err
    assert f"--mc-samples=100000000: expected an integer from 0 (deterministic) to {MAX_MC_SAMPLES}" in err
    assert not out.exists()


def test_resampling_to_an_absurd_grid_is_refused_before_allocating():
    from napari_medseg.errors import InvalidInputError
    from napari_medseg.volume import resample_to_spacing

    volume = Volume(np.ones((4, 4, 4), np.float32), Geometry((1e5, 1e5, 1e5)))  # a legal but enormous spacing
    with pytest.raises(InvalidInputError, match=r"resampling to a 400000 x 400000 x 400000 grid \(z, y, x\) needs .* of memory"):
        resample_to_spacing(volume, (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mc_samples": 10**8}, r"mc_samples=100000000: expected an integer from 0 \(deterministic\) to 1000"),
     ({"batch_size": 10**8}, r"batch_size=100000000: expected an integer from 1 to 4096")],
)
def test_count_parameters_are_bounded_in_the_core(kwargs, message):
    torch = pytest.importorskip("torch")
    from napari_medseg.errors import InvalidInputError
    from napari_medseg.inference import sliding_window_moments

    net = torch.nn.Conv3d(1, 2, 1)
    with pytest.raises(InvalidInputError, match=message):
        sliding_window_moments(np.zeros((1, 8, 8, 8), np.float32), net, patch_size=(8, 8, 8), **kwargs)


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("setpriv"), reason="needs root and setpriv to drop capabilities")
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_unreadable_file_says_permission_denied(tmp_path, suffix):
    path = write_volume(Volume(np.ones((2, 3, 4), np.float32)), tmp_path / f"v{suffix}")
    path.chmod(0)
    proc = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "napari_medseg.cli", "info", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"medseg info: error: {path}: cannot read: permission denied"


def test_fifo_named_imzml_is_refused_at_once(tmp_path, no_hang):
    from napari_medseg.registration.imzml import open_imzml

    os.mkfifo(tmp_path / "maldi.imzML")
    with pytest.raises(FileFormatError, match=r"maldi\.imzML: is a FIFO"):
        open_imzml(tmp_path / "maldi.imzML")
    (tmp_path / "other.imzML").write_text("<mzML/>")
    os.mkfifo(tmp_path / "other.ibd")
    with pytest.raises(FileFormatError, match=r"other\.ibd: is a FIFO"):
        open_imzml(tmp_path / "other.imzML")
