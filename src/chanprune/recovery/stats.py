"""Consumer-side input statistics: im2col patches, float64 moments, sampled rows.

The *consumer view* of methods.md §0: a layer reading the channels being chosen sees, at every output
position, an im2col input x ∈ ℝ^D with D = c·k² (channel j owns the k² coordinates j·k² … j·k²+k²−1,
the order of ``F.unfold`` and of ``weight.reshape(n, -1)``); a Linear layer is the case k² = 1.

* :func:`consumer_moments` — μ = E[x] and Σ = E[xxᵀ] (uncentred) in float64, accumulated batch by
  batch (memory O(D²) per consumer, independent of the calibration size). ``stride`` multiplies the
  conv's own stride, keeping every stride-th output position only (CaP's ``sampling_stride``).
* :func:`consumer_rows` — explicit rows of x at a few random output positions per image (CP's
  sampler). Positions are drawn from a generator seeded by (seed, consumer, batch), so two models with
  the same spatial sizes (the original and a pruned copy) are sampled at the same places.

Only dense convs (``groups == 1``) and Linear layers have this view; :func:`supported` says which.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

_MAX_CHUNK = 1 << 22  # elements of one float64 row block (32 MiB)


def supported(module: nn.Module) -> bool:
    """True for the layers with an im2col consumer view: Linear, and Conv1d/Conv2d with groups == 1."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1


def block_size(module: nn.Module) -> int:
    """k², the number of im2col coordinates one input channel owns (1 for Linear)."""
    if isinstance(module, nn.Linear):
        return 1
    k = 1
    for s in module.kernel_size:
        k *= int(s)
    return k


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The consumer's weight as an n × D matrix (a view of ``module.weight``)."""
    return module.weight.reshape(module.weight.shape[0], -1)


def columns(module: nn.Module, channels: Iterable[int]) -> torch.Tensor:
    """im2col coordinates owned by the given input channels (sorted, long)."""
    k2 = block_size(module)
    chans = sorted({int(c) for c in channels})
    if not chans:
        return torch.zeros(0, dtype=torch.long)
    base = torch.as_tensor(chans, dtype=torch.long) * k2
    return (base[:, None] + torch.arange(k2)[None, :]).reshape(-1)


