"""Data set registry: ``load_data(name, root=None, **kwargs) -> DataBundle``."""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Callable

from chanprune.errors import DataError

from .base import DataBundle

__all__ = ["register_dataset", "load_data", "list_datasets", "cache_dir", "DEFAULT_DATASET"]

DEFAULT_DATASET = "fashion_mnist"

Builder = Callable[..., DataBundle]
_REGISTRY: dict[str, Builder] = {}
_BUILTIN_MODULES = ("fashion_mnist", "mnist", "digits", "cifar10", "image_folder")
_builtins_loaded = False


def _canonical(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a builder ``(root=None, **kw) -> DataBundle`` under ``name``."""
    key = _canonical(name)

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[key] = builder
        return builder

    return decorate


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for mod in _BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{mod}")
        _builtins_loaded = True


def list_datasets() -> list[str]:
    """Registered data set names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def load_data(name: str = DEFAULT_DATASET, root: str | os.PathLike | None = None, **kwargs) -> DataBundle:
    """Build the data set ``name`` (``-`` and ``_`` are interchangeable, case ignored)."""
    _load_builtins()
    key = _canonical(name)
    if key not in _REGISTRY:
        raise DataError(f"unknown data set {name!r}; available data sets: {', '.join(list_datasets())}.")
    builder = _REGISTRY[key]
    try:
        inspect.signature(builder).bind(root=root, **kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(builder).parameters if p != "root"]
        raise DataError(
            f"data set {key} does not accept the options {sorted(kwargs)} ({exc}); it accepts: root, {', '.join(params)}."
        ) from None
    return builder(root=root, **kwargs)


def cache_dir() -> Path:
    """``$CHANPRUNE_CACHE`` if set, else ``~/.cache/chanprune`` (not created here)."""
    env = os.environ.get("CHANPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "chanprune"
