"""Training engine: SGD training with exact resume, evaluation, BatchNorm recalibration.

Pickle-free throughout: checkpoints are safetensors + JSON (see :mod:`.checkpoint`).
"""
from .checkpoint import CheckpointError, load_train_state, save_train_state
from .evaluate import evaluate, recalibrate_bn, resolve_device
from .train import TrainConfig, finetune, lr_at, train

__all__ = [
    "TrainConfig",
    "train",
    "finetune",
    "evaluate",
    "recalibrate_bn",
    "resolve_device",
    "lr_at",
    "CheckpointError",
    "save_train_state",
    "load_train_state",
]
