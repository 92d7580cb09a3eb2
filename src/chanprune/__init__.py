"""chanprune: channel pruning for trained PyTorch CNNs, with ratios from analysis instead of guesswork.

Public API (stable names)::

    import chanprune
    model = chanprune.load("checkpoints/resnet56_fashion_mnist")
    data = chanprune.load_data("fashion_mnist")
    pruned = chanprune.prune(model, chanprune.L1Config(target_macs=0.5), data=data)
    chanprune.evaluate(pruned, data)
"""
from __future__ import annotations

from chanprune._lazy import lazy_exports as _lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "chanprune.models",
    "list_models": "chanprune.models",
    "register_model": "chanprune.models",
    "load_data": "chanprune.data",
    "list_datasets": "chanprune.data",
    "from_tensors": "chanprune.data",
    "from_loader": "chanprune.data",
    "prune": "chanprune.api",
    "register_method": "chanprune.methods",
    "register_planner": "chanprune.methods",
    "evaluate": "chanprune.engine",
    "train": "chanprune.engine",
    "finetune": "chanprune.engine",
    "TrainConfig": "chanprune.engine",
    "measure": "chanprune.measurement",
    "export": "chanprune.onnx_export",
    "save": "chanprune.io",
    "load": "chanprune.io",
    "analyze": "chanprune.analysis",
    "AnalysisConfig": "chanprune.analysis",
    "PruneConfig": "chanprune.config",
    "CriterionConfig": "chanprune.criteria",
    "L1Config": "chanprune.criteria",
    "L2Config": "chanprune.criteria",
    "BNScaleConfig": "chanprune.criteria",
    "TaylorConfig": "chanprune.criteria",
    "FPGMConfig": "chanprune.criteria",
    "HRankConfig": "chanprune.criteria",
    "RandomConfig": "chanprune.criteria",
    "HierarchicalConfig": "chanprune.methods.hierarchical",
    "CPConfig": "chanprune.methods.cp",
    "CaPConfig": "chanprune.methods.cap",
    "PartitionConfig": "chanprune.methods.partition",
    "CACPConfig": "chanprune.methods.cacp",
    "UCPConfig": "chanprune.methods.ucp",
    "ChanpruneError": "chanprune.errors",
    "decompose": "chanprune.lowrank",
    "DecomposeConfig": "chanprune.lowrank",
    "trp_train": "chanprune.lowrank",
    "TRPConfig": "chanprune.lowrank",
    "LowRank": "chanprune.lowrank",
}

__all__, __getattr__, __dir__ = _lazy_exports('chanprune', _EXPORTS)
