"""chanprune: channel pruning for trained PyTorch CNNs, with ratios from analysis instead of guesswork.

Public API (stable names)::

    import chanprune
    model = chanprune.load("checkpoints/resnet56_fashion_mnist")
    data = chanprune.load_data("fashion_mnist")
    pruned = chanprune.prune(model, chanprune.L1Config(target_macs=0.5), data=data)
    chanprune.evaluate(pruned, data)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "chanprune.models",
    "list_models": "chanprune.models",
    "register_model": "chanprune.models",
    "load_data": "chanprune.data",
    "list_datasets": "chanprune.data",
    "prune": "chanprune.api",
    "evaluate": "chanprune.engine",
    "train": "chanprune.engine",
    "finetune": "chanprune.engine",
    "TrainConfig": "chanprune.engine",
    "measure": "chanprune.measurement",
    "save": "chanprune.io",
    "load": "chanprune.io",
    "analyze": "chanprune.analysis",
    "AnalysisConfig": "chanprune.analysis",
    "PruneConfig": "chanprune.config",
    "CriterionConfig": "chanprune.config",
    "L1Config": "chanprune.config",
    "L2Config": "chanprune.config",
    "BNScaleConfig": "chanprune.config",
    "TaylorConfig": "chanprune.config",
    "FPGMConfig": "chanprune.config",
    "HRankConfig": "chanprune.config",
    "RandomConfig": "chanprune.config",
    "HierarchicalConfig": "chanprune.methods.hierarchical",
    "CPConfig": "chanprune.methods.cp",
    "CaPConfig": "chanprune.methods.cap",
    "ChanpruneError": "chanprune.errors",
    "decompose": "chanprune.lowrank",
    "DecomposeConfig": "chanprune.lowrank",
    "trp_train": "chanprune.lowrank",
    "TRPConfig": "chanprune.lowrank",
    "LowRank": "chanprune.lowrank",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `import chanprune` stays cheap (the CLI starts fast) and submodules load on first use.
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chanprune' has no attribute {name!r}")


def __dir__():
    return __all__
