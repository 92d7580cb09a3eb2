"""UCP: uniform channel pruning with modified SE blocks (Chang et al., arXiv 2010.01251; docs/ucp.md).

Stages, in the paper's order:
  attention   insert an MSEB after every conv that feeds a BatchNorm; train with them (from the checkpoint
              at the neutral state, or from scratch)
  scores      I_j = (1/N) Σ_i s_j(x_i), the mean excitation; a channel group's score sums its producers'
              I_j, so a residual stage (one group in the pruning graph: every block output, the shortcut
              projection and the next stage's input) is scored by the sum of its blocks' MSEBs
  allocation  ``rule='mean'``: keep {j : I_j > threshold_factor · mean I} per group (the paper's rule;
              ≥ 1 channel always, all of them when the scores are equal); with a MAC/params target: the
              same ratio I_j / mean I thresholded globally, bisected by the shared MAC-target search
  structure   ``basic``: every group, residual stages uniformly; ``bottleneck``: only the middle k×k conv
              of each block (non-residual groups produced by convs with a kernel larger than 1×1)
  surgery     Torch-Pruning removal, verified against the masked original (the MSEBs are stripped first,
              each filter scaled by its mean excitation)
  recovery    ``scratch`` (re-initialise, full schedule: the paper), ``finetune``, or ``compensate``
              (chanprune's closed-form refit + BN re-estimation, no training)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from .. import allocation as alloc
from ..config import PruneConfig
from ..criteria import get_criterion
from ..criteria.attention import has_mseb_score
from ..errors import ConfigError
from ..graph import ChannelGroup
from ..ucp.mseb import insert_mseb, mseb_scores, strip_mseb
from .pipeline import PruneSession, run_pipeline
from .registry import register_method

STRUCTURES = ("auto", "basic", "bottleneck")
STAGE_SCORES = ("mseb", "l1")
RECOVERIES = ("scratch", "finetune", "compensate")
INITS = ("checkpoint", "scratch")


@dataclass
class UCPConfig(PruneConfig):
    """UCP's options; ``rule='mean'`` (the paper) or a ``target_macs``/``target_params`` (top-k by the search)."""

    method: ClassVar[str] = "ucp"
    allocations: ClassVar[tuple[str, ...]] = ("global",)
    allocation: str = "global"
    rule: str = "mean"                 # "mean" (threshold_factor · mean I) or "target" (given target_* or ratio)
    threshold_factor: float = 0.999
    reduction: int = 16
    structure: str = "auto"
    stage_score: str = "mseb"
    mseb_init: str = "checkpoint"      # train the MSEB network from the given weights (neutral MSEBs) or from scratch
    mseb_epochs: int = 1
    mseb_lr: float = 0.01
    recovery: str = "finetune"
    retrain_epochs: int = 1
    retrain_lr: float = 0.01
    limit_train: int | None = None     # train (MSEB and recovery) on a stratified subset of this many images
    calibration: int = 1024            # images the scores I_j are averaged over
    train_device: str = "auto"

    def __post_init__(self):
        explicit = any(getattr(self, n) is not None for n in ("target_macs", "target_params", "ratio"))
        if self.rule not in ("mean", "target"):
            raise ConfigError(f"rule must be 'mean' or 'target', not {self.rule!r}.")
        if self.rule == "mean" and explicit:
            raise ConfigError("rule='mean' sets the widths from the scores; drop target_macs/target_params/ratio "
                              "or pass rule='target'.")
        super().__post_init__()
        if self.rule == "mean":
            self.target_macs = None  # the base config fills in a default target; the mean rule has none
        if not (isinstance(self.threshold_factor, (int, float)) and self.threshold_factor > 0):
            raise ConfigError(f"threshold_factor must be a positive number, not {self.threshold_factor!r}.")
        for name, value, choices in (("structure", self.structure, STRUCTURES), ("stage_score", self.stage_score, STAGE_SCORES),
                                     ("recovery", self.recovery, RECOVERIES), ("mseb_init", self.mseb_init, INITS)):
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
        for name in ("mseb_epochs", "retrain_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a whole number of epochs >= 0, not {value!r}.")
        if self.recovery == "scratch" and self.retrain_epochs == 0:
            raise ConfigError("recovery='scratch' re-initialises the pruned network; give retrain_epochs >= 1.")
        if self.mseb_init == "scratch" and self.mseb_epochs == 0:
            raise ConfigError("mseb_init='scratch' trains the MSEB network from random weights; give mseb_epochs >= 1.")
        if self.recover == "none":
            # before any training the cut network gets at least fresh BatchNorm statistics: without them a
            # fine-tune starts from chance accuracy (10% on MNIST at 50% of the MACs, 16% after 500 images)
            self.recover = "compensate+bn" if self.recovery == "compensate" else "bn"

def _kernel_area(module: nn.Module) -> int:
    k = getattr(module, "kernel_size", (1,))
    return int(torch.tensor(k).prod())


def resolve_structure(groups: list[ChannelGroup], structure: str) -> str:
    """``auto``: bottleneck when the producers of the residual groups are mostly 1×1 convs, else basic."""
    if structure != "auto":
        return structure
    residual = [m for g in groups if g.is_residual for m in g.producers]
    ones = sum(_kernel_area(m.module) == 1 for m in residual)
    return "bottleneck" if residual and ones > len(residual) / 2 else "basic"


