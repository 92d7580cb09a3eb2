"""TRP: trained rank pruning (Xu et al., IJCAI 2020, arXiv 2004.14566; docs/trp.md).

Training alternates with low-rank approximation. Every ``period`` (m) optimizer steps, before that
step's forward pass, each target layer's reshaped weight 𝒯(W) is replaced by its truncated SVD at the
rank the energy rule gives (``project=True``), and after that step's backward pass
λ·𝒯⁻¹(U_r V_rᵀ) — the sub-gradient of the nuclear norm ‖𝒯(W)‖_* (``subgrad='full'``: over all σ > 0) —
is added to the weight's gradient. Other steps are plain SGD. The model then decomposes with
:func:`chanprune.lowrank.decompose` at (almost) no loss.

This is not a copy of the training loop: :func:`trp_train` runs :func:`chanprune.engine.train` with two
kinds of hooks — a forward pre-hook on the model that projects at steps ≡ 0 (mod m) (it acts only in
training mode with gradients on, so evaluation passes are untouched) and a gradient hook on each target
weight that adds the pending sub-gradient once — and the engine's per-step callback to learn the
global step. Because the projection happens at the start of a step, a checkpoint written after any step
holds exactly the state an uninterrupted run has there, so killed TRP runs resume bit-identically.

Deviation from the official code: the period counts global steps, not batches within an epoch (the
same when m divides the steps per epoch).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from .._atomic import write_text_atomic
from ..engine.train import TrainConfig, train
from ..errors import ConfigError
from .decomposition import layer_ranks, select_layers
from .svd import SUBGRADS, project

__all__ = ["TRPConfig", "TRPHooks", "trp_train"]

_STATE_FILE = "trp.json"


@dataclass
class TRPConfig:
    """TRP options (docs/trp.md: ``scheme``, ``period``, ``energy``, ``trp``, ``nuclear_weight``, ``subgrad``).

    ``energy``: the energy threshold e of the projection's rank rule (the official code hard-codes 0.9);
    ``period``: m, project every m optimizer steps; ``nuclear_weight``: λ (0 turns the regulariser off);
    ``project``: False gives nuclear-norm training alone (the paper's "Nu" without TRP).
    Layer choice as in :func:`chanprune.lowrank.select_layers` (default: convs with k > 1 and
    groups=1, except the first conv and strided convs; no Linear layers, like the official code).
    """

    scheme: str = "channel"
    energy: float = 0.9
    period: int = 5
    nuclear_weight: float = 3e-4
    subgrad: str = "truncated"
    project: bool = True
    layers: tuple[str, ...] | None = None
    include_strided: bool = False
    include_first: bool = False
    include_linear: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in ("channel", "spatial"):
            raise ConfigError(f"TRPConfig.scheme must be 'channel' or 'spatial', not {self.scheme!r}.")
        e = self.energy
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 1:
            raise ConfigError(f"TRPConfig.energy must lie in (0, 1], got {e!r}; e.g. 0.9.")
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ConfigError(f"TRPConfig.period must be an integer >= 1, got {self.period!r}; e.g. 5.")
        w = self.nuclear_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"TRPConfig.nuclear_weight must be a finite number >= 0, got {w!r}; e.g. 3e-4.")
        if self.subgrad not in SUBGRADS:
            raise ConfigError(f"TRPConfig.subgrad must be 'truncated' or 'full', not {self.subgrad!r}.")
        for name in ("project", "include_strided", "include_first", "include_linear"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TRPConfig.{name} must be True or False, not {getattr(self, name)!r}.")
        if not self.project and self.nuclear_weight == 0:
            raise ConfigError("TRPConfig with project=False and nuclear_weight=0 does nothing; enable one of them.")
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(n, str) for n in self.layers):
                raise ConfigError("TRPConfig.layers must be a list of layer names, e.g. ['layer1.0.conv1'].")
            self.layers = tuple(self.layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        return {"method": "trp", **d}

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module, str]]:
        return select_layers(model, self.scheme, self.layers, include_strided=self.include_strided,
                             include_first=self.include_first, include_linear=self.include_linear)


class TRPHooks:
    """The TRP step, attached to a model as hooks (use as a context manager; ``step_done`` is the engine callback)."""

    def __init__(self, model: nn.Module, config: TRPConfig, start_step: int = 0):
        self.model, self.config = model, config
        self.targets = config.select(model)
        if not self.targets:
            raise ConfigError("TRP found no layer to train low-rank (no conv with a kernel > 1×1 and groups=1 besides the "
                              "first and strided ones); pass layers=[...] or include_strided/include_first=True.")
        self.next_step = int(start_step)
        self.projections = 0
        self.last: dict[str, dict[str, Any]] = {}
        self.trace: list[dict[str, Any]] = []
        self._pending: dict[str, torch.Tensor] = {}
        self._projected_at: int | None = None
        self._handles: list = []

    # -- hooks
    def _pre_forward(self, module: nn.Module, _args) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        step = self.next_step
        if step % self.config.period or self._projected_at == step:
            return
        self._projected_at = step
        lam = float(self.config.nuclear_weight)
        ranks = []
        with torch.no_grad():
            for name, m, scheme in self.targets:
                p = project(m.weight, scheme, "energy", self.config.energy, subgrad=self.config.subgrad)
                if self.config.project:
                    m.weight.copy_(p.weight)
                if lam > 0:
                    self._pending[name] = p.subgradient.mul_(lam)
                self.last[name] = {"rank": p.rank, "full_rank": p.full_rank, "energy": p.energy}
                ranks.append(p.rank)
        self.projections += 1
        self.trace.append({"step": step, "ranks": ranks})

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            extra = self._pending.pop(name, None)
            return grad if extra is None else grad + extra.to(device=grad.device, dtype=grad.dtype)
        return hook

    def step_done(self, info: dict[str, Any]) -> None:
        """Engine callback: the step just taken; the next forward is global step ``info['global_step']``."""
        self.next_step = int(info["global_step"])
        self._pending.clear()  # a sub-gradient is for its own step only

    # -- attach / detach
    def attach(self) -> "TRPHooks":
        self.detach()
        self._handles.append(self.model.register_forward_pre_hook(self._pre_forward))
        for name, m, _ in self.targets:
            if m.weight.requires_grad:  # a frozen weight gets no gradient, so no sub-gradient either
                self._handles.append(m.weight.register_hook(self._grad_hook(name)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()

    def __enter__(self) -> "TRPHooks":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()


def _start_step(ckdir: Path | None, resume: bool) -> int:
    if ckdir is None or not resume:
        return 0
    from ..engine.checkpoint import load_train_state

    loaded = load_train_state(ckdir)  # damage raises CheckpointError, exactly as train() would
    if loaded is None:
        return 0
    try:
        return int(loaded[0]["global_step"])
    except (KeyError, TypeError, ValueError):
        return 0  # train() names the problem


def _check_state(ckdir: Path | None, resume: bool, config: TRPConfig) -> None:
    """Refuse to resume a TRP run with other TRP settings (the engine checks only its own config)."""
    if ckdir is None:
        return
    path = ckdir / _STATE_FILE
    now = config.to_dict()
    if resume and not path.exists():
        from ..engine.checkpoint import checkpoint_exists

        if checkpoint_exists(ckdir):
            raise ConfigError(f"the training checkpoint in {ckdir} was not written by a TRP run; delete the folder, "
                              "pick another checkpoint_dir, or pass resume=False to start over.")
    if resume and path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8")).get("config")
        except (ValueError, OSError, AttributeError):
            saved = None
        if saved != now:
            diff = next((k for k in now if not isinstance(saved, dict) or saved.get(k) != now[k]), "config")
            raise ConfigError(f"the TRP checkpoint in {ckdir} was written with other TRP settings ({diff}); delete the "
                              "folder or pass resume=False to start over.")
    if distributed.is_main():  # under torchrun, rank 0 writes; every rank has checked
        write_text_atomic(path, json.dumps({"config": now}, indent=1))
    distributed.barrier()


def trp_train(model: nn.Module, data: Any, config: TRPConfig | None = None, train_config: TrainConfig | None = None, *,
              checkpoint_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
              eval_each_epoch: bool = True, callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place with TRP through :func:`chanprune.engine.train`; return its history plus ``"trp"``.

    ``history["trp"]``: ``{"config", "projections", "ranks_before", "ranks_after"`` (energy-rule ranks at
    ``config.energy`` before and after training), ``"last_projection"`` (per layer: rank, full rank,
    energy kept), ``"trace"`` (the ranks at every projection), ``"seconds"}``. For a short TRP fine-tune of a
    trained model pass e.g. ``TrainConfig(epochs=1, lr=0.01, limit_train=6000)``. Checkpointing and
    resume work as in :func:`chanprune.engine.train`.
    """
    config = config or TRPConfig()
    if not isinstance(config, TRPConfig):
        raise ConfigError(f"config must be a TRPConfig, not {type(config).__name__}.")
    if train_config is None:
        train_config = TrainConfig()
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    hooks = TRPHooks(model, config)
    select = {"include_strided": config.include_strided, "include_first": config.include_first,
              "include_linear": config.include_linear}
    before = layer_ranks(model, config.scheme, config.energy, config.layers, **select)
    _check_state(ckdir, resume, config)
    hooks.next_step = _start_step(ckdir, resume)

    def step_callback(info: dict[str, Any]) -> None:
        hooks.step_done(info)
        if callback is not None:
            callback(info)

    t0 = time.perf_counter()
    with hooks:
        history = train(model, data, train_config, checkpoint_dir=ckdir, resume=resume, progress=progress,
                        eval_each_epoch=eval_each_epoch, callback=step_callback)
    history["trp"] = {
        "config": config.to_dict(),
        "projections": hooks.projections,
        "ranks_before": before,
        "ranks_after": layer_ranks(model, config.scheme, config.energy, config.layers, **select),
        "last_projection": hooks.last,
        "trace": hooks.trace,
        "seconds": time.perf_counter() - t0,
    }
    return history
