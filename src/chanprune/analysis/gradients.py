"""The per-sample gate-gradient matrix G and the features it is built from.

For every channel group l, the ``gate`` reading (arXiv 2206.03596; docs/hierarchical.md) is

    G_l[i, f] = ∂ℓ_i/∂g_f |_{g=1} = Σ_{h,w} A_f(x_i) ⊙ ∂ℓ_i/∂A_f(x_i),

the first-order effect on sample i's loss of a multiplicative gate g_f on channel f. A group's channels
may be produced at several places (residual adds tie every block output of a stage, a depthwise conv ties
its input and output); the gate is shared, so G_l's column is the sum over the members' outputs.
The gate sits on the member's BatchNorm output when it has one (Σ z·∂ℓ/∂z = Σ relu(z)·∂ℓ/∂relu(z), so
gating before or after a ReLU gives the same value), else on the conv/linear output.

With the model in eval mode (running BN statistics) sample i's forward pass does not depend on the other
samples, so a single backward pass of Σ_i ℓ_i gives every per-sample row. Only K_l = G_lᵀG_l (float64,
n_l × n_l), the column sums and N are accumulated, so memory does not grow with N; under torchrun each
process accumulates over its block of the calibration batches and the sums are all-reduced
(:func:`all_reduce_stats`, docs/distributed.md).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..errors import AnalysisError
from ..graph import ChannelGroup, PruningGraph, channel_axis
from ..modes import eval_mode


@dataclass
class GramStats:
    """Accumulated statistics of one group's gradient matrix G (N × n)."""

    gram: torch.Tensor          # K = GᵀG, float64, n × n
    col_sum: torch.Tensor       # Σ_i G[i, :], float64, n
    n_samples: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)  # only when keep_rows=True (tests, small N)

    def add(self, block: torch.Tensor, keep_rows: bool = False) -> None:
        block = block.double()
        self.gram += block.T @ block
        self.col_sum += block.sum(0)
        self.n_samples += block.shape[0]
        if keep_rows:
            self.rows.append(block.clone())

    def merge(self, other: "GramStats") -> None:
        """Add another shard's sums (what an all-reduce across processes does)."""
        self.gram += other.gram
        self.col_sum += other.col_sum
        self.n_samples += other.n_samples
        self.rows.extend(other.rows)

    @property
    def matrix(self) -> torch.Tensor:
        """The explicit G (only when rows were kept)."""
        return torch.cat(self.rows, 0)


