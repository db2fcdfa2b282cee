"""Take the screenshots of docs/napari.md from a real napari viewer, each widget after a real run.

Every picture is the whole napari window after the widget named in it ran on the demo data:

1. ``segment.png``: Segment, the shipped ``brain-tissue-t1-demo`` model on the MNI152 T1 with
   Monte-Carlo dropout (``--mc-samples``), the view centred on the most uncertain region;
2. ``postprocess.png``: Post-process, opening 1 mm (all labels) + keep the largest component,
   preview shown, applied, volume table filled;
3. ``evaluate.png``: Evaluate, the prediction against the reference tissue labels;
4. ``register.png``: Register, the synthetic MALDI/MRI pair (``--register-iterations`` per level);
5. ``train.png``: Train / fine-tune, a real fine-tune job of the demo model on the demo layers
   (``--train-epochs`` epochs of 2 iterations), finished, loss in the plot;
6. ``models.png``: Models, the registry after "Verify all".

The user's folders and settings are untouched: napari's settings file, the jobs folder and the
user model folder are pointed at a temporary folder (removed at the end). Nothing is downloaded.
The script stops with exit status 1 if a run does not end in "done".

Usage::

    xvfb-run -a python docs/screenshots.py [--out docs/images] [--mc-samples 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DEMO_MODEL = "brain-tissue-t1-demo"
T1 = "MNI152 T1"
REFERENCE = "MNI152 tissue labels"
PREDICTION = f"{T1} [{DEMO_MODEL}]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images",
                        help="output folder for the PNGs (default: docs/images)")
    parser.add_argument("--mc-samples", type=int, default=2, help="MC dropout samples of the segmentation (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--register-iterations", type=int, default=400,
                        help="max iterations per level of the registration (default 400, the widget's)")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of the fine-tune job (default 1)")
    parser.add_argument("--size", type=int, nargs=2, default=(1600, 1000), metavar=("W", "H"),
                        help="window size in pixels (default 1600 1000)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="take only these pictures (segment postprocess evaluate train models register); "
                             "segment always runs when a later one needs its labels")
    return parser.parse_args(argv)


def isolate_user_state(tmp: Path) -> None:
    """Point napari's settings and the MedSeg jobs and user model folders at ``tmp`` (before imports)."""
    for name in ("settings", "jobs", "user_models"):
        (tmp / name).mkdir()
    os.environ["NAPARI_CONFIG"] = str(tmp / "settings" / "settings.yaml")
    os.environ["MEDSEG_JOBS_DIR"] = str(tmp / "jobs")
    os.environ["MEDSEG_USER_MODELS"] = str(tmp / "user_models")
    os.environ.pop("MEDSEG_MODELS", None)  # the shipped models only


class Shooter:
    """The viewer, the Qt event loop helpers and the screenshot writer."""

    def __init__(self, out: Path, size: tuple[int, int]) -> None:
        import napari
        from napari.settings import get_settings
        from qtpy.QtWidgets import QApplication

        settings = get_settings()
        # informational toasts would cover the canvas; errors still show (and stop the script below)
        settings.application.gui_notification_level = "error"
        self.out = out
        self.viewer = napari.Viewer(title="napari-medseg", show=True)
        self.app = QApplication.instance()
        self.window = self.viewer.window._qt_window
        self.window.resize(*size)
        self.dock = self.widget = None
        self.wait(0.5)

    # ------------------------------------------------------------------------------ event loop
    def wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def wait_for(self, condition, *, what: str, timeout_s: float = 600.0) -> None:
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout_s:
                raise SystemExit(f"screenshots: timed out waiting for {what}")
            self.app.processEvents()
            time.sleep(0.01)

    def run_task(self, runner, start, *, what: str) -> float:
        """Start a TaskRunner task (``start()``), process events until it ends; stop unless it is done."""
        t0 = time.monotonic()
        result = start()
        self.wait(0.05)
        self.wait_for(lambda: not runner.running, what=what)
        self.wait(0.3)  # the main-thread steps that add the layers
        if runner.last_outcome != "done":
            raise SystemExit(f"screenshots: {what} ended {runner.last_outcome}: {runner.last_error}")
        seconds = time.monotonic() - t0
        print(f"  {what}: {seconds:.1f} s", flush=True)
        return result

    # ---------------------------------------------------------------------------------- widgets
    def dock_widget(self, display_name: str):
        """Dock the plugin's widget through its manifest entry (replacing the previous one)."""
        if self.dock is not None:
            # close() first: napari's remove_dock_widget only unparents the widget, so its
            # closeEvent (which disconnects it from the viewer and removes a preview layer) would
            # not run and the previous widget would keep reacting to the next widget's layers
            self.widget.close()
            self.viewer.window.remove_dock_widget(self.dock)
            self.dock = None
        self.dock, widget = self.viewer.window.add_plugin_dock_widget("napari-medseg", display_name)
        self.widget = widget
        self.wait(0.2)
        return widget

    def show_only(self, *names: str) -> None:
        for layer in self.viewer.layers:
            layer.visible = layer.name in names

    def axial_middle(self) -> None:
        """2D axial view through the middle of the volume, fitted to the canvas."""
        self.viewer.dims.ndisplay = 2
        ndim = self.viewer.dims.ndim
        middle = [(lo + hi) / 2 for lo, hi, _ in self.viewer.dims.range]
        self.viewer.dims.set_point(list(range(ndim)), middle)
        self.viewer.reset_view()

    def shoot(self, name: str) -> Path:
        """Save the whole window as ``<out>/<name>.png`` (palette PNG to keep it small)."""
        from PIL import Image

        self.wait(0.5)
        array = self.viewer.screenshot(canvas_only=False, flash=False)
        image = Image.fromarray(array[..., :3])
        path = self.out / f"{name}.png"
        tmp = path.with_suffix(".tmp.png")
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(tmp, optimize=True)
        os.replace(tmp, path)
        print(f"  wrote {path} ({image.width}x{image.height}, {path.stat().st_size / 1024:.0f} KB)", flush=True)
        return path