def eligible(groups: list[ChannelGroup], structure: str) -> list[bool]:
    """Which groups UCP prunes: all (basic), or only the middle k×k convs of bottleneck blocks.

    A middle conv is a k×k (k > 1) producer of a non-residual group whose every consumer writes into a
    residual group (the block's last 1×1 conv); the stem, which also feeds a shortcut, is not one.
    """
    if structure == "basic":
        return [True] * len(groups)
    residual_writers = {id(m.module) for g in groups if g.is_residual for m in g.producers}
    return [not g.is_residual and all(_kernel_area(m.module) > 1 for m in g.producers)
            and bool(g.consumers) and all(id(c.module) in residual_writers for c in g.consumers) for g in groups]


def mean_rule(scores: torch.Tensor, factor: float) -> int:
    """#{j : I_j > factor · mean I}, at least 1 (max ≥ mean, so factor < 1 always keeps one)."""
    return max(1, int((scores > factor * scores.mean()).sum()))


def ucp_planner(session: PruneSession) -> dict[int, list[int]]:
    """The UCP allocation and selection on a model that carries MSEB scores (see :func:`ucp`)."""
    config: UCPConfig = session.config
    groups = session.graph.groups
    structure = resolve_structure(groups, config.structure)
    session.notes["ucp_structure"] = structure
    chosen = [ok and has_mseb_score(g, session.work) for g, ok in zip(groups, eligible(groups, structure))]
    scores = []
    for g, ok in zip(groups, chosen):
        name = "l1" if (config.stage_score == "l1" and g.is_residual) or not ok else "mseb"
        scores.append(get_criterion(name)(g, session.scores))
    full = session.channels
    if config.rule == "mean":
        keep = [mean_rule(s, config.threshold_factor) if ok else n for s, ok, n in zip(scores, chosen, full)]
        return session.remove_lowest(scores, keep)
    picked = [s for s, ok in zip(scores, chosen) if ok]
    if not picked:
        raise ConfigError(f"UCP with structure={structure!r} finds no group to prune in this model; "
                          "try structure='basic'.")
    ranking = alloc.global_ranking(picked, round_to=config.round_to)

    def widths(t: float) -> list[int]:
        inner = iter(ranking(t))
        return [next(inner) if ok else n for ok, n in zip(chosen, full)]

    return session.remove_lowest(scores, session.allocate(widths))


def _reinitialise(model: nn.Module) -> None:
    """Fresh weights for every layer (the zoo's initialisation) and fresh BatchNorm statistics."""
    from ..models.registry import init_weights

    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    init_weights(model)


@register_method(UCPConfig)
def ucp(model: nn.Module, config: UCPConfig, data=None, example_inputs: torch.Tensor | None = None, *,
        checkpoint_dir=None) -> nn.Module:
    """UCP end to end: MSEB training, scores, the shared pipeline around :func:`ucp_planner`, then recovery.

    The record (``pruned.chanprune_history[-1]``) gains ``ucp``: the MSEB training and the retraining.
    ``checkpoint_dir`` makes both trainings resumable.
    """
    from pathlib import Path

    from ..calibration import as_batches
    from ..engine import TrainConfig, train

    if not hasattr(data, "loader"):
        raise ConfigError("UCP trains with MSEBs and retrains the pruned network; pass data=a DataBundle (chanprune.load_data).")
    if example_inputs is None:
        example_inputs = data.example_inputs(1)
    work = copy.deepcopy(model)
    if config.mseb_init == "scratch":
        _reinitialise(work)
    param = next(work.parameters())
    insert_mseb(work, example_inputs.to(param.device), reduction=config.reduction, ignored_layers=config.ignored_layers)
    history: dict = {"mseb_init": config.mseb_init}
    if config.mseb_epochs:
        cfg = TrainConfig(epochs=config.mseb_epochs, lr=config.mseb_lr, seed=config.seed, limit_train=config.limit_train,
                          device=config.train_device)
        ck = Path(checkpoint_dir) / "mseb" if checkpoint_dir else None
        history["mseb_training"] = _summary(train(work, data, cfg, checkpoint_dir=ck, progress=False, eval_each_epoch=False))
    batches = as_batches(data, config.calibration, config.batch_size, config.seed)
    scores = mseb_scores(work, batches)
    plain = strip_mseb(work, scores, fold=True)
    pruned = run_pipeline(plain, config, data, example_inputs, ucp_planner)
    if config.recovery in ("scratch", "finetune"):
        if config.recovery == "scratch":
            _reinitialise(pruned)
        lr = 0.1 if config.recovery == "scratch" else config.retrain_lr
        cfg = TrainConfig(epochs=config.retrain_epochs, lr=lr, seed=config.seed, limit_train=config.limit_train,
                          device=config.train_device)
        ck = Path(checkpoint_dir) / "retrain" if checkpoint_dir else None
        history["retraining"] = {"recovery": config.recovery, "lr": lr,
                                 **_summary(train(pruned, data, cfg, checkpoint_dir=ck, progress=False, eval_each_epoch=False))}
    pruned.chanprune_history[-1]["ucp"] = history
    return pruned


def _summary(result: dict) -> dict:
    return {"epochs": len(result.get("epochs", [])), "seconds": result.get("time_s"), "device": result.get("device"),
            "test_accuracy": result.get("test_accuracy")}
