"""Partition pruning: layers cut into P independent blocks that run in parallel (methods.md §6).

* :func:`partition` / ``chanprune.prune(model, PartitionConfig(...))`` — the method
  (:mod:`chanprune.methods.partition`);
* :class:`BlockLinear`, :class:`GroupedConv2d` — the single-process form (:mod:`.modules`);
* :mod:`.assignment` — contiguous and energy assignments of neurons to parts;
* :mod:`.runtime` — the same model on P processes with ``torch.distributed``, and the P-device simulation.
"""
from ..methods.partition import PartitionConfig, find_run, partition  # noqa: F401
from .modules import BlockLinear, GroupedConv2d  # noqa: F401

__all__ = ["BlockLinear", "GroupedConv2d", "PartitionConfig", "find_run", "partition"]
