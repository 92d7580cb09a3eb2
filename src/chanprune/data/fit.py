"""Does a model fit a data set? Refuse what cannot run, warn about numbers that would mean nothing.

Refused (:class:`ConfigError`): another channel count, or fewer model outputs than the data set's classes.
Warned: the data set differs from the one the model's record names, or the split holds fewer classes than the
model predicts (a 10-class model scored on a 1-class folder reports a number that says little).
Messages name the remedy as keyword arguments (``data='mnist'``); the CLI turns those into its flags.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import nn

from chanprune.errors import ConfigError

__all__ = ["trained_on", "check_fit"]

_WARNED: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()  # say each mismatch once


def _warn_once(model: nn.Module, key: tuple, message: str) -> None:
    seen = _WARNED.setdefault(model, set())
    if key not in seen:
        seen.add(key)
        warnings.warn(message, stacklevel=4)


def trained_on(model: nn.Module) -> str | None:
    """The data set name a model's record names (saved ``extra['data']``, else its last pruning step's)."""
    extra = getattr(model, "chanprune_extra", None) or {}
    if isinstance(extra.get("data"), str):
        return extra["data"]
    for step in reversed(getattr(model, "chanprune_history", None) or []):
        if isinstance(step, dict) and isinstance(step.get("data"), str):
            return step["data"]
    return None


def _model_classes(model: nn.Module) -> int | None:
    kwargs = (getattr(model, "chanprune_spec", None) or {}).get("kwargs") or {}
    if isinstance(kwargs.get("num_classes"), int):
        return kwargs["num_classes"]
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def check_fit(model: nn.Module, data: Any, split: str = "test", label: str = "the model") -> None:
    """Raise when ``model`` cannot take ``data``; warn when its accuracy on ``split`` would mislead."""
    if not hasattr(data, "num_classes"):
        return
    kwargs = (getattr(model, "chanprune_spec", None) or {}).get("kwargs") or {}
    origin = trained_on(model)
    name = getattr(data, "name", "?")
    hint = f"pass data={origin!r}" if origin and origin != name else "pass the data set the model was trained on"
    channels, classes = kwargs.get("in_channels"), _model_classes(model)
    if isinstance(channels, int) and channels != data.in_channels:
        raise ConfigError(f"{label} takes {channels}-channel images but data set {name!r} has "
                          f"{data.in_channels}-channel images; {hint}.")
    if isinstance(classes, int) and classes < data.num_classes:
        raise ConfigError(f"{label} has {classes} classes but data set {name!r} has {data.num_classes}; {hint}.")
    if origin and origin != name:
        _warn_once(model, ("data", name), f"{label} was trained on {origin!r} (its record says so) but is used on "
                   f"{name!r}; its accuracy there says little — pass data={origin!r}.")
        return
    images = data.split(split) if hasattr(data, "split") else None
    if images is not None and len(images) and isinstance(classes, int):
        present = int(torch.unique(images.labels).numel())
        if present == 1 < classes:
            _warn_once(model, ("classes", name, split), f"the {split} split of {name!r} holds images of 1 class but "
                       f"{label} predicts {classes}; an accuracy on it says little — use data with the classes the "
                       "model was trained on.")
