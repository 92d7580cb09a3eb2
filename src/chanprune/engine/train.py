"""SGD training with a per-step cosine schedule and exact, pickle-free resume.

Determinism contract (CPU, fixed seed): ``torch.manual_seed(config.seed)`` at the start; the data
order and augmentation come from the loader's (seed, epoch) determinism; the learning rate is a
pure function of the global step. A checkpoint stores weights, momentum buffers, RNG states and
the partial-epoch accumulators, and resuming continues with ``loader.iter_from(step)``, so a run
killed at any point and resumed ends with bit-identical weights and history numbers (only the
wall-clock times differ) to an uninterrupted run.

Device: ``config.device="auto"`` trains where the model is when that is a GPU, else on CUDA when
present, else on the CPU. The model is moved to that device and *stays there* afterwards (call
``model.cpu()`` if you need it back); it is left in eval mode.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from ..data.base import ImageSet, one_class_warning
from ..errors import ChanpruneError, ConfigError, DataError
from ..progress import Bar
from .checkpoint import (
    CheckpointError,
    apply_train_state,
    clean_stale_temp_files,
    load_train_state,
    restore_rng,
    save_train_state,
)
from .evaluate import accum_dtype, evaluate, is_bundle, resolve_device

__all__ = ["TrainConfig", "train", "finetune", "lr_at"]

SCHEDULES = ("cosine", "constant")
# Config fields that may change between a run and its resume without changing the result.
_RESUME_FREE = ("device", "checkpoint_every")
_FIX = "delete the folder or pass resume=False to start over"


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of one training run. Invalid values raise :class:`ConfigError`."""

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"  # or "constant"
    warmup_epochs: float = 0.0  # linear warm-up, in (fractional) epochs, counted in steps
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    limit_train: int | None = None  # train on a stratified subset of this size
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0 = only at epoch ends)
    device: str = "auto"

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, want: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{field} is {value!r} but must be {want}; change {field}.")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.epochs) or self.epochs < 0:
            raise bad("epochs", self.epochs, "an integer >= 0")
        if not is_num(self.lr) or self.lr <= 0:
            raise bad("lr", self.lr, "a finite number > 0")
        if not is_num(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", self.momentum, "a number in [0, 1)")
        if not isinstance(self.nesterov, bool):
            raise bad("nesterov", self.nesterov, "True or False")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("TrainConfig.nesterov=True needs momentum > 0; set a momentum or nesterov=False.")
        if not is_num(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", self.weight_decay, "a finite number >= 0")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "an integer >= 1")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, f"one of {', '.join(map(repr, SCHEDULES))}")
        if not is_num(self.warmup_epochs) or self.warmup_epochs < 0:
            raise bad("warmup_epochs", self.warmup_epochs, "a finite number >= 0")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"TrainConfig.warmup_epochs ({self.warmup_epochs}) is longer than the run ({self.epochs} epochs); "
                "lower warmup_epochs or raise epochs.")
        if not is_num(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", self.label_smoothing, "a number in [0, 1)")
        if not isinstance(self.augment, bool):
            raise bad("augment", self.augment, "True or False")
        if not is_int(self.seed):
            raise bad("seed", self.seed, "an integer")
        if self.limit_train is not None and (not is_int(self.limit_train) or self.limit_train < 1):
            raise bad("limit_train", self.limit_train, "None or an integer >= 1")
        if not is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise bad("checkpoint_every", self.checkpoint_every, "an integer >= 0")
        if not isinstance(self.device, str):
            raise bad("device", self.device, "a string such as 'auto', 'cpu' or 'cuda'")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise bad("device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'") from None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid ones are {', '.join(sorted(names))}.")
        return cls(**d)


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
          schedule: str = "cosine") -> float:
    """Learning rate used for optimizer step ``step`` (0-based global step).

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps,
    then constant ``base_lr`` or a half-cosine from ``base_lr`` towards 0 over the remaining steps
    (the last step still has a small positive rate).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def _model_signature(model: nn.Module) -> str:
    items = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _fingerprint(config: TrainConfig, data: Any, model: nn.Module, steps_per_epoch: int) -> dict[str, Any]:
    cfg = {k: v for k, v in config.as_dict().items() if k not in _RESUME_FREE}
    train_set = getattr(data, "train", None)
    try:
        n_train = len(train_set) if train_set is not None else None
    except TypeError:
        n_train = None
    return {
        "config": cfg,
        "data": {"name": getattr(data, "name", None), "n_train": n_train},
        "model": _model_signature(model),
        "steps_per_epoch": steps_per_epoch,
    }


def _check_fingerprint(saved: dict[str, Any], now: dict[str, Any], directory: Path) -> None:
    where = f"the checkpoint in {directory}"
    if not saved:
        raise CheckpointError(f"{where} carries no run fingerprint (not written by chanprune.engine.train); {_FIX}.")
    saved_cfg, now_cfg = saved.get("config", {}), now["config"]
    for key in now_cfg:
        if saved_cfg.get(key, object()) != now_cfg[key]:
            raise CheckpointError(
                f"{where} was written with {key}={saved_cfg.get(key)!r}, this run has {key}={now_cfg[key]!r}; {_FIX}.")
    for key, label in (("data", "data set"), ("model", "model"), ("steps_per_epoch", "steps per epoch")):
        if saved.get(key) != now[key]:
            raise CheckpointError(
                f"{where} was written for a different {label} ({saved.get(key)!r} vs {now[key]!r}); {_FIX}.")


def _epoch_iter(loader: Any, first: int):
    if first == 0:
        return iter(loader)
    iter_from = getattr(loader, "iter_from", None)
    if callable(iter_from):
        return iter(iter_from(first))
    return itertools.islice(iter(loader), first, None)


def _rank_batches(loader: Any, first: int, ddp: bool):
    """``(x, y, rows of the whole batch)`` from batch ``first`` on: the whole batches in one process; under torchrun
    this rank's contiguous share of each (``Loader.shard``, else a slice of the batch the loader yields)."""
    if not ddp:
        for x, y in _epoch_iter(loader, first):
            yield x, y, len(y)
        return
    rank, world = distributed.rank(), distributed.world_size()
    if callable(getattr(loader, "shard", None)) and callable(getattr(loader, "batch_rows", None)):
        for index, (x, y) in enumerate(_epoch_iter(loader.shard(rank, world), first), first):
            yield x, y, loader.batch_rows(index)
        return
    for x, y in _epoch_iter(loader, first):
        n = len(y)
        lo, hi = n * rank // world, n * (rank + 1) // world
        yield x[lo:hi], y[lo:hi], n


def train(model: nn.Module, data: Any, config: TrainConfig | None = None, *,
          checkpoint_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
          eval_each_epoch: bool = True, callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data`` (a DataBundle) with SGD and return the history.

    Returns ``{"epochs": [{"epoch", "loss", "train_acc", "lr", "steps", "time_s",
    "test_acc", "test_loss"}...], "test_accuracy", "test_loss", "test_n", "global_step",
    "steps_per_epoch", "time_s", "device", "resumed_from", "config"}``.

    ``checkpoint_dir``: write ``train_state.{safetensors,json}`` there at every epoch end and,
    with ``config.checkpoint_every=N``, every N optimizer steps. With ``resume=True`` an existing
    checkpoint is verified against this run (config, data set, model shapes) and training
    continues from it; a damaged or mismatched one raises :class:`CheckpointError`.
    ``resume=False`` ignores and overwrites it.

    Under ``torchrun`` (a process group of several processes, :mod:`chanprune.distributed`) the model is wrapped in
    DistributedDataParallel and every process trains on its contiguous share of each global batch of
    ``config.batch_size`` samples (the same batches, order and augmentation as one process; BatchNorm sees the
    share, as usual with DDP). Rank 0 writes the checkpoints; a run resumes with any number of processes, since
    the position is counted in global batches.

    ``callback(info)`` is called after every optimizer step (after that step's checkpoint, if
    any) with ``{"epoch", "step", "global_step", "lr", "loss"}``; an exception raised there
    stops training and propagates (tests use it to simulate a killed run).
    """
    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}; build one with TrainConfig(...).")
    if not is_bundle(data):
        raise ConfigError(f"train() needs a DataBundle with a .loader() method, got {type(data).__name__}; "
                          "load one with chanprune.data.load_data(...).")
    if isinstance(getattr(data, "train", None), ImageSet):
        problem = one_class_warning(data)
        if problem:
            raise DataError("cannot train: " + problem)
    ddp = distributed.is_distributed()
    world = distributed.world_size()
    if ddp and config.batch_size < world:
        raise ConfigError(f"the global batch of {config.batch_size} cannot be shared by {world} processes; "
                          f"use batch_size >= {world} or fewer processes.")
    progress = progress and distributed.is_main()
    dev = resolve_device(config.device, model)
    model.to(dev)
    torch.manual_seed(config.seed)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; unfreeze some parameters before training.")
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    # Under torchrun a rank's share of a global batch of B samples contributes Σ_i ℓ_i · world/B; DDP averages the
    # gradients over the ranks, so the step is that of the mean loss over the whole global batch, as in one process.
    criterion_sum = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing, reduction="sum")

    def make_loader(epoch: int):
        return data.loader("train", batch_size=config.batch_size, shuffle=True, augment=config.augment,
                           seed=config.seed, limit=config.limit_train, epoch=epoch)

    steps_per_epoch = len(make_loader(0))
    if steps_per_epoch < 1:
        raise ConfigError("the training loader yields no batches; check the data set and limit_train.")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    fingerprint = _fingerprint(config, data, model, steps_per_epoch)

    history: list[dict[str, Any]] = []
    start_epoch, start_step, global_step = 0, 0, 0
    partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0}
    resumed_from = None
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        if distributed.is_main():
            clean_stale_temp_files(ckdir)
        distributed.barrier()
        if resume:  # every rank reads the checkpoint (one folder that all ranks see, e.g. a shared file system)
            loaded = load_train_state(ckdir)
            if loaded is not None:
                state, tensors = loaded
                _check_fingerprint(state.get("fingerprint", {}), fingerprint, ckdir)
                apply_train_state(model, optimizer, tensors, directory=ckdir)
                restore_rng(tensors)
                try:
                    start_epoch, start_step = int(state["epoch"]), int(state["step"])
                    global_step = int(state["global_step"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise CheckpointError(f"the checkpoint in {ckdir} lacks its position ({exc!r}); {_FIX}.") from None
                history = list(state.get("history", []))
                partial = dict(state.get("partial", partial))
                if global_step != start_epoch * steps_per_epoch + start_step or start_epoch > config.epochs:
                    raise CheckpointError(f"the checkpoint in {ckdir} has an inconsistent position "
                                          f"(epoch {start_epoch}, step {start_step}, global step {global_step}); {_FIX}.")
                resumed_from = {"epoch": start_epoch, "step": start_step, "global_step": global_step}

    def checkpoint(epoch: int, step: int, part: dict[str, Any]) -> None:
        """Rank 0 writes (atomically, see .checkpoint); the others wait, so no rank runs ahead of the file."""
        if ckdir is None:
            return
        if distributed.is_main():
            save_train_state(ckdir, model, optimizer, {
                "epoch": epoch, "step": step, "global_step": global_step,
                "complete": epoch >= config.epochs,
                "config": config.as_dict(), "fingerprint": fingerprint,
                "history": history, "partial": part, "steps_per_epoch": steps_per_epoch,
            })
        distributed.barrier()

    def totals(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, int, int]:
        """The epoch's running loss sum, correct count and samples over every rank's share."""
        if not ddp:
            return loss_sum.item(), int(correct.item()), seen
        t = torch.tensor([loss_sum.item(), float(correct.item()), float(seen)], dtype=torch.float64, device="cpu")
        distributed.all_reduce_([t])
        return float(t[0]), int(t[1]), int(t[2])

    net = model
    if ddp:  # after the resume, so the weights DDP broadcasts from rank 0 are the checkpoint's
        from torch.nn.parallel import DistributedDataParallel

        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)

    refresh = max(1, steps_per_epoch // 50)
    with Bar("train", total=max(total_steps, 1), enabled=progress, completed=global_step) as bar:
        if resumed_from is not None:
            bar.log(f"resuming from epoch {start_epoch + 1}, step {start_step} ({ckdir})")
        for epoch in range(start_epoch, config.epochs):
            net.train()
            loader = make_loader(epoch)
            if len(loader) != steps_per_epoch:
                raise ChanpruneError(f"the training loader changed length between epochs ({len(loader)} vs "
                                     f"{steps_per_epoch} batches); make the data loader's length fixed.")
            first = start_step if epoch == start_epoch else 0
            acc = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0}
            if first:  # the resumed partial sums are global: rank 0 carries them, the other ranks start from 0
                acc = partial if distributed.is_main() else {**acc, "time_s": partial.get("time_s", 0.0)}
            loss_sum = torch.tensor(float(acc["loss_sum"]), dtype=accum_dtype(dev), device=dev)
            correct = torch.tensor(int(acc["correct"]), dtype=torch.int64, device=dev)
            seen = int(acc["seen"])
            t0 = time.perf_counter() - float(acc["time_s"])
            bar.update(description=f"epoch {epoch + 1}/{config.epochs}")
            step, reported, lr = first, first, config.lr
            for x, y, rows in _rank_batches(loader, first, ddp):
                lr = lr_at(global_step, base_lr=config.lr, total_steps=total_steps,
                           warmup_steps=warmup_steps, schedule=config.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True).long()
                out = net(x)
                if ddp:
                    local_sum = criterion_sum(out, y)
                    loss = local_sum * (world / rows)
                else:
                    loss = criterion(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                global_step += 1
                with torch.no_grad():
                    if ddp:
                        loss_sum += local_sum.detach().to(loss_sum.dtype)
                    else:
                        loss_sum += loss.detach().to(loss_sum.dtype) * len(y)
                    correct += (out.detach().argmax(dim=1) == y).sum()
                seen += len(y)
                if bar.live and (step % refresh == 0 or step == steps_per_epoch):
                    bar.advance(step - reported, loss=loss_sum.item() / max(seen, 1), acc=100.0 * correct.item() / max(seen, 1), lr=lr)
                    reported = step
                if (ckdir is not None and config.checkpoint_every
                        and global_step % config.checkpoint_every == 0 and step < steps_per_epoch):
                    g_loss, g_correct, g_seen = totals(loss_sum, correct, seen)
                    checkpoint(epoch, step, {"loss_sum": g_loss, "correct": g_correct,
                                             "seen": g_seen, "time_s": time.perf_counter() - t0})
                if callback is not None:
                    batch_loss = float(local_sum.detach()) / max(1, len(y)) if ddp else float(loss.detach())
                    callback({"epoch": epoch, "step": step, "global_step": global_step, "lr": lr,
                              "loss": batch_loss})
            if step != steps_per_epoch:
                raise ChanpruneError(f"the training loader yielded {step} of {steps_per_epoch} batches in epoch "
                                     f"{epoch + 1}; make len(loader) match the batches it yields.")
            epoch_time = time.perf_counter() - t0
            g_loss, g_correct, g_seen = totals(loss_sum, correct, seen)
            mean_loss = g_loss / max(g_seen, 1)
            if not math.isfinite(mean_loss):
                raise ChanpruneError(f"training diverged (mean loss {mean_loss} in epoch {epoch + 1}); "
                                     "lower the learning rate or add warm-up.")
            entry: dict[str, Any] = {
                "epoch": epoch + 1, "loss": mean_loss, "train_acc": 100.0 * g_correct / max(g_seen, 1),
                "lr": lr, "steps": steps_per_epoch, "time_s": epoch_time,
            }
            if eval_each_epoch:
                ev = evaluate(model, data, device=dev)
                entry.update(test_acc=ev["accuracy"], test_loss=ev["loss"], test_n=ev["n"],
                             eval_time_s=time.perf_counter() - t0 - epoch_time)
            history.append(entry)
            checkpoint(epoch + 1, 0, {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0})
            bar.log(f"epoch {epoch + 1}/{config.epochs}: loss {entry['loss']:.4f}, train {entry['train_acc']:.2f}%"
                    + (f", test {entry['test_acc']:.2f}%" if "test_acc" in entry else "")
                    + f", lr {lr:.4g}, {epoch_time:.1f}s")

    last = history[-1] if history else {}
    if eval_each_epoch and "test_acc" in last and len(history) == config.epochs:
        test = {"accuracy": last["test_acc"], "loss": last["test_loss"], "n": last.get("test_n")}
    else:
        test = evaluate(model, data, device=dev)
    model.eval()
    return {
        "epochs": history,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_n": test["n"],
        "global_step": global_step,
        "steps_per_epoch": steps_per_epoch,
        "time_s": sum(e.get("time_s", 0.0) for e in history),
        "device": str(dev),
        "processes": world,
        "resumed_from": resumed_from,
        "config": config.as_dict(),
    }


_TRAIN_KWARGS = ("checkpoint_dir", "resume", "progress", "eval_each_epoch", "callback")


def finetune(model: nn.Module, data: Any, epochs: int = 1, lr: float = 0.01, **overrides: Any) -> dict[str, Any]:
    """Short recovery training: :func:`train` with a small learning rate and a cosine schedule.

    ``overrides`` may be any :class:`TrainConfig` field (e.g. ``weight_decay=0``,
    ``limit_train=2000``) or a :func:`train` keyword (``checkpoint_dir``, ``resume``,
    ``progress``, ``eval_each_epoch``, ``callback``).
    """
    train_kw = {k: overrides.pop(k) for k in list(overrides) if k in _TRAIN_KWARGS}
    overrides.setdefault("schedule", "cosine")
    cfg = TrainConfig.from_dict({"epochs": epochs, "lr": lr, **overrides})
    return train(model, data, cfg, **train_kw)
