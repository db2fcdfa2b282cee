"""Helpers shared by the plugin's widget tests (the fixtures are in ``tests/plugin/conftest.py``)."""

from __future__ import annotations

from typing import Any

#: how long a widget test waits for a runner by default (ms)
TIMEOUT_MS = 30_000


def add_layer(viewer, layer_data) -> Any:
    """Add a napari LayerDataTuple ``(data, kwargs, kind)`` to ``viewer``; returns the layer."""
    data, kwargs, kind = layer_data
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def add_volume(viewer, volume, name: str, *, labels: bool = False, **extra) -> Any:
    """Add a Volume as an image (or Labels) layer with its exact geometry (the plugin's own tuples)."""
    from napari_medseg.plugin._layers import image_layer_data, labels_layer_data

    maker = labels_layer_data if labels else image_layer_data
    return add_layer(viewer, maker(volume, name=name, **extra))


def click_and_wait(qtbot, button, runner, *, timeout_ms: int = TIMEOUT_MS) -> str:
    """Click ``button`` and wait for ``runner.finished``; returns ``runner.last_outcome``."""
    with qtbot.waitSignal(runner.finished, timeout=timeout_ms):
        button.click()
    return runner.last_outcome
