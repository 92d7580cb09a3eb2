"""The four readings of the filter-level gradient matrix 𝒢_l (docs/hierarchical.md), all accumulated as K_l = 𝒢_lᵀ𝒢_l.

| reading            | column f, sample i                         | rows per sample |
|--------------------|--------------------------------------------|-----------------|
| ``gate``           | Σ_{h,w} A_f ⊙ ∂ℓ_i/∂A_f                    | 1               |
| ``consumer_weight``| ∂ℓ_i/∂W⁽ˡ⁺¹⁾[:, f] of every consumer       | n_{l+1}·k²      |
| ``producer_weight``| ∂ℓ_i/∂W⁽ˡ⁾[f] of every producer             | c_l·k²          |
| ``feature``        | A_f at every position (label-free)         | H·W             |

Which singularity each reading sees (zero filters, copies with split or independent outgoing weights)
is tabulated in docs/hierarchical.md and checked by tests/analysis. Per-sample weight gradients come from
one backward pass: for a conv with unfolded input U_i (C·k² × P) and output gradient δ_i (O × P),
∂ℓ_i/∂W = δ_i U_iᵀ.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AnalysisError
from ..graph import PruningGraph, channel_axis
from .. import distributed
from .gradients import GramStats, activation_gradients_only, all_reduce_stats, batch_generator, collect_gate_gradients

READINGS = ("gate", "consumer_weight", "producer_weight", "feature")


def _per_sample_weight_grad(module: nn.Module, inp: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """∂ℓ_i/∂W for every sample i: B × out × in × k² (Linear: k² = 1). Dense or depthwise convs only."""
    if isinstance(module, nn.Linear):  # N × … × features: a channels-last Linear sums over the positions
        b = inp.shape[0]
        return torch.einsum("bpo,bpi->boi", grad_out.reshape(b, -1, grad_out.shape[-1]),
                            inp.reshape(b, -1, inp.shape[-1])).unsqueeze(-1)
    if not isinstance(module, nn.Conv2d):
        raise AnalysisError(f"per-sample weight gradients are implemented for Conv2d and Linear, not {type(module).__name__}.")
    k2 = module.kernel_size[0] * module.kernel_size[1]
    unfolded = F.unfold(inp, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    delta = grad_out.flatten(2)  # B × O × P
    b = inp.shape[0]
    if module.groups == 1:
        u = unfolded.view(b, module.in_channels, k2, -1)
        return torch.einsum("bop,bckp->bock", delta, u)
    if module.groups == module.in_channels == module.out_channels:
        u = unfolded.view(b, module.in_channels, k2, -1)
        return torch.einsum("bcp,bckp->bck", delta, u).unsqueeze(2)  # B × O × 1 × k²
    raise AnalysisError(
        f"grouped convolutions (groups={module.groups}) are not supported by the weight-gradient readings; use reading='gate'."
    )


def collect_weight_gradients(
    model: nn.Module,
    graph: PruningGraph,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    side: str,
    *,
    labels: str = "true",
    groups: Iterable[int] | None = None,
    seed: int = 0,
) -> dict[int, GramStats]:
    """K_l from per-sample gradients of the consumers' input slices (``side='consumer'``) or the producers' filters."""
    if model.training:
        raise AnalysisError("the model is in train mode; call model.eval() first so samples stay independent.")
    chosen = list(range(len(graph))) if groups is None else list(groups)
    device = next(model.parameters()).device
    stats = {gi: GramStats(torch.zeros(graph.groups[gi].channels, graph.groups[gi].channels, dtype=torch.float64, device=device),
                           torch.zeros(graph.groups[gi].channels, dtype=torch.float64, device=device)) for gi in chosen}
    watch: dict[nn.Module, list] = {}
    for gi in chosen:
        g = graph.groups[gi]
        members = g.consumers if side == "consumer" else g.producers
        for m in members:
            watch.setdefault(m.module, []).append((gi, m))
    captured: dict[nn.Module, list] = {}

    def fwd(module, inputs, output):
        saved = inputs[0].detach()

        def bwd(grad, module=module, saved=saved):
            captured.setdefault(module, []).append((saved, grad.detach()))

        output.register_hook(bwd)

    handles = [m.register_forward_hook(fwd) for m in watch]
    offset, mine = distributed.shard(batches)
    try:
        with activation_gradients_only(model):
            for bi, (x, y) in enumerate(mine, offset):
                x, y = x.to(device).requires_grad_(True), y.to(device)
                logits = model(x)
                if labels == "sampled":
                    probs = F.softmax(logits.detach().float().cpu(), 1)
                    y = torch.multinomial(probs, 1, generator=batch_generator(seed, bi)).squeeze(1).to(device)
                F.cross_entropy(logits, y, reduction="sum").backward()
                grams = {gi: torch.zeros_like(stats[gi].gram) for gi in chosen}
                for module, uses in captured.items():
                    for inp, grad in uses:
                        dw = _per_sample_weight_grad(module, inp, grad).double()  # B × O × I × k²
                        for gi, member in watch[module]:
                            n = graph.groups[gi].channels
                            idxs = torch.as_tensor(member.idxs, device=device)
                            root = torch.as_tensor(member.root_idxs, device=device)
                            if side == "consumer":
                                cols = dw.index_select(2, idxs)                  # B × O × m × k²
                                cols = cols.permute(0, 2, 1, 3).flatten(2)       # B × m × (O·k²)
                            else:
                                cols = dw.index_select(1, idxs).flatten(2)       # B × m × (I·k²)
                            # several member indices may map to one root channel (flatten): stack them as rows
                            block = _stack_by_root(cols, root, n)               # B × n × rows
                            grams[gi] += torch.einsum("bfr,bgr->fg", block, block)
                            stats[gi].col_sum += block.sum(2).sum(0)
                for gi in chosen:
                    if not torch.isfinite(grams[gi]).all():
                        raise AnalysisError(f"gradients of group {graph.groups[gi].name!r} contain NaN or inf; check the weights and input normalisation.")
                    stats[gi].gram += grams[gi]
                    stats[gi].n_samples += x.shape[0]
                captured.clear()
    finally:
        for h in handles:
            h.remove()
    return all_reduce_stats(stats)


def _stack_by_root(cols: torch.Tensor, root: torch.Tensor, n: int) -> torch.Tensor:
    """B × m × r (member columns) → B × n × (r·mult): the j-th occurrence of a root channel goes to row block j."""
    b, m, r = cols.shape
    counts = torch.bincount(root, minlength=n)
    mult = int(counts.max())
    if mult == 1 and m == n:
        out = torch.zeros(b, n, r, dtype=cols.dtype, device=cols.device)
        out.index_copy_(1, root, cols)
        return out
    occurrence = torch.zeros_like(root)
    seen: dict[int, int] = {}
    for j, ri in enumerate(root.tolist()):
        occurrence[j] = seen.get(ri, 0)
        seen[ri] = occurrence[j].item() + 1
    out = torch.zeros(b, n, mult, r, dtype=cols.dtype, device=cols.device)
    out[:, root, occurrence] = cols
    return out.flatten(2)


def collect_feature_gram(
    model: nn.Module,
    graph: PruningGraph,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    groups: Iterable[int] | None = None,
) -> dict[int, GramStats]:
    """K_l = Σ over samples and positions of a aᵀ, a ∈ ℝ^{n_l} the group's channels at one position (label-free).

    A is read where it is used: at the input of every consumer of the group (after the activation, the
    residual sum or the concatenation, whatever the architecture puts there); consumers' rows are stacked.
    """
    chosen = list(range(len(graph))) if groups is None else list(groups)
    device = next(model.parameters()).device
    stats = {gi: GramStats(torch.zeros(graph.groups[gi].channels, graph.groups[gi].channels, dtype=torch.float64, device=device),
                           torch.zeros(graph.groups[gi].channels, dtype=torch.float64, device=device)) for gi in chosen}
    by_module: dict[nn.Module, list] = {}
    for gi in chosen:
        for member in graph.groups[gi].consumers:
            by_module.setdefault(member.module, []).append((gi, member))

    def hook(module, inputs):
        x = inputs[0].detach().double()
        if x.dim() > 2:  # channels on axis 1, positions after it (a channels-last Linear reads the last axis)
            x = x.movedim(channel_axis(module), 1)
        for gi, member in by_module[module]:
            n = graph.groups[gi].channels
            idxs = torch.as_tensor(member.idxs, device=device)
            root = torch.as_tensor(member.root_idxs, device=device)
            if x.dim() > 2:  # conv: one row per sample and position
                cols = x.index_select(1, idxs).flatten(2).transpose(1, 2).reshape(-1, len(member.idxs), 1)
            else:            # linear: a flatten maps one channel to several features, which become positions
                cols = x.index_select(1, idxs).unsqueeze(-1)
            block = _stack_by_root(cols, root, n)                     # rows × n × mult
            block = block.permute(0, 2, 1).reshape(-1, n)              # (rows·mult) × n
            stats[gi].gram += block.T @ block
            stats[gi].col_sum += block.sum(0)
            stats[gi].n_samples += block.shape[0]

    handles = [m.register_forward_pre_hook(hook) for m in by_module]
    try:
        with torch.no_grad():
            for x, _y in distributed.shard(batches)[1]:
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    return all_reduce_stats(stats)


def collect(model, graph, batches, reading: str, *, labels: str = "true", groups=None, seed: int = 0) -> dict[int, GramStats]:
    """K_l for every group under the chosen reading."""
    from ..progress import track

    batches = track(batches, f"analysis ({reading} reading)")
    if reading == "gate":
        return collect_gate_gradients(model, graph, batches, labels=labels, groups=groups, seed=seed)
    if reading == "consumer_weight":
        return collect_weight_gradients(model, graph, batches, "consumer", labels=labels, groups=groups, seed=seed)
    if reading == "producer_weight":
        return collect_weight_gradients(model, graph, batches, "producer", labels=labels, groups=groups, seed=seed)
    if reading == "feature":
        return collect_feature_gram(model, graph, batches, groups=groups)
    raise AnalysisError(f"unknown reading {reading!r}; choose one of {', '.join(READINGS)}.")
