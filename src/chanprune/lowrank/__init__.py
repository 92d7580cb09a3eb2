"""Low-rank compression: TRP (trained rank pruning) and plain SVD decomposition (docs/trp.md).

    from chanprune.lowrank import TRPConfig, trp_train, DecomposeConfig, decompose
    history = trp_train(model, data, TRPConfig(energy=0.9, period=5), TrainConfig(epochs=1, lr=0.01))
    small = decompose(model, DecomposeConfig(scheme="channel", threshold=0.9), data=data)

Names load lazily, so :mod:`chanprune.io` can import :class:`LowRank` without pulling in the rest.
"""
from __future__ import annotations

from chanprune._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "LowRank": "chanprune.lowrank.modules",
    "SCHEMES": "chanprune.lowrank.modules",
    "to_matrix": "chanprune.lowrank.svd",
    "from_matrix": "chanprune.lowrank.svd",
    "singular_values": "chanprune.lowrank.svd",
    "select_rank": "chanprune.lowrank.svd",
    "energy_kept": "chanprune.lowrank.svd",
    "project": "chanprune.lowrank.svd",
    "Projection": "chanprune.lowrank.svd",
    "nuclear_subgradient": "chanprune.lowrank.svd",
    "DecomposeConfig": "chanprune.lowrank.decomposition",
    "LayerPlan": "chanprune.lowrank.decomposition",
    "select_layers": "chanprune.lowrank.decomposition",
    "plan_decomposition": "chanprune.lowrank.decomposition",
    "decompose_layer": "chanprune.lowrank.decomposition",
    "decompose": "chanprune.lowrank.decomposition",
    "layer_ranks": "chanprune.lowrank.decomposition",
    "layer_macs": "chanprune.lowrank.decomposition",
    "TRPConfig": "chanprune.lowrank.trp",
    "TRPHooks": "chanprune.lowrank.trp",
    "trp_train": "chanprune.lowrank.trp",
}

__all__, __getattr__, __dir__ = _lazy_exports('chanprune.lowrank', _EXPORTS)
