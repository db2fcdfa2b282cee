"""The plugin's settings (napari's plugin configuration ``medseg``) and what they select.

The manifest declares ``device``, ``model_folders``, ``cache_folder`` and ``offline`` under
``contributions.configurations.medseg``; napari >= 0.9 shows them in its settings dialog and saves
them. Older napari versions have no plugin settings: the defaults apply. Environment variables
(``MEDSEG_MODELS``, ``MEDSEG_JOBS_DIR``) keep working and come after the configured folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from napari_medseg.jobs import default_jobs_root
from napari_medseg.registry import (
    Registry,
    env_models_dirs,
    shipped_models_dirs,
    user_models_dir,
)

__all__ = ["PluginConfig", "plugin_config", "registry_from_config", "jobs_root_from_config"]

PLUGIN_NAME = "napari-medseg"


@dataclass(frozen=True)
class PluginConfig:
    """The plugin settings as plain values."""

    device: str = "auto"
    model_folders: tuple[Path, ...] = ()
    cache_folder: Path | None = None
    offline: bool = True


def plugin_config() -> PluginConfig:
    """The current settings; the defaults when napari has no plugin settings (napari < 0.9)."""
    try:
        from napari.settings import get_plugin_settings
    except ImportError:
        return PluginConfig()
    try:
        section = get_plugin_settings(PLUGIN_NAME).medseg
    except Exception:  # noqa: BLE001 - the plugin is not registered with npe2 (e.g. run from source)
        return PluginConfig()
    folders = tuple(Path(p).expanduser() for p in str(section.model_folders or "").split(os.pathsep) if p.strip())
    cache = str(section.cache_folder or "").strip()
    return PluginConfig(
        device=str(section.device or "auto"),
        model_folders=folders,
        cache_folder=Path(cache).expanduser() if cache else None,
        offline=bool(section.offline),
    )


def registry_from_config(config: PluginConfig | None = None) -> Registry:
    """The model registry: configured folders, then ``MEDSEG_MODELS``, the user folder, the shipped models."""
    config = config or plugin_config()
    if not config.model_folders:
        return Registry()
    paths = [*config.model_folders, *env_models_dirs(), user_models_dir(), *shipped_models_dirs()]
    return Registry(paths)


def jobs_root_from_config(config: PluginConfig | None = None) -> Path:
    """Where background jobs live: the configured folder, else ``MEDSEG_JOBS_DIR`` or the user data folder."""
    config = config or plugin_config()
    return config.cache_folder / "jobs" if config.cache_folder is not None else default_jobs_root()
