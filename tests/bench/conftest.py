"""Fixtures for the bench scripts, which live outside the package (bench/ is not importable by name)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sb():
    return _load("scoreboard")


@pytest.fixture(scope="module")
def report(sb):
    return _load("scoreboard_report")  # imports the runner's constants from the module sb loaded
