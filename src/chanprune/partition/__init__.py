"""Partition pruning: layers cut into P independent blocks that run in parallel (methods.md §6).

* :func:`partition` / ``chanprune.prune(model, PartitionConfig(...))`` — the method
  (:mod:`chanprune.methods.partition`);
* :class:`BlockLinear`, :class:`GroupedConv2d` — the single-process form (:mod:`.modules`);
* :mod:`.assignment` — contiguous and energy assignments of neurons to parts;
* :mod:`.runtime` — the same model on P processes with ``torch.distributed``, and the P-device simulation.
"""
from .._lazy import lazy_exports as _lazy_exports

# chanprune.methods.partition imports this package's submodules, so its names load on first use: importing them
# here would make ``import chanprune.methods`` a circle.
__all__, __getattr__, __dir__ = _lazy_exports("chanprune.partition", {
    "BlockLinear": "chanprune.partition.modules", "GroupedConv2d": "chanprune.partition.modules",
    "PartitionConfig": "chanprune.methods.partition", "find_run": "chanprune.methods.partition",
    "partition": "chanprune.methods.partition",
})
