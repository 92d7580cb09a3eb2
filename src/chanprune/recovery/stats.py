"""Consumer-side input statistics: im2col patches, float64 moments, sampled rows.

The *consumer view* (docs/recovery.md): a layer reading the channels being chosen sees, at every output
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

import contextlib
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..errors import ConfigError
from ..modes import eval_mode

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
        return torch.zeros(0, dtype=torch.long, device="cpu")
    base = torch.as_tensor(chans, dtype=torch.long, device="cpu") * k2
    return (base[:, None] + torch.arange(k2, device="cpu")[None, :]).reshape(-1)


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


class StopPass(Exception):
    """Raised inside a forward pass once it has given everything asked of it (the rest is skipped)."""


def _dummy(images: torch.Tensor, cached: int) -> torch.Tensor:
    """Zeros standing in for the input of a replayed prefix: a batch of 2 (3 if the cached batch has 2), so a
    tensor of the prefix that reaches the part after the cut (where the cached batch runs) cannot broadcast
    against it — the shapes clash and the pass fails instead of silently mixing."""
    k = 3 if cached == 2 else 2
    return torch.zeros((k,) + tuple(images.shape[1:]), dtype=images.dtype, device=images.device)


def call_order(model: nn.Module, example_inputs: torch.Tensor) -> tuple[list[str], dict[str, int]]:
    """(names of the modules, containers too, in the order of their first call; calls per forward) from one
    eval-mode forward of ``example_inputs``."""
    calls: list[str] = []
    count: dict[str, int] = {}

    def hook(_m, _i, name):
        count[name] = count.get(name, 0) + 1
        if count[name] == 1:
            calls.append(name)

    handles = [m.register_forward_pre_hook(lambda m_, i_, name=n: hook(m_, i_, name))
               for n, m in model.named_modules() if n]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return calls, count


class Replay:
    """Eval-mode, no-grad forward passes over calibration batches that stop as soon as they have what was asked.

    Every statistics pass here (moments, sampled rows) is such a pass. A pass can also start at a *cut*: a
    module whose input is all that the rest of the forward needs. After :meth:`move_to` caches the cut's
    input for every batch, the prefix runs on a dummy batch (:func:`_dummy`) and the cut's input is swapped
    for the cached activations, so a method that samples layer after layer (CP) pays about two forwards in
    all instead of one partial forward per layer. A cut is accepted only after a check on a probe batch
    (:meth:`valid`): the replay must run (a module whose input is not the only live tensor, e.g. a residual
    branch's first conv, fails with a shape clash) and give the output of a full forward.

    Under torchrun a replay holds this rank's contiguous block of the batches (``offset`` is its first batch's
    global index, which is what ``on_batch``/``after_batch`` receive); the callers all-reduce or gather.
    """

    def __init__(self, model: nn.Module, batches):
        if not batches:
            raise ConfigError("consumer statistics need calibration data; pass data=... (a DataBundle or (images, labels)).")
        self.model = model
        self.offset, mine = distributed.shard(batches)
        self.raw = [b[0] if isinstance(b, (tuple, list)) else b for b in mine]
        self.cut: str | None = None
        self.cached: list[torch.Tensor] | None = None
        self.pending: set[str] = set()
        self._valid: dict[str, bool] = {}
        self.device = next(model.parameters()).device

    def _forward(self, bi: int, hooks: Mapping[str, Callable], mode=None) -> None:
        """One forward of batch ``bi`` from the current cut, with pre-hooks {module name: fn(module, inputs)}."""
        modules = dict(self.model.named_modules())
        handles = []
        if self.cut is not None:
            cached = self.cached[bi]
            handles.append(modules[self.cut].register_forward_pre_hook(lambda _m, _i: (cached,)))
        handles += [modules[n].register_forward_pre_hook(fn) for n, fn in hooks.items()]
        x = self.raw[bi] if self.cut is None else _dummy(self.raw[bi], len(self.cached[bi]))
        try:
            with contextlib.ExitStack() as stack:
                if mode is not None:
                    stack.enter_context(mode)
                self.model(x.to(self.device))
        except StopPass:
            pass
        finally:
            for h in handles:
                h.remove()

    def run(self, hooks: Mapping[str, Callable], *, on_batch: Callable[[int], None] | None = None,
            after_batch: Callable[[int], None] | None = None, mode: Callable[[], object] | None = None,
            done: Callable[[], bool] | None = None, require: str | None = None) -> None:
        """One pass over every batch with ``hooks[name](module, inputs)`` on each named layer's first call.

        Each forward stops once every hooked layer has run and ``done()`` (if given) holds. ``mode()`` gives
        a context (e.g. a ``TorchFunctionMode``) to run each forward in. With ``require`` (the caller's name,
        for the message) a hooked layer that did not run is an error.
        """
        def wrap(name, fn):
            def hook(module, inputs):
                if name not in self.pending:
                    return
                fn(module, inputs)
                self.pending.discard(name)
                if not self.pending and (done is None or done()):
                    raise StopPass

            return hook

        with eval_mode(self.model), torch.no_grad():
            for bi in range(len(self.raw)):
                if on_batch is not None:
                    on_batch(self.offset + bi)
                self.pending = set(hooks)
                self._forward(bi, {n: wrap(n, fn) for n, fn in hooks.items()}, mode() if mode is not None else None)
                if require and self.pending:
                    raise ConfigError(f"layer(s) {sorted(self.pending)} did not run in the forward pass; {require} cannot sample them.")
                if after_batch is not None:
                    after_batch(self.offset + bi)

    def valid(self, name: str) -> bool:
        """Whether ``name`` works as a cut (checked once, on the first batch's first four images)."""
        if name not in self._valid:
            modules = dict(self.model.named_modules())
            x = self.raw[0][:4].to(self.device)
            if len(x) < 2:  # a one-image probe cannot tell a cut from a module that is not one
                self._valid[name] = False
                return False
            seen: list = []
            h = modules[name].register_forward_pre_hook(lambda _m, i: seen.append(i))
            try:
                with eval_mode(self.model), torch.no_grad():
                    want = self.model(x)
            finally:
                h.remove()
            ok = len(seen) == 1 and len(seen[0]) == 1 and isinstance(seen[0][0], torch.Tensor)
            if ok:
                held = seen[0][0]
                h = modules[name].register_forward_pre_hook(lambda _m, _i: (held,))
                try:
                    with eval_mode(self.model), torch.no_grad():
                        got = self.model(_dummy(x, len(x)))
                    ok = got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max())))
                except Exception:  # noqa: BLE001 - any failure of the replay means "not a cut"
                    ok = False
                finally:
                    h.remove()
            self._valid[name] = ok
        return self._valid[name]

    def cut_before(self, calls: Sequence[str], layers: Sequence[str]) -> str | None:
        """The latest valid cut called before every one of ``layers`` and not before the current cut
        (None: the network input). ``calls`` lists single-call modules in call order (:func:`call_order`)."""
        first = min((calls.index(p) for p in layers if p in calls), default=None)
        if first is None:
            return None
        start = calls.index(self.cut) if self.cut in calls else -1
        for i in range(first - 1, start, -1):
            if self.valid(calls[i]):
                return calls[i]
        return self.cut

    def move_to(self, name: str) -> None:
        """Cache the input of module ``name`` (later in the forward than the current cut) for every batch."""
        if name == self.cut:
            return
        out: list[torch.Tensor] = []

        def grab(_m, inputs):
            out.append(inputs[0].detach())

        self.run({name: grab}, require="a replay")
        self.cut, self.cached = name, out


