"""Which code prunes for which config: one handler per config type (the torchao ``quantize_`` pattern).

A *handler* is ``handler(model, config, data, example_inputs) -> result``. It must leave ``model``
untouched and return either

* one pruned model (an ``nn.Module``) whose record is ``model.chanprune_history[-1]``, or
* a *family* of pruned models, a ``dict`` mapping a label (e.g. the MAC target it was searched for) to
  such a model, each with its own record — for methods whose one search yields several models
  (multi-rate pruning).

:func:`chanprune.prune` checks what every method shares (the config type, data a recovery needs),
then hands over to the handler registered for the config's type, looked up along the config class's
MRO (a subclass of a registered config uses its parent's handler unless it registers its own).
Most methods do not write a handler at all: they write a *planner* and register it with
:func:`register_planner`, which wraps it in the shared pipeline of :mod:`chanprune.methods.pipeline`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator, Union

import torch.nn as nn

from ..errors import ConfigError

Result = Union[nn.Module, dict]
Handler = Callable[..., Result]
_HANDLERS: dict[type, Handler] = {}


def register_method(config_cls: type) -> Callable[[Handler], Handler]:
    """Decorator: ``@register_method(MyConfig)`` makes ``prune(model, MyConfig(...))`` call the handler."""
    if not isinstance(config_cls, type):
        raise ConfigError(f"register_method takes a config class, not {config_cls!r}; use @register_method(MyConfig).")

    def deco(handler: Handler) -> Handler:
        _HANDLERS[config_cls] = handler
        return handler

    return deco


def _handler_of(config_cls: type) -> Handler | None:
    return next((_HANDLERS[c] for c in config_cls.__mro__ if c in _HANDLERS), None)


def handler_for(config) -> Handler:
    """The handler registered for ``type(config)`` or its nearest registered base class."""
    handler = _handler_of(type(config))
    if handler is None:
        names = ", ".join(sorted(METHODS))
        raise ConfigError(f"no method is registered for {type(config).__name__}; known methods: {names}.")
    return handler


def _config_classes(cls: type) -> Iterator[type]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _config_classes(sub)


class _MethodTable(Mapping):
    """{method name: (config class, handler)} over every config class a handler covers (subclasses too),
    for the CLI and the benchmarks, which pick methods by name. Computed on each use, so a method or a
    criterion registered later joins it. A config class marked ``generic`` (``CriterionConfig``, whose
    method is whichever criterion it is given) is usable but not listed by name."""

    def _table(self) -> dict[str, tuple[type, Handler]]:
        out: dict[str, tuple[type, Handler]] = {}
        for base in _HANDLERS:
            for cls in _config_classes(base):
                name = getattr(cls, "method", "")
                if name and name not in out and not cls.__dict__.get("generic", False):
                    out[name] = (cls, _handler_of(cls))
        return out

    def __getitem__(self, name: str):
        return self._table()[name]

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


METHODS = _MethodTable()
