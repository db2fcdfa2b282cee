"""Our reads and writes silence ITK's warnings only while they run; the host process keeps its setting."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import numpy as np
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalWarningDisplay({before})
from napari_medseg.volume import Geometry, Volume, read_volume, write_volume
import napari_medseg.multivolume  # noqa: F401 - importing it must not change the setting either
seen = [sitk.ProcessObject.GetGlobalWarningDisplay()]
path = write_volume(Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), Geometry()), sys.argv[1] + "/a.nrrd")
seen.append(sitk.ProcessObject.GetGlobalWarningDisplay())
read_volume(path)
seen.append(sitk.ProcessObject.GetGlobalWarningDisplay())
try:
    read_volume(sys.argv[1] + "/missing.nrrd")
except Exception:
    pass
seen.append(sitk.ProcessObject.GetGlobalWarningDisplay())
print(seen)
"""


def test_importing_and_reading_leave_the_itk_warning_setting_alone(tmp_path):
    for before in (True, False):
        proc = subprocess.run([sys.executable, "-c", SCRIPT.format(before=before), str(tmp_path)],
                              capture_output=True, text=True, check=True)
        assert proc.stdout.strip() == str([before] * 4)


def test_the_switch_is_off_inside_our_reads_and_nests():
    import SimpleITK as sitk

    from napari_medseg.volume import quiet_itk_warnings

    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    try:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)
        with quiet_itk_warnings():
            assert not sitk.ProcessObject.GetGlobalWarningDisplay()
            with quiet_itk_warnings():
                assert not sitk.ProcessObject.GetGlobalWarningDisplay()
            assert not sitk.ProcessObject.GetGlobalWarningDisplay()  # the outer block is still reading
        assert sitk.ProcessObject.GetGlobalWarningDisplay()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)
