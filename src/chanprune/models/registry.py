"""Model registry: builders by name, and the spec that lets :func:`chanprune.io.load` rebuild a model.

Every builder is a callable ``builder(num_classes=10, in_channels=3, **kwargs) -> nn.Module``.
The built-in zoo registers itself on ``import chanprune.models``; users register their own
models with the same decorator, which is the documented hook that makes a custom architecture
saveable and loadable without pickle::

    import chanprune

    @chanprune.register_model("tinynet", family="custom", description="two convs")
    class TinyNet(nn.Module):                       # a class works as a builder, so does a function
        def __init__(self, num_classes=10, in_channels=3, width=8): ...

    model = chanprune.create_model("tinynet", num_classes=5, width=16)
    chanprune.io.save(model, "runs/tiny/model")     # later: chanprune.io.load("runs/tiny/model")

The module that registers a custom model must be imported before ``load`` is called.
"""
from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..errors import ModelError

__all__ = ["register_model", "create_model", "list_models", "model_info", "check_multiplier"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    description: str

    @property
    def builder_path(self) -> str:
        module = getattr(self.builder, "__module__", "?")
        qualname = getattr(self.builder, "__qualname__", repr(self.builder))
        return f"{module}:{qualname}"


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, family: str = "", description: str = "") -> Callable:
    """Decorator that registers ``builder`` (a function or an ``nn.Module`` class) under ``name``.

    The builder must accept ``num_classes`` and ``in_channels`` keyword arguments; any further
    keyword arguments must take JSON values, because they are stored in saved models.
    Registering the same name again from the same module and qualified name (a module reload)
    replaces the entry; registering it from a different builder raises :class:`ModelError`.
    The decorated object is returned unchanged.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModelError(
            f"model name {name!r} is not valid; use 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    if not isinstance(family, str) or not isinstance(description, str):
        raise ModelError("register_model family and description must be strings; pass text or leave them out")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(builder):
            raise ModelError(f"register_model({name!r}) decorates {builder!r}, which is not callable; "
                             "decorate a builder function or an nn.Module class")
        entry = _Entry(name, builder, family, description or _first_doc_line(builder))
        old = _REGISTRY.get(name)
        if old is not None and old.builder is not builder and old.builder_path != entry.builder_path:
            raise ModelError(
                f"model name {name!r} is already registered by {old.builder_path}; "
                "choose another name for your model"
            )
        _REGISTRY[name] = entry
        return builder

    return decorator


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


ENTRY_POINT_GROUP = "chanprune.models"
_plugins_loaded = False


def load_plugins() -> None:
    """Import what installed packages declare under the ``chanprune.models`` entry-point group (once).

    An entry point names a module that registers its models with :func:`register_model` when imported, or a
    builder itself, which is then registered under the entry point's name. A package that fails to import is
    reported with a warning and skipped, so one broken plugin does not take the zoo down.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import warnings
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a third-party import can fail in any way
            warnings.warn(f"the {ENTRY_POINT_GROUP} entry point {ep.name!r} ({ep.value}) failed to import "
                          f"({type(exc).__name__}: {exc}); its models are unavailable.", stacklevel=2)
            continue
        if callable(obj) and not inspect.ismodule(obj) and ep.name not in _REGISTRY:
            register_model(ep.name)(obj)


def list_models() -> list[str]:
    """Names of all registered models (installed plugins included), sorted."""
    load_plugins()
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if isinstance(name, str) and name not in _REGISTRY:
        load_plugins()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ModelError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models()) or '(none registered)'}"
        )
    return _REGISTRY[name]


def model_info(name: str) -> dict:
    """``{"name", "family", "description", "builder"}`` of a registered model (builder is ``module:qualname``)."""
    e = _entry(name)
    return {"name": e.name, "family": e.family, "description": e.description, "builder": e.builder_path}


def _check_count(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_COUNT:
        raise ModelError(f"{what} must be an integer from 1 to {_MAX_COUNT}, got {value!r}; pass a positive integer")
    return value


def check_multiplier(what: str, value: Any, *, maximum: float = 8.0) -> float:
    """Validate a width multiplier (used by the zoo builders): a finite number in (0, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= maximum:
        raise ModelError(f"{what} must be a number in (0, {maximum:g}], got {value!r}; pass e.g. 0.5 or 1")
    return float(value)


def _json_roundtrips(value: Any) -> bool:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return json.loads(text) == value


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` and attach ``model.chanprune_spec`` for save/load.

    ``chanprune_spec`` is ``{"name": name, "kwargs": {"num_classes", "in_channels", **kwargs}}``.
    Raises :class:`ModelError` for an unknown name, out-of-range counts, keyword arguments the
    builder does not take, or keyword values that are not plain JSON.
    """
    entry = _entry(name)
    _check_count("num_classes", num_classes)
    _check_count("in_channels", in_channels)
    full = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    if not _json_roundtrips(full):
        raise ModelError(
            f"keyword arguments of model {name!r} must be plain JSON values (str, int, finite float, bool, "
            "None, lists and str-keyed dicts) so the model can be saved; convert tuples to lists and "
            "drop objects"
        )
    try:
        sig = inspect.signature(entry.builder)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        sig = None
    if sig is not None:
        try:
            sig.bind(**full)
        except TypeError as exc:
            raise ModelError(f"model {name!r} does not accept these arguments ({exc}); "
                             f"check the signature of {entry.builder_path}") from None
    model = entry.builder(**full)
    if not isinstance(model, nn.Module):
        raise ModelError(f"the builder of model {name!r} ({entry.builder_path}) returned "
                         f"{type(model).__name__}, not an nn.Module; make it return the model")
    model.chanprune_spec = {"name": name, "kwargs": json.loads(json.dumps(full))}
    return model


def init_weights(model: nn.Module, *, linear: str = "default") -> None:
    """The zoo's initialisation: convolutions He-normal (fan-out, ReLU gain), BatchNorm γ = 1 and β = 0, and
    Linear layers as ``linear`` says: ``"default"`` (PyTorch's own), ``"zero_bias"``, or ``"normal"`` (N(0, 0.01²),
    zero bias)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
