"""Train/eval flags for a while: a block runs in eval mode, and every module gets its own flag back after."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn


@contextlib.contextmanager
def preserve_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag on exit (not just the root's: submodules may differ)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block (BatchNorm on running statistics, no dropout); every flag restored after."""
    with preserve_mode(model):
        model.eval()
        yield model