def all_reduce_stats(stats: dict[int, "GramStats"]) -> dict[int, "GramStats"]:
    """Sum every rank's K, column sums and N (one packed all-reduce); kept rows are gathered in rank order.

    The identity in a single process. Every rank must call it with the same groups.
    """
    if not distributed.is_distributed():
        return stats
    counts = torch.tensor([s.n_samples for s in stats.values()], dtype=torch.float64, device="cpu")
    distributed.all_reduce_([t for s in stats.values() for t in (s.gram, s.col_sum)] + [counts])
    for s, n in zip(stats.values(), counts.tolist()):
        s.n_samples = int(n)
        if s.rows:
            s.rows = [distributed.all_gather_rows(torch.cat(s.rows, 0))]
    return stats


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The CPU generator of calibration batch ``batch_index`` (sampled labels): a function of (seed, index) only,
    so a batch draws the same labels whichever process handles it."""
    return torch.Generator(device="cpu").manual_seed((int(seed) * 1_000_003 + int(batch_index)) % (1 << 62))


def gate_sites(graph: PruningGraph, group: ChannelGroup) -> list[tuple[nn.Module, list[int], list[int]]]:
    """Modules whose outputs carry the group's channels: (module, member idxs, root idxs) per producer.

    A producer followed directly by a BatchNorm of the same group is gated at the BatchNorm's output.
    """
    norms = {id(m.module): m for m in group.norms}
    sites = []
    for prod in group.producers:
        site, idxs, root = prod.module, prod.idxs, prod.root_idxs
        for nxt in graph.successors(prod.module):
            if id(nxt.module) in norms:
                nm = norms[id(nxt.module)]
                site, idxs, root = nm.module, nm.idxs, nm.root_idxs
                break
        sites.append((site, idxs, root))
    return sites


@contextlib.contextmanager
def activation_gradients_only(model: nn.Module):
    """Freeze the parameters for one analysis: the backward pass then computes activation gradients
    only (what every reading needs) and skips the weight gradients a training step would compute."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _per_channel(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Sum over every dimension except batch (0) and the channel ``axis`` (1, or -1 for channels-last layers)."""
    x = x.movedim(axis, 1) if x.dim() > 2 else x
    return x.sum(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x


def collect_gate_gradients(
    model: nn.Module,
    graph: PruningGraph,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    labels: str = "true",
    groups: Iterable[int] | None = None,
    keep_rows: bool = False,
    seed: int = 0,
) -> dict[int, GramStats]:
    """Accumulate K_l = G_lᵀG_l and Σ_i G_l[i] for the chosen groups over ``batches``.

    ``labels``: ``"true"`` (empirical Fisher) or ``"sampled"`` (labels drawn from the model's own
    softmax: the true Fisher). The model must be in eval mode (running BN statistics keep the samples
    independent); it is left in eval mode.
    """
    if labels not in ("true", "sampled"):
        raise AnalysisError(f"labels must be 'true' or 'sampled', not {labels!r}.")
    if model.training:
        raise AnalysisError(
            "the model is in train mode, so BatchNorm mixes samples and per-sample gradients are wrong; call model.eval() first."
        )
    chosen = list(range(len(graph))) if groups is None else list(groups)
    device = next(model.parameters()).device
    stats = {
        gi: GramStats(
            torch.zeros(graph.groups[gi].channels, graph.groups[gi].channels, dtype=torch.float64, device=device),
            torch.zeros(graph.groups[gi].channels, dtype=torch.float64, device=device),
        )
        for gi in chosen
    }
    # site module -> [(group index, member idxs, root idxs)]
    by_module: dict[nn.Module, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    for gi in chosen:
        for module, idxs, root in gate_sites(graph, graph.groups[gi]):
            by_module.setdefault(module, []).append(
                (gi, torch.as_tensor(idxs, device=device), torch.as_tensor(root, device=device))
            )
    blocks: dict[int, torch.Tensor] = {}

    def forward_hook(module, _inputs, output):
        if not output.requires_grad:
            return
        saved = output.detach()

        def grad_hook(grad, saved=saved, module=module):
            contrib = _per_channel(saved * grad, channel_axis(module))  # B × C_module
            for gi, idxs, root in by_module[module]:
                block = blocks.setdefault(gi, torch.zeros(contrib.shape[0], graph.groups[gi].channels, device=device, dtype=contrib.dtype))
                block.index_add_(1, root, contrib.index_select(1, idxs))

        output.register_hook(grad_hook)

    handles = [m.register_forward_hook(forward_hook) for m in by_module]
    offset, mine = distributed.shard(batches)
    try:
        with activation_gradients_only(model):
            for bi, (x, y) in enumerate(mine, offset):
                x, y = x.to(device).requires_grad_(True), y.to(device)
                logits = model(x)
                if labels == "sampled":
                    probs = F.softmax(logits.detach().float().cpu(), dim=1)
                    y = torch.multinomial(probs, 1, generator=batch_generator(seed, bi)).squeeze(1).to(device)
                F.cross_entropy(logits, y, reduction="sum").backward()
                for gi, block in blocks.items():
                    if not torch.isfinite(block).all():
                        raise AnalysisError(
                            f"gradients of group {graph.groups[gi].name!r} contain NaN or inf; "
                            "check the model's weights and the input normalisation."
                        )
                    stats[gi].add(block, keep_rows=keep_rows)
                blocks.clear()
    finally:
        for h in handles:
            h.remove()
    return all_reduce_stats(stats)


def collect_features(
    model: nn.Module,
    graph: PruningGraph,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    reduce,
    groups: Iterable[int] | None = None,
) -> dict[int, torch.Tensor]:
    """Apply ``reduce(feature_map: B × C × ...) -> B × C`` to every gate site's output and sum onto root indices.

    Returns per group a (N × n) float64 tensor, averaged over the group's sites. Used by HRank (feature-map
    rank) and the label-free ``feature`` reading.
    """
    chosen = list(range(len(graph))) if groups is None else list(groups)
    device = next(model.parameters()).device
    by_module: dict[nn.Module, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    counts = {gi: 0 for gi in chosen}
    for gi in chosen:
        for module, idxs, root in gate_sites(graph, graph.groups[gi]):
            by_module.setdefault(module, []).append(
                (gi, torch.as_tensor(idxs, device=device), torch.as_tensor(root, device=device))
            )
            counts[gi] += 1
    rows: dict[int, list[torch.Tensor]] = {gi: [] for gi in chosen}
    current: dict[int, torch.Tensor] = {}

    def hook(module, _inputs, output):
        out = output.detach()
        values = reduce(out.movedim(channel_axis(module), 1) if out.dim() > 2 else out).double()
        for gi, idxs, root in by_module[module]:
            block = current.setdefault(gi, torch.zeros(values.shape[0], graph.groups[gi].channels, dtype=torch.float64, device=device))
            block.index_add_(1, root, values.index_select(1, idxs))

    handles = [m.register_forward_hook(hook) for m in by_module]
    try:
        with eval_mode(model), torch.no_grad():
            for x, _y in distributed.shard(batches)[1]:
                model(x.to(device))
                for gi, block in current.items():
                    rows[gi].append(block / max(1, counts[gi]))
                current.clear()
    finally:
        for h in handles:
            h.remove()
    # every rank holds a block of the images: gathered in rank order, the rows are the single-process rows
    return {gi: distributed.all_gather_rows(torch.cat(r, 0)) for gi, r in rows.items() if r}
