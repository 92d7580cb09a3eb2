"""A partitioned model on P processes with ``torch.distributed``, and the P-device simulation.

Rank 0 runs the model up to the partitioned run (the *trunk*), scatters the run's input parts x_{C_p}
to the P ranks, every rank runs its own *chain* — the blocks (p, ·) of every layer of the run and the
activations between them — and rank 0 gathers the output parts before the first unpartitioned layer
and runs the rest (the *head*). A block-diagonal run exchanges nothing between the scatter and the
gather; a layer with off-diagonal blocks (``block_topk``, ``balanced``) makes the ranks all-gather
that layer's input first (the communication those modes pay for).

Backends: ``gloo`` (CPU processes) or ``nccl`` (one GPU per rank, ``cuda:rank``). The process group
is the caller's (:func:`torch.distributed.init_process_group`); :func:`run_distributed` spawns one
for you, loading the model in every process from its saved files (JSON + safetensors, no pickle).

:func:`simulate` predicts the run's time on P devices from measured per-chain times plus a stated
link model (latency + bytes / bandwidth per message), for machines with fewer cores than parts.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import free_port
from ..errors import ConfigError
from ..recovery.stats import call_order
from .modules import BlockLinear

__all__ = ["PartitionedRun", "DistributedPartition", "Link", "run_distributed", "simulate"]


class PartitionedRun:
    """The run of consecutive :class:`BlockLinear` layers of a model, found from one forward pass."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        modules = dict(model.named_modules())
        blocks = {n for n, m in modules.items() if isinstance(m, BlockLinear)}
        if not blocks:
            raise ConfigError("the model has no partitioned Linear layers; partition it first "
                              "(chanprune.prune(model, PartitionConfig(parts=P))).")
        inside = tuple(f"{b}." for b in blocks)
        calls, count = call_order(model, example)
        order = [n for n in calls
                 if n in blocks or (not any(True for _ in modules[n].children()) and not n.startswith(inside))]
        first = next(i for i, n in enumerate(order) if n in blocks)
        last = max(i for i, n in enumerate(order) if n in blocks)
        self.names = [n for n in order[first:last + 1] if n in blocks]
        self.steps = order[first:last + 1]  # the blocks and the modules between them, in call order
        for n in self.steps:
            m = modules[n]
            if n not in blocks and (any(True for _ in m.parameters()) or any(True for _ in m.buffers())):
                raise ConfigError(f"{n!r} ({type(m).__name__}) runs inside the partitioned run and has state; the "
                                  "distributed runtime takes one run of BlockLinear layers with only activations and "
                                  "dropout between them.")
            if count[n] != 1:
                raise ConfigError(f"{n!r} is called {count[n]} times per forward; the runtime needs a run called once.")
        self.layers = [modules[n] for n in self.names]
        self.modules = [modules[n] for n in self.steps]
        for a, b in zip(self.layers, self.layers[1:]):
            if a.out_sizes != b.in_sizes or a.out_index is not None or b.in_index is not None:
                raise ConfigError("the partitioned layers do not form one run (their parts do not line up); "
                                  "partition them in one call.")
        self.parts = self.layers[0].parts
        self.in_sizes = self.layers[0].in_sizes
        self.out_sizes = self.layers[-1].out_sizes
        with torch.no_grad():  # the model with its run done by this object must be the model
            alone = replace_run(model, self.steps, _Single(self))(example)
            if not torch.allclose(alone, model(example), rtol=1e-4, atol=1e-5):
                raise ConfigError(f"the run {', '.join(map(repr, self.names))} is not a plain chain of modules in the "
                                  "model's forward (a functional operation acts inside it); the runtime cannot split it.")

    def step_chain(self, p: int, x: torch.Tensor, exchange=None) -> torch.Tensor:
        """Part p of the run's output from part p of its input; ``exchange(layer, x_p)`` returns every
        part of a layer's input where the layer has off-diagonal blocks (None: single process, not allowed)."""
        for module in self.modules:
            if isinstance(module, BlockLinear):
                cross = any(a != b for a, b in module.pairs)
                xs = exchange(module, x) if cross else None
                y = None
                for i, (r, q) in enumerate(module.pairs):
                    if r != p:
                        continue
                    xq = x if q == p else xs[q]
                    out = F.linear(xq, module.block_weight(i), module.blocks[i].bias)
                    y = out if y is None else y + out
                x = y
            else:
                x = module(x)
        return x

    def single(self, x: torch.Tensor) -> torch.Tensor:
        """The run in one process (what each step of the model does), for comparison."""
        return _Single(self)(x)


