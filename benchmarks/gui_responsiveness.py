"""GUI responsiveness: the longest gap of napari's Qt event loop while segmenting the demo volume.

A QTimer ticks every ``--tick-ms`` (default 10 ms) on the GUI thread and records the time between
consecutive ticks; the longest gap is how long the GUI was frozen. Two variants, same viewer, same
model (the shipped ``brain-tissue-t1-demo``), same input (the MNI152 T1 demo volume, 197x233x189,
opened with its reference labels through the plugin's ``demo_mri`` sample, as a user does; the gap
of that opening is reported too: napari builds its first Image and Labels visuals of a session
then), same parameters (``--mc-samples``, default 2), in one run:

widget             the Segment dock widget's Run button: ``predict`` in a napari worker thread,
                   progress through queued Qt signals, then the output layers added on the GUI
                   thread one per event-loop turn; reported for the whole run and split into
                   the computing phase and the layer-adding phase
napari_add_labels  napari's own floor: ``viewer.add_labels`` of one label array of the same size
                   (napari builds each layer's vispy visual on the GUI thread; no plugin avoids it)
blocking           the baseline: the same worker function called directly on the GUI thread
                   (what a plugin without workers does), then the same layers added

Target: the widget's longest gap < 100 ms. The last line is one JSON object with
``longest_gap_ms`` per variant, the widget's gaps per phase, ``gap_ratio_blocking_vs_widget``,
ticks, the run times and the p99 gap. Runs under Xvfb (``xvfb-run -a python benchmarks/gui_responsiveness.py``) or any display.

Usage::

    xvfb-run -a python benchmarks/gui_responsiveness.py [--mc-samples 2] [--threads 2] [--tick-ms 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


class GapMeter:
    """Records the gaps between ticks of a QTimer on the GUI thread."""

    def __init__(self, tick_ms: int) -> None:
        from qtpy.QtCore import QTimer

        self.tick_ms = tick_ms
        self.timer = QTimer()
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(self._tick)
        self.gaps_ms: list[float] = []
        self.ends: list[float] = []  # when each gap ended (perf_counter seconds)
        self._last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps_ms.append((now - self._last) * 1000.0)
            self.ends.append(now)
        self._last = now

    def longest_between(self, start: float, stop: float) -> float:
        """The longest gap that ended in [start, stop] (ms)."""
        inside = [g for g, end in zip(self.gaps_ms, self.ends) if start <= end <= stop]
        return round(max(inside), 1) if inside else float("nan")

    def start(self) -> None:
        self.gaps_ms.clear()
        self.ends.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> dict:
        self._tick()  # the gap up to now counts too (a blocking call ends in one long gap)
        self.timer.stop()
        gaps = sorted(self.gaps_ms)
        p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] if gaps else float("nan")
        return {"longest_gap_ms": round(max(gaps), 1), "p99_gap_ms": round(p99, 1), "ticks": len(gaps)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mc-samples", type=int, default=2, help="Monte-Carlo dropout samples (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--tick-ms", type=int, default=10, help="timer interval on the GUI thread (default 10 ms)")
    parser.add_argument("--model", default="brain-tissue-t1-demo", help="registry model (default the shipped demo)")
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_medseg.plugin._segment import SegmentWidget, run_segmentation

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    results: dict[str, dict] = {}
    meter = GapMeter(args.tick_ms)

    # --- open the demo as a user does (the T1 and its reference labels, through the plugin's sample):
    # napari's first Image and Labels layers of a session cost it ~0.5 s each (vispy visual set-up,
    # once per session); reported for context, not part of the segmentation
    meter.start()
    start = time.perf_counter()
    sample_layers = viewer.open_sample("napari-medseg", "demo_mri")
    app.processEvents()
    results["open_demo_sample"] = {**meter.stop(), "seconds": round(time.perf_counter() - start, 2)}
    image_layer = next(layer for layer in sample_layers if type(layer).__name__ == "Image")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.model_combo.setCurrentText(args.model)
    if widget.model_combo.currentText() != args.model:
        parser.error(f"--model {args.model!r} is not in the registry")
    widget.channel_combos[0].setCurrentText(image_layer.name)
    widget.mc_spin.setValue(args.mc_samples)
    for _ in range(20):  # let the window settle
        app.processEvents()
        time.sleep(0.01)

    # --- widget: Run in a worker, wait with the event loop running
    layers_before = len(viewer.layers)
    meter.start()
    start = time.perf_counter()
    returned_at: list[float] = []
    worker = widget.run()
    worker.returned.connect(lambda _result: returned_at.append(time.perf_counter()))
    while widget.runner.running:
        app.processEvents()
        time.sleep(0.001)
    elapsed = time.perf_counter() - start
    for _ in range(10):  # let the last layer draw
        app.processEvents()
        time.sleep(0.005)
    end = time.perf_counter()
    results["widget"] = {**meter.stop(), "seconds": round(elapsed, 2), "outcome": widget.runner.last_outcome,
                         "layers_added": len(viewer.layers) - layers_before,
                         "longest_gap_computing_ms": meter.longest_between(start, returned_at[0]),
                         "longest_gap_adding_layers_ms": meter.longest_between(returned_at[0], end)}

    # --- napari's own floor: adding one Labels layer of the same size straight to the viewer
    labels_array = viewer.layers[-1].data.copy()
    meter.start()
    start = time.perf_counter()
    viewer.add_labels(labels_array, scale=image_layer.scale, translate=image_layer.translate, name="floor")
    app.processEvents()
    results["napari_add_labels"] = {**meter.stop(), "seconds": round(time.perf_counter() - start, 2)}

    # --- blocking baseline: the same core call (the widget's worker function) on the GUI thread
    meter.start()
    start = time.perf_counter()
    result = run_segmentation([image_layer], widget.model, device=widget.device_combo.currentText(),
                              mc_samples=args.mc_samples, dropout_rate=float(widget.dropout_spin.value()), seed=0)
    for _step in widget._add_result_layers(result):
        pass
    elapsed = time.perf_counter() - start
    app.processEvents()
    results["blocking"] = {**meter.stop(), "seconds": round(elapsed, 2)}

    print(f"{'variant':<18} {'longest gap ms':>15} {'p99 gap ms':>11} {'ticks':>7} {'run s':>7}")
    for name, r in results.items():
        print(f"{name:<18} {r['longest_gap_ms']:>15.1f} {r['p99_gap_ms']:>11.1f} {r['ticks']:>7d} {r['seconds']:>7.2f}")
    summary = {
        "benchmark": "gui_responsiveness",
        "baseline": "blocking (predict on the GUI thread)",
        "longest_gap_ms": {k: r["longest_gap_ms"] for k, r in results.items()},
        "widget_longest_gap_computing_ms": results["widget"]["longest_gap_computing_ms"],
        "widget_longest_gap_adding_layers_ms": results["widget"]["longest_gap_adding_layers_ms"],
        "gap_ratio_blocking_vs_widget": round(results["blocking"]["longest_gap_ms"] / results["widget"]["longest_gap_ms"], 1),
        "target_ms": 100,
        "meets_target": results["widget"]["longest_gap_ms"] < 100,
        "computing_meets_target": results["widget"]["longest_gap_computing_ms"] < 100,
        "mc_samples": args.mc_samples,
        "threads": args.threads,
        "results": results,
    }
    viewer.close()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
