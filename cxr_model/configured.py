"""The model registry that the settings name, opened one way for the CLI, the tasks and scripts."""

from __future__ import annotations

from cxr_model.config import Settings, get_settings
from cxr_model.registry import Registry
from cxr_model.storage import ObjectStore, open_store


def open_registry(settings: Settings | None = None, store: ObjectStore | None = None) -> Registry:
    """The registry of ``settings.model_name`` in ``store`` (default: the store the settings
    name), caching model files under ``settings.cache_dir``."""
    settings = settings or get_settings()
    return Registry(store or open_store(settings), settings.model_name, settings.cache_dir)