# ------------------------------------------------------------------------------------- pictures
def first_inner_region(regions, shape, *, margin: float = 0.15) -> int | None:
    """Index of the first (most uncertain) region whose centroid is not near a face of the volume.

    The top of the list can be regions on the border slices of the field of view (a 2D model sees
    little there), which make a dark picture; the docs say which region the picture shows.
    """
    for index, region in enumerate(regions):
        inside = all(margin * n <= c <= (1 - margin) * n for c, n in zip(region.centroid_zyx, shape))
        print(f"  region #{region.region_id}: centroid (z, y, x) {tuple(round(c) for c in region.centroid_zyx)}, "
              f"{region.volume_mm3:.0f} mm3, mean {region.mean:.3f}{'  <- shown' if inside else ''}", flush=True)
        if inside:
            return index
    return 0 if regions else None


def segment(shot: Shooter, mc_samples: int) -> None:
    widget = shot.dock_widget("Segment")
    widget.model_combo.setCurrentText(DEMO_MODEL)
    widget.channel_combos[0].setCurrentText(T1)
    widget.device_combo.setCurrentText("cpu")
    widget.mc_spin.setValue(mc_samples)
    widget.uncertainty_check.setChecked(True)
    shot.run_task(widget.runner, widget.run, what=f"segmentation ({mc_samples} MC samples)")
    uncertainty = "mutual information" if mc_samples > 0 else "entropy"
    shot.show_only(T1, PREDICTION, f"{PREDICTION} {uncertainty}")
    labels = shot.viewer.layers[PREDICTION]
    labels.opacity = 0.45
    shot.viewer.layers.selection.active = labels
    shot.axial_middle()
    index = first_inner_region(widget.regions, shot.viewer.layers[PREDICTION].data.shape)
    if index is not None:
        widget.regions_list.setCurrentRow(index)
        widget.go_to_region(index)
        getattr(shot.viewer, "scene", shot.viewer).camera.zoom *= 1.3
    shot.shoot("segment")


def postprocess(shot: Shooter) -> None:
    widget = shot.dock_widget("Post-process")
    shot.show_only(T1, PREDICTION)
    shot.axial_middle()
    widget.layer_combo.set_layer(shot.viewer.layers[PREDICTION])
    assert widget.add_step("opening", 1.0, "all") and widget.add_step("keep N largest components", 1, "all")
    shot.wait(0.2)
    shot.wait_for(lambda: widget.preview_layer is not None and not widget.preview_runner.running, what="the preview")
    shot.wait(0.3)
    shot.run_task(widget.runner, widget.apply, what="post-processing (apply)")
    shot.wait_for(lambda: widget.preview_layer is not None and not widget.preview_runner.running, what="the preview")
    applied = widget.applied_layers()[-1] if widget.applied_layers() else None
    names = [T1, widget.preview_layer.name]
    if applied is not None:
        names.append(applied.name)
        applied.opacity = 0.45
    shot.show_only(*names)
    shot.viewer.layers.selection.active = widget.preview_layer
    shot.shoot("postprocess")


