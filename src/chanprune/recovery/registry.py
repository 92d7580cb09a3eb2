"""``recover=``: what a pruned model gets before any fine-tuning, looked up by name.

A recovery is ``fn(ctx: RecoveryContext) -> dict`` (notes merged into the prune record) registered with
:func:`register_recovery`, which also states what the pipeline and the configs must know about it:
whether it refits the consumers of the pruned channels (a method that refits them itself, CP or CaP,
refuses such a recovery rather than have its own refit overwritten) and whether it needs training
images (a DataBundle), not just calibration batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch.nn as nn

from ..errors import ConfigError


@dataclass(frozen=True)
class RecoveryContext:
    original: nn.Module                    # the unpruned model (never modified)
    pruned: nn.Module                      # the verified surgery's result, recovered in place
    graph: object                          # the PruningGraph the plan indexes
    plan: Mapping[int, Sequence[int]]      # root indices removed per group (as carried out)
    batches: list | None                   # calibration batches
    data: object                           # what the caller passed as data=
    config: object                         # the method's config


@dataclass(frozen=True)
class Recovery:
    name: str
    apply: Callable[[RecoveryContext], dict]
    summary: str                           # what it did, in a few words ("consumers refit")
    refits_consumers: bool = False
    needs_training_data: str | None = None  # why it needs a DataBundle ("re-estimates ..."), None if it does not


RECOVERIES: dict[str, Recovery] = {}


def register_recovery(name: str, *, summary: str, refits_consumers: bool = False,
                      needs_training_data: str | None = None):
    """Decorator: ``@register_recovery("name", summary=...)`` makes ``recover="name"`` run the function."""

    def deco(fn: Callable[[RecoveryContext], dict]):
        RECOVERIES[name] = Recovery(name, fn, summary, refits_consumers, needs_training_data)
        return fn

    return deco


def get_recovery(name: str) -> Recovery:
    if name not in RECOVERIES:
        raise ConfigError(f"recover must be one of {', '.join(RECOVERIES)}, not {name!r}.")
    return RECOVERIES[name]
