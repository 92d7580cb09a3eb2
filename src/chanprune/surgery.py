"""Surgery: remove the chosen channels from a copy of the model, then prove the copy is right.

The proof compares the pruned model with the *original* model in which the removed channels are forced
to zero at every module that outputs them (each producer's BatchNorm output, or the producer's own
output where it has none). Masked channels then contribute nothing to any consumer, residual sum or
concatenation, so a correct removal gives the same function. The witness needs no index bookkeeping of
consumers — it is independent of the graph library on exactly the side where mappings go wrong
(concatenations, flatten before Linear). Both sides run in float64 on a small probe batch.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .errors import VerificationError
from .graph import PruningGraph

TOLERANCE = 1e-5


@dataclass
class SurgeryReport:
    removed: dict[int, list[int]]
    verified: bool
    max_rel_error: float | None
    verify_seconds: float
    remove_seconds: float


def mask_sites(graph: PruningGraph, plan: Mapping[int, Sequence[int]]) -> dict[str, list[int]]:
    """Module name → output channels to zero so that ``graph.model`` behaves as if ``plan`` were removed.

    Every module that *outputs* a group's channels is masked: convs, Linears and every BatchNorm of the
    group — in pre-activation nets (DenseNet) a BatchNorm after a concatenation would otherwise turn the
    zeroed channel back into its shift β − γμ/σ.
    """
    zero: dict[str, set[int]] = {}
    for gi, idxs in plan.items():
        removed = set(int(i) for i in idxs)
        for member in graph.groups[gi].members:
            if member.role == "out":
                zero.setdefault(member.name, set()).update(
                    mi for mi, ri in zip(member.idxs, member.root_idxs) if ri in removed
                )
    return {name: sorted(c) for name, c in zero.items() if c}


def mask_hooks(model: nn.Module, sites: Mapping[str, Sequence[int]]):
    """Register forward hooks that zero ``sites[name]`` output channels; returns the handles."""
    modules = dict(model.named_modules())

    def make(channels):
        index = torch.as_tensor(channels, dtype=torch.long)

        def hook(_module, _inputs, output):
            output = output.clone()
            output.index_fill_(1, index.to(output.device), 0.0)
            return output

        return hook

    return [modules[name].register_forward_hook(make(c)) for name, c in sites.items()]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _first_divergence(witness: nn.Module, pruned: nn.Module, probe: torch.Tensor, tolerance: float) -> str:
    """Name the first module (in execution order) whose output differs on the channels both have."""
    outputs: dict[str, list] = {"w": [], "p": []}

    def record(tag, name):
        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                outputs[tag].append((name, out.detach()))

        return hook

    handles = [m.register_forward_hook(record("w", n)) for n, m in witness.named_modules() if n and not list(m.children())]
    handles += [m.register_forward_hook(record("p", n)) for n, m in pruned.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad():
            witness(probe)
            pruned(probe)
    finally:
        for h in handles:
            h.remove()
    pruned_out = dict(outputs["p"])
    for name, w_out in outputs["w"]:
        p_out = pruned_out.get(name)
        if p_out is None or p_out.dim() < 2:
            continue
        if p_out.shape == w_out.shape:
            if _relative_error(p_out, w_out) > tolerance:
                return name
            continue
        # channels removed here: the kept ones are the witness channels that are not identically zero
        live = w_out.transpose(0, 1).flatten(1).abs().amax(1) > 0
        if int(live.sum()) == p_out.shape[1] and w_out.shape[2:] == p_out.shape[2:]:
            if _relative_error(p_out, w_out[:, live]) > tolerance:
                return name
    return "the model output"


def apply_plan(
    graph: PruningGraph,
    plan: Mapping[int, Sequence[int]],
    original: nn.Module,
    *,
    verify: bool = True,
    probe: torch.Tensor | None = None,
    tolerance: float = TOLERANCE,
) -> tuple[nn.Module, SurgeryReport]:
    """Remove root indices ``plan[g]`` from group g of ``graph.model`` (a copy of ``original``), in place.

    ``original`` is never modified: with ``verify`` it serves as the witness, masked at the removed
    channels, and a :class:`VerificationError` names the first layer where the two disagree.
    Returns the pruned model (``graph.model``) and a report.
    """
    plan = {int(g): sorted(set(int(i) for i in idxs)) for g, idxs in plan.items() if len(idxs)}
    pruned = graph.model
    example_inputs = graph.example_inputs
    t0 = time.perf_counter()
    sites = mask_sites(graph, plan)
    expected = {}
    for gi, idxs in plan.items():
        for member in graph.groups[gi].producers:
            expected[member.name] = member.module.weight.shape[0] - sum(1 for r in member.root_idxs if r in set(idxs))
    graph.remove(plan)
    remove_seconds = time.perf_counter() - t0

    modules = dict(pruned.named_modules())
    for name, want in expected.items():
        got = modules[name].weight.shape[0]
        if got != want:
            raise VerificationError(
                f"the removal did not take effect on layer {name!r}: it has {got} output channels, expected {want}; "
                "this model is not handled by the graph library, exclude that layer with ignored_layers."
            )

    report = SurgeryReport(plan, False, None, 0.0, remove_seconds)
    if not verify or not plan:
        return pruned, report
    t0 = time.perf_counter()
    witness = copy.deepcopy(original).double().eval()
    check = copy.deepcopy(pruned).double().eval()
    if probe is None:
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn((4,) + tuple(example_inputs.shape[1:]), generator=gen)
    probe = probe.double()
    handles = mask_hooks(witness, sites)
    try:
        with torch.no_grad():
            expected_out = witness(probe)
            got_out = check(probe)
        error = _relative_error(got_out, expected_out)
        if not error <= tolerance:
            where = _first_divergence(witness, check, probe, tolerance)
            raise VerificationError(
                f"the pruned model disagrees with the original masked at the removed channels "
                f"(relative error {error:.2e}); first divergence at {where!r}. "
                "Exclude that layer with ignored_layers, or pass verify=False to skip this check."
            )
    finally:
        for h in handles:
            h.remove()
    report.verified, report.max_rel_error = True, error
    report.verify_seconds = time.perf_counter() - t0
    return pruned, report


def prune_copy(
    model: nn.Module,
    plan: Mapping[int, Sequence[int]],
    example_inputs: torch.Tensor,
    *,
    ignored_layers=None,
    **kwargs,
) -> tuple[nn.Module, SurgeryReport]:
    """Prune a deep copy of ``model``; ``plan`` indexes the groups of ``PruningGraph(model, ...)``."""
    graph = PruningGraph(copy.deepcopy(model), example_inputs, ignored_layers=ignored_layers)
    return apply_plan(graph, plan, model, **kwargs)