def evaluate(shot: Shooter) -> None:
    widget = shot.dock_widget("Evaluate")
    widget.pred_combo.set_layer(shot.viewer.layers[PREDICTION])
    widget.ref_combo.set_layer(shot.viewer.layers[REFERENCE])
    shot.run_task(widget.runner, widget.run, what="evaluation")
    shot.show_only(T1, PREDICTION, REFERENCE)
    shot.viewer.layers[PREDICTION].opacity = 0.45
    shot.viewer.layers.selection.active = shot.viewer.layers[PREDICTION]
    shot.axial_middle()
    shot.shoot("evaluate")


def train(shot: Shooter, epochs: int) -> None:
    from napari_medseg.jobs import JobStatus

    widget = shot.dock_widget("Train / fine-tune")
    widget.mode_combo.setCurrentText("fine-tune")
    widget.model_combo.setCurrentText(DEMO_MODEL)
    widget.layers_check.setChecked(True)
    widget.image_combo.setCurrentText(T1)
    widget.labels_combo.setCurrentText(REFERENCE)
    widget.epochs_spin.setValue(epochs)
    widget.iterations_spin.setValue(2)
    widget.batch_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    widget.name_edit.setText("brain-tissue-t1-demo-ft")
    shot.run_task(widget.launch_runner, widget._on_launch_clicked, what="launching the fine-tune job")
    job = widget.last_launched
    t0 = time.monotonic()
    shot.wait_for(lambda: job.id in widget.views and widget.views[job.id].status.is_final, what="the fine-tune job")
    status = widget.views[job.id].status
    print(f"  fine-tune job {job.id}: {status} after {time.monotonic() - t0:.1f} s", flush=True)
    if status != JobStatus.DONE:
        print(job.log_tail(), file=sys.stderr)
        raise SystemExit(f"screenshots: the fine-tune job ended {status}")
    widget.select_job(job.id)
    widget._update_plot()
    shot.show_only(T1, REFERENCE)
    shot.axial_middle()
    shot.shoot("train")


def models(shot: Shooter) -> None:
    widget = shot.dock_widget("Models")
    shot.run_task(widget.runner, widget.verify, what="verifying the registry")
    widget.select(DEMO_MODEL)
    shot.shoot("models")


def register(shot: Shooter, iterations: int) -> None:
    shot.viewer.layers.clear()
    shot.viewer.open_sample("napari-medseg", "maldi_mri_pair")
    widget = shot.dock_widget("Register (MALDI-MRI)")
    widget.fixed_combo.setCurrentText("MRI (fixed)")
    widget.moving_combo.setCurrentText("MALDI (moving)")
    widget.fixed_mask_combo.setCurrentText("MRI mask")
    widget.moving_mask_combo.setCurrentText("MALDI mask")
    widget.iterations_spin.setValue(iterations)
    shot.run_task(widget.runner, widget._on_run_clicked, what=f"registration ({iterations} iterations / level)")
    shot.show_only("MRI (fixed)", "MALDI (moving) registered")
    registered = shot.viewer.layers["MALDI (moving) registered"]
    registered.colormap, registered.blending, registered.opacity = "magma", "additive", 0.7
    shot.viewer.layers.selection.active = registered
    shot.viewer.reset_view()
    shot.shoot("register")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.only or ("segment", "postprocess", "evaluate", "train", "models", "register"))
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="medseg-screenshots-"))
    try:
        isolate_user_state(tmp)
        import torch

        torch.set_num_threads(args.threads)
        shot = Shooter(args.out, tuple(args.size))
        t0 = time.monotonic()
        if wanted & {"segment", "postprocess", "evaluate", "train"}:
            shot.viewer.open_sample("napari-medseg", "demo_mri")
            shot.axial_middle()
            if wanted & {"segment", "postprocess", "evaluate"}:
                segment(shot, args.mc_samples)  # the labels the next two use
            if "postprocess" in wanted:
                postprocess(shot)
            if "evaluate" in wanted:
                evaluate(shot)
            if "train" in wanted:
                train(shot, args.train_epochs)
        if "models" in wanted:
            models(shot)
        if "register" in wanted:
            register(shot, args.register_iterations)
        print(f"screenshots: done in {time.monotonic() - t0:.0f} s", flush=True)
        shot.viewer.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
