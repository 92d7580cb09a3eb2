"""``prune(model, config, data=...)``: the one verb.

It checks what every method shares, then hands over to the handler registered for the config's type
(:mod:`chanprune.methods.registry`; most methods use the shared pipeline of
:mod:`chanprune.methods.pipeline` around a planner).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import PruneConfig
from .errors import ConfigError
from .methods import METHODS, handler_for  # noqa: F401  (importing the package registers every method)
from .recovery import get_recovery


def prune(model: nn.Module, config: PruneConfig, data=None, *, example_inputs: torch.Tensor | None = None):
    """Return a pruned copy of ``model`` (the argument is left untouched).

    ``config`` picks the method (``L1Config(target_macs=0.5)``, ``HierarchicalConfig(...)``, ...);
    ``data`` is a DataBundle (calibration images are drawn from its training split) or (images, labels).
    The record of what was done is in ``pruned.chanprune_history[-1]``. A method that searches several
    models at once returns a dict of them (see :mod:`chanprune.methods.registry`).
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"config must be a chanprune config such as L1Config(target_macs=0.5), not {type(config).__name__}.")
    handler = handler_for(config)
    needs = get_recovery(config.recover).needs_training_data
    if needs and config.recover_batches is not None and not hasattr(data, "loader"):
        raise ConfigError(f"recover={config.recover!r} with recover_batches={config.recover_batches} {needs}; pass "
                          "data=a DataBundle (chanprune.data.from_tensors), or leave recover_batches=None to use the "
                          "calibration images.")
    return handler(model, config, data, example_inputs)
