"""Many processes through PyTorch's own engine: ``torch.distributed``, launched by ``torchrun``.

Under ``torchrun --nproc_per_node N`` (or ``chanprune ... --nproc N``, which runs that for you) every process
runs the same program on a share of the data:

* calibration statistics: each rank runs the statistics pass over a contiguous block of the calibration batches
  (:func:`shard`) and the sums are all-reduced (:func:`all_reduce_`); sampled rows (CP) and per-image values
  (HRank) are gathered in rank order (:func:`all_gather_rows`), so every rank ends with what one process would
  have computed;
* the pruning decision is made once, on rank 0, and broadcast (:func:`broadcast_object`); the pruned weights
  are broadcast too (:func:`broadcast_module_`), so every rank holds the same pruned model;
* training: DistributedDataParallel over a per-rank share of every global batch (``chanprune.engine.train``);
  checkpoints are written by rank 0 only.

Without an initialised process group every function here is the identity (one process, nothing to share).
The backend is NCCL where CUDA is present, gloo on the CPU (docs/distributed.md).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

__all__ = ["init_from_env", "is_distributed", "world_size", "rank", "local_rank", "is_main", "shard", "all_reduce_",
           "all_gather_rows", "broadcast_object", "broadcast_module_", "barrier", "backend_device", "free_port"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def init_from_env(timeout_s: float = 1800, backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR/PORT).

    ``backend`` None: NCCL when this node has a GPU for every local process (each on GPU ``LOCAL_RANK``),
    gloo otherwise (NCCL refuses two processes on one GPU). Returns True when this process is one of several;
    a single process (no WORLD_SIZE, or WORLD_SIZE=1) does nothing.
    """
    if dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return is_distributed()


def backend_device() -> torch.device:
    """Where the backend's collectives want their tensors: the current GPU for NCCL, the CPU for gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(items: Sequence) -> tuple[int, list]:
    """This rank's contiguous block of ``items``: (index of its first item, the block).

    Blocks are as even as possible and in rank order, so concatenating the ranks' results in rank order gives
    the single-process order (what :func:`all_gather_rows` does).
    """
    items = list(items)
    n, w, r = len(items), world_size(), rank()
    if 0 < n < w:
        raise ConfigError(f"the calibration set has {n} batch(es), fewer than the {w} processes that share it; "
                          f"use at least {w} batches (more calibration images or a smaller batch size) or fewer processes.")
    lo, hi = n * r // w, n * (r + 1) // w
    return lo, items[lo:hi]


def all_reduce_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place, with one collective per dtype (the tensors are packed)."""
    if not is_distributed() or not tensors:
        return
    dev = backend_device()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1).to(dev) for t in group])
        dist.all_reduce(flat)
        at = 0
        for t in group:
            t.copy_(flat[at:at + t.numel()].view_as(t))
            at += t.numel()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order (row counts may differ between ranks)."""
    if not is_distributed():
        return t
    dev = backend_device()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    counts = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    most = max(counts)
    padded = torch.zeros((most,) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (a picklable Python object: plans, records)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=backend_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s values (same architecture on every rank)."""
    if not is_distributed():
        return
    dev = backend_device()
    for t in list(module.state_dict().values()):
        buf = t.detach().to(dev).contiguous()
        dist.broadcast(buf, src=src)
        t.copy_(buf)


def free_port() -> int:
    """A TCP port on this machine that was free a moment ago (for a local rendezvous: MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
