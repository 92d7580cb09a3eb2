"""Partition pruning: layers cut into P independent blocks that run in parallel (docs/partition.md).

* :func:`partition` / ``chanprune.prune(model, PartitionConfig(...))`` — the method
  (:mod:`chanprune.methods.partition`);
* :class:`BlockLinear`, :class:`GroupedConv2d` — the single-process form (:mod:`.modules`);
* :mod:`.assignment` — contiguous and energy assignments of neurons to parts;
* :mod:`.runtime` — the same model on P processes with ``torch.distributed``, and the P-device simulation.

Names load on first use, so the method module can import this package's submodules while it loads.
"""
from chanprune._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "PartitionConfig": "chanprune.methods.partition",
    "partition": "chanprune.methods.partition",
    "find_run": "chanprune.methods.partition",
    "BlockLinear": "chanprune.partition.modules",
    "GroupedConv2d": "chanprune.partition.modules",
    "run_distributed": "chanprune.partition.runtime",
    "simulate": "chanprune.partition.runtime",
}

__all__, __getattr__, __dir__ = _lazy_exports("chanprune.partition", _EXPORTS)