def patches(module: nn.Module, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """im2col of the consumer's input: (N, L, D), L output positions (those of every ``stride``-th one)."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])
    if not supported(module):
        raise ConfigError(f"grouped convolutions have no im2col consumer view (groups={module.groups}).")
    one_d = isinstance(module, nn.Conv1d)
    if one_d:
        x = x.unsqueeze(2)
    pad = module._reversed_padding_repeated_twice
    if one_d:
        pad = list(pad) + [0, 0]
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, list(pad), mode=mode)
    kernel = (1, module.kernel_size[0]) if one_d else module.kernel_size
    dil = (1, module.dilation[0]) if one_d else module.dilation
    st = (1, module.stride[0] * stride) if one_d else tuple(int(s) * stride for s in module.stride)
    cols = F.unfold(x, kernel, dilation=dil, padding=0, stride=st)  # (N, D, L)
    return cols.transpose(1, 2)


@dataclass
class Moments:
    """μ = E[x] (D), Σ = E[xxᵀ] uncentred (D × D), both float64 on the CPU, over ``count`` rows.

    They are accumulated on the model's device; everything downstream (solves, rankings) runs on the CPU.
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    count: int

    @property
    def cov(self) -> torch.Tensor:
        """Σ̃ = Σ − μμᵀ (the centred covariance)."""
        return self.sigma - torch.outer(self.mu, self.mu)

    @classmethod
    def from_rows(cls, rows: torch.Tensor) -> "Moments":
        """Moments of explicit rows (M × D), e.g. CP's sampled rows (used by the equivalence checks)."""
        acc = _Accumulator(rows.shape[1], rows.device)
        acc.add(rows)
        return acc.moments()


class _Accumulator:
    def __init__(self, dim: int, device):
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        step = max(1, _MAX_CHUNK // max(1, rows.shape[1]))
        for i in range(0, rows.shape[0], step):
            block = rows[i : i + step].double()
            self.total += block.sum(0)
            self.gram += block.T @ block
        self.count += rows.shape[0]

    def moments(self) -> Moments:
        n = max(self.count, 1)
        gram = self.gram / n
        return Moments((self.total / n).cpu(), ((gram + gram.T) / 2).cpu(), self.count)


def _modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ConfigError(f"the model has no layer named {name!r}; use a name from model.named_modules().")
        if not supported(modules[name]):
            raise ConfigError(f"layer {name!r} has no im2col consumer view (only Linear and convs with groups=1).")
    return modules


class _Done(Exception):
    """Raised by a hook once every layer of interest has seen the batch (the rest of the pass is skipped)."""


def _run(model: nn.Module, batches, hooks: Mapping[str, callable], on_batch=None, stop_early: bool = False,
         modules: Mapping[str, nn.Module] | None = None) -> None:
    """One eval-mode forward pass over ``batches`` with forward pre-hooks on the named layers.

    ``stop_early``: abandon each forward once every hooked layer has run once (for layers called
    once per forward, which is what the consumer view assumes).
    """
    modules = dict(model.named_modules()) if modules is None else modules
    if not batches:
        raise ConfigError("consumer statistics need calibration data; pass data=... (a DataBundle or (images, labels)).")
    pending: set[str] = set()

    def wrap(name, fn):
        def hook(module, inputs):
            fn(module, inputs)
            pending.discard(name)
            if stop_early and not pending:
                raise _Done

        return hook

    handles = [modules[n].register_forward_pre_hook(wrap(n, h)) for n, h in hooks.items()]
    was_training = model.training
    if was_training:
        model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for bi, batch in enumerate(batches):
                if on_batch is not None:
                    on_batch(bi)
                pending.update(hooks)
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                try:
                    model(x.to(device))
                except _Done:
                    pass
    finally:
        for h in handles:
            h.remove()
        if was_training:
            model.train()


def consumer_moments(
    model: nn.Module,
    consumer_names: Sequence[str],
    batches,
    stride: int = 1,
) -> dict[str, Moments]:
    """{name: Moments} of each consumer's im2col input over ``batches`` (one forward pass, float64)."""
    if not isinstance(stride, int) or stride < 1:
        raise ConfigError(f"sampling_stride must be a positive integer, not {stride!r}.")
    modules = _modules(model, consumer_names)
    accs: dict[str, _Accumulator] = {}

    def make(name):
        module = modules[name]

        def hook(_m, inputs):
            rows = patches(module, inputs[0], stride)
            rows = rows.reshape(-1, rows.shape[-1])
            if name not in accs:
                accs[name] = _Accumulator(rows.shape[1], rows.device)
            accs[name].add(rows)

        return hook

    _run(model, batches, {n: make(n) for n in consumer_names}, stop_early=True, modules=modules)
    return {n: accs[n].moments() for n in consumer_names if n in accs}


def sample_positions(name: str, seed: int, batch_index: int, images: int, length: int, points: int) -> torch.Tensor | None:
    """The output positions :func:`consumer_rows` samples for consumer ``name`` in batch ``batch_index``.

    (images × points) indices into the ``length`` output positions, or None where the map has at most
    ``points`` positions (then every position is used, in order). Other code gathers values at the same
    positions with it (CP's shortcut correction).
    """
    if length <= points:
        return None
    tag = zlib.crc32(name.encode())
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + tag * 7919 + int(batch_index)) % (1 << 62))
    return torch.rand(images, length, generator=gen).argsort(1)[:, :points]


def consumer_rows(
    model: nn.Module,
    consumer_names: Sequence[str],
    batches,
    points_per_image: int | Mapping[str, int] = 10,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """{name: X (M × D, float64)}: im2col rows at ``points_per_image`` random output positions per image.

    ``points_per_image`` may be a {name: count} mapping. Positions are distinct within an image (all of
    them where the map is smaller).

    A Linear consumer gives one row per image. The positions depend only on (seed, the consumer's name,
    the batch index) and the spatial size, so calling this on the original model and on a pruned copy
    samples the same patches.
    """
    modules = _modules(model, consumer_names)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in consumer_names}
    batch_index = [0]

    def make(name):
        module = modules[name]
        points = int(points_per_image[name] if isinstance(points_per_image, Mapping) else points_per_image)

        def hook(_m, inputs):
            p = patches(module, inputs[0])  # (N, L, D)
            pos = sample_positions(name, seed, batch_index[0], p.shape[0], p.shape[1], points)
            if pos is not None:
                p = torch.gather(p, 1, pos.to(p.device)[:, :, None].expand(-1, -1, p.shape[2]))
            rows[name].append(p.reshape(-1, p.shape[2]).double().cpu())

        return hook

    def on_batch(bi):
        batch_index[0] = bi

    _run(model, batches, {n: make(n) for n in consumer_names}, on_batch=on_batch, stop_early=True, modules=modules)
    return {n: torch.cat(r, 0) for n, r in rows.items() if r}