def gather_rows(name: str, seed: int, batch_index: int, p: torch.Tensor, points: int) -> torch.Tensor:
    """Rows (images·points × D, float64 on the CPU) of ``p`` (N × L × D) at the positions
    :func:`sample_positions` draws for consumer ``name`` in batch ``batch_index``."""
    pos = sample_positions(name, seed, batch_index, p.shape[0], p.shape[1], points)
    if pos is not None:
        p = torch.gather(p, 1, pos.to(p.device)[:, :, None].expand(-1, -1, p.shape[2]))
    return p.reshape(-1, p.shape[2]).double().cpu()


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

    Replay(model, batches).run({n: make(n) for n in consumer_names})
    if distributed.is_distributed():  # every rank saw its block of the batches: sum the moments' sums
        seen = [n for n in consumer_names if n in accs]
        counts = torch.tensor([accs[n].count for n in seen], dtype=torch.float64, device="cpu")
        distributed.all_reduce_([t for n in seen for t in (accs[n].total, accs[n].gram)] + [counts])
        for n, c in zip(seen, counts.tolist()):
            accs[n].count = int(c)
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
    return torch.rand(images, length, generator=gen, device="cpu").argsort(1)[:, :points]


def consumer_rows(
    model: nn.Module | Replay,
    consumer_names: Sequence[str],
    batches=None,
    points_per_image: int | Mapping[str, int] = 10,
    seed: int = 0,
    **run,
) -> dict[str, torch.Tensor]:
    """{name: X (M × D, float64)}: im2col rows at ``points_per_image`` random output positions per image.

    ``model`` may be a :class:`Replay` (then ``batches`` is its own, and the pass starts at its cut);
    ``run`` passes further options to :meth:`Replay.run`. ``points_per_image`` may be a {name: count}
    mapping. Positions are distinct within an image (all of them where the map is smaller).

    A Linear consumer gives one row per image. The positions depend only on (seed, the consumer's name,
    the batch index) and the spatial size, so calling this on the original model and on a pruned copy
    samples the same patches.
    """
    replay = model if isinstance(model, Replay) else Replay(model, batches)
    modules = _modules(replay.model, consumer_names)
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in consumer_names}
    batch_index = [0]
    on_batch = run.pop("on_batch", None)

    def make(name):
        module = modules[name]
        points = int(points_per_image[name] if isinstance(points_per_image, Mapping) else points_per_image)

        def hook(_m, inputs):
            rows[name].append(gather_rows(name, seed, batch_index[0], patches(module, inputs[0]), points))

        return hook

    def start(bi):
        batch_index[0] = bi
        if on_batch is not None:
            on_batch(bi)

    replay.run({n: make(n) for n in consumer_names}, on_batch=start, **run)
    # under torchrun each rank sampled its block of the batches: gathered in rank order, the single-process rows
    return {n: distributed.all_gather_rows(torch.cat(r, 0)) for n, r in rows.items() if r}