def replace_run(model: nn.Module, steps: Sequence[str], entry: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` whose first step is ``entry`` and whose other steps are identities
    (the parameters are shared, only the module paths down to the steps are copied)."""
    import copy

    local = copy.copy(model)
    local._modules = dict(local._modules)

    def put(name: str, module: nn.Module) -> None:
        parts = name.split(".")
        parent = local
        for part in parts[:-1]:
            child = copy.copy(parent._modules[part])
            child._modules = dict(child._modules)
            parent._modules[part] = child
            parent = child
        parent._modules[parts[-1]] = module

    put(steps[0], entry)
    for name in steps[1:]:
        put(name, nn.Identity())
    return local


class _Single(nn.Module):
    def __init__(self, run: PartitionedRun):
        super().__init__()
        self.steps = run.modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.steps:
            x = module(x)
        return x


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x.contiguous()


class _Entry(nn.Module):
    """Stands in for the run's first layer on rank 0: scatter → own chain → gather."""

    def __init__(self, runtime: "DistributedPartition"):
        super().__init__()
        self.runtime = runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runtime.run_distributed_part(x)


class DistributedPartition:
    """Rank p of a partitioned model on P = world-size processes (the process group must exist).

    Rank 0: ``forward(x)`` runs the whole model (trunk, distributed run, head) and ``run(x)`` only the
    partitioned run from its input; ``close()`` releases the other ranks. Ranks ≥ 1: ``serve()``
    answers rank 0 until ``close()``.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, device: str | torch.device = "cpu"):
        if not dist.is_initialized():
            raise ConfigError("torch.distributed is not initialised; call torch.distributed.init_process_group first, "
                              "or use chanprune.partition.runtime.run_distributed.")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.run_ = PartitionedRun(self.model, example.to(self.device))
        if self.run_.parts != self.world:
            raise ConfigError(f"the model is partitioned into P={self.run_.parts} parts but {self.world} processes run it; "
                              f"start {self.run_.parts} processes.")
        self.max_in = max(max(layer.in_sizes) for layer in self.run_.layers)
        self.max_out = max(self.run_.out_sizes)
        self.messages = 0
        if self.rank == 0:
            # the model as rank 0 runs it: the run's first layer becomes the distributed entry, the rest identity
            self.local = replace_run(self.model, self.run_.steps, _Entry(self))

    # -- the messages
    def _exchange(self, layer: BlockLinear, x: torch.Tensor) -> list[torch.Tensor]:
        bufs = [torch.empty(x.shape[0], self.max_in, dtype=x.dtype, device=x.device) for _ in range(self.world)]
        dist.all_gather(bufs, _pad(x, self.max_in))
        self.messages += 1
        return [b[:, :s] for b, s in zip(bufs, layer.in_sizes)]

    def _chain(self, x_p: torch.Tensor) -> torch.Tensor:
        return self.run_.step_chain(self.rank, x_p, self._exchange)

    def run_distributed_part(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0: the run from its input (original order) to its output (original order)."""
        first, last = self.run_.layers[0], self.run_.layers[-1]
        if first.in_index is not None:
            x = x.index_select(-1, first.in_index)
        header = torch.tensor([x.shape[0], 1], dtype=torch.long, device=self.device)
        dist.broadcast(header, 0)
        parts = [_pad(c, self.max_in) for c in x.split(self.run_.in_sizes, -1)]
        mine = torch.empty(x.shape[0], self.max_in, dtype=x.dtype, device=self.device)
        dist.scatter(mine, parts, src=0)
        y0 = self._chain(mine[:, : self.run_.in_sizes[0]])
        outs = [torch.empty(x.shape[0], self.max_out, dtype=x.dtype, device=self.device) for _ in range(self.world)]
        dist.gather(_pad(y0, self.max_out), outs, dst=0)
        self.messages += 2
        y = torch.cat([o[:, :s] for o, s in zip(outs, self.run_.out_sizes)], -1)
        if last.out_index is not None:
            y = y.index_select(-1, last.out_index)
        return y

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local(x.to(self.device))

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_distributed_part(x.to(self.device))

    @torch.no_grad()
    def serve(self) -> None:
        if self.rank == 0:
            raise ConfigError("serve() is for ranks >= 1; rank 0 calls forward().")
        while True:
            header = torch.zeros(2, dtype=torch.long, device=self.device)
            dist.broadcast(header, 0)
            batch, go = int(header[0]), int(header[1])
            if not go:
                return
            mine = torch.empty(batch, self.max_in, device=self.device)
            dist.scatter(mine, None, src=0)
            y = self._chain(mine[:, : self.run_.in_sizes[self.rank]])
            dist.gather(_pad(y, self.max_out), None, dst=0)

    def close(self) -> None:
        if self.rank == 0:
            dist.broadcast(torch.zeros(2, dtype=torch.long, device=self.device), 0)


# --------------------------------------------------------------------------- spawning


def _timed(fns: dict, rounds: int, device: str) -> dict[str, float]:
    """Median seconds of each callable, interleaved: every round calls each once, in order."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device != "cpu":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items() if v}


def _worker(rank: int, world: int, path: str, inputs_path: str, out_path: str, port: int, backend: str,
            timeout_s: float, threads: int, rounds: int, baseline_path: str | None) -> None:
    import json

    import safetensors.torch

    from ..io import load

    torch.set_num_threads(threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    try:
        model = load(path)
        x = safetensors.torch.load_file(inputs_path)["x"].to(device)
        rt = DistributedPartition(model, x[:1], device=device)
        if rank:
            rt.serve()
            return
        try:
            with torch.no_grad():
                y = rt.forward(x)
                seen: list[torch.Tensor] = []  # the run's input, for timing the run alone
                hook = rt.run_.layers[0].register_forward_pre_hook(lambda _m, i: seen.append(i[0]))
                model(x)
                hook.remove()
                fns = {"single": lambda: model(x), "distributed": lambda: rt.forward(x),
                       "run_single": lambda: rt.run_.single(seen[0]), "run_distributed": lambda: rt.run(seen[0])}
                if baseline_path:
                    dense = load(baseline_path).to(device).eval()
                    dense_run = nn.Sequential(*[dense.get_submodule(n) for n in rt.run_.steps])
                    fns.update({"dense": lambda: dense(x), "run_dense": lambda: dense_run(seen[0])})
                times = _timed(fns, rounds, device)
        finally:
            rt.close()
        meta = {"seconds": json.dumps(times), "messages": str(rt.messages)}
        safetensors.torch.save_file({"y": y.cpu().contiguous()}, out_path, metadata=meta)
    finally:
        dist.destroy_process_group()


@dataclass
class DistributedResult:
    outputs: torch.Tensor
    # median seconds per call, interleaved on rank 0: "single"/"distributed" (the whole partitioned model in one
    # process / on P), "run_single"/"run_distributed" (the partitioned run alone), and with a baseline
    # "dense"/"run_dense" (the unpartitioned model and its layers of the run)
    seconds: dict


def run_distributed(path: str | os.PathLike, inputs: torch.Tensor, *, backend: str = "gloo",
                    timeout_s: float = 60.0, threads: int = 1, rounds: int = 0, baseline: str | os.PathLike | None = None,
                    start_method: str = "spawn") -> DistributedResult:
    """Spawn P processes (P = the saved model's parts), run ``inputs`` through the model on them.

    Every process loads the model from ``path`` (a stem written by :func:`chanprune.save`). ``rounds``
    > 0 also times, interleaved on rank 0, the model in one process and on P, the run alone both ways,
    and with ``baseline`` (the saved unpartitioned model) the dense model and its layers of the run.
    ``start_method``: ``spawn`` (fresh interpreters; safe with CUDA) or ``fork`` (CPU only, starts in
    a fraction of the time since nothing is imported again).
    """
    import json

    import safetensors
    import safetensors.torch
    import torch.multiprocessing as mp

    from ..io import load

    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend must be 'gloo' (CPU) or 'nccl' (GPUs), not {backend!r}.")
    model = load(path)
    world = PartitionedRun(model, inputs[:1]).parts
    if backend == "nccl" and torch.cuda.device_count() < world:
        raise ConfigError(f"backend='nccl' needs {world} GPUs, this machine has {torch.cuda.device_count()}; use backend='gloo'.")
    with tempfile.TemporaryDirectory() as tmp:
        inputs_path, out_path = os.path.join(tmp, "x.safetensors"), os.path.join(tmp, "y.safetensors")
        safetensors.torch.save_file({"x": inputs.detach().cpu().contiguous()}, inputs_path)
        mp.start_processes(_worker, nprocs=world, join=True, start_method=start_method,
                           args=(world, str(path), inputs_path, out_path, free_port(), backend, timeout_s, threads,
                                 rounds, None if baseline is None else str(baseline)))
        with safetensors.safe_open(out_path, "pt") as fh:
            meta = fh.metadata() or {}
            y = fh.get_tensor("y")
    return DistributedResult(y, json.loads(meta.get("seconds", "{}")))


# --------------------------------------------------------------------------- simulation


@dataclass
class Link:
    """A point-to-point link: a message of n bytes takes ``latency_s + n / bandwidth_Bps``."""

    name: str
    bandwidth_Bps: float
    latency_s: float

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def simulate(run: PartitionedRun, x: torch.Tensor, links: Sequence[Link], *, repeats: int = 30,
             dense: Sequence[nn.Module] | None = None) -> dict:
    """Predicted time of the run on P devices: scatter + the slowest chain (+ exchanges) + gather.

    ``x`` is the run's input (original order). Each chain's time is measured alone on this process;
    messages follow ``links``: the scatter and the gather are P − 1 sequential messages each from/to
    device 0 (batch × |part| float32 values); a layer with off-diagonal blocks adds, per device, one
    message per block it reads from another device. ``dense``: the unpartitioned layers (and what runs
    between them) in order, timed the same way, for the speed-up.
    """
    first = run.layers[0]
    xp = x.index_select(-1, first.in_index) if first.in_index is not None else x
    parts = list(xp.split(run.in_sizes, -1))
    P, batch, item = run.parts, x.shape[0], x.element_size()

    # a chain alone: its blocks read parts of other devices from a local copy (the exchange is costed below)
    stand_ins: dict[int, list[torch.Tensor]] = {}

    def exchange_stub(layer, xq):
        return stand_ins.setdefault(id(layer), [torch.zeros(batch, s, dtype=x.dtype) for s in layer.in_sizes])

    chain = [_median_time(lambda p=p: run.step_chain(p, parts[p], exchange_stub), repeats) for p in range(P)]
    single = _median_time(lambda: run.single(x), repeats)
    dense_s = None
    if dense is not None:
        def dense_run():
            h = x
            for m in dense:
                h = m(h)
            return h
        dense_s = _median_time(dense_run, repeats)
    out = {"parts": P, "batch": batch, "chain_seconds": chain, "single_process_seconds": single,
           "dense_seconds": dense_s, "links": {}}
    for link in links:
        scatter = sum(link.seconds(batch * s * item) for s in run.in_sizes[1:])
        gather = sum(link.seconds(batch * s * item) for s in run.out_sizes[1:])
        exchange = 0.0
        for layer in run.layers:
            per_device = [sum(link.seconds(batch * layer.in_sizes[q] * item) for r, q in layer.pairs if r == p and q != p)
                          for p in range(P)]
            exchange += max(per_device) if per_device else 0.0
        total = scatter + max(chain) + exchange + gather
        out["links"][link.name] = {
            "bandwidth_GBps": link.bandwidth_Bps / 1e9, "latency_us": link.latency_s * 1e6,
            "scatter_s": scatter, "exchange_s": exchange, "gather_s": gather, "total_s": total,
            "speedup_vs_dense": (dense_s / total) if dense_s else None,
            "speedup_vs_single_process": single / total,
        }
    return out
