"""Lazy module attributes: ``import chanprune`` stays cheap (the CLI starts fast); submodules load on first use."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(module: str, exports: dict[str, str]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``module`` whose public names live in the submodules ``exports`` maps them to."""
    names = sorted(exports)

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            importlib.import_module(module).__dict__[name] = value  # cache: the next lookup skips this hook
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__():
        return names

    return names, __getattr__, __dir__
