"""Surgery: remove the chosen channels from a copy of the model, then prove the copy is right.

The proof compares the pruned model with the *original* model in which the removed channels are forced
to zero at every module that outputs them (each producer's BatchNorm output, or the producer's own
output where it has none). Masked channels then contribute nothing to any consumer, residual sum or
concatenation, so a correct removal gives the same function. The witness needs no index bookkeeping of
consumers — it is independent of the graph library on exactly the side where mappings go wrong
(concatenations, flatten before Linear).

What is compared: the model output, and the output of every consumer of a pruned group (on the channels
it kept), so that a wrong input mapping is seen where it happens, before a ReLU or a narrow layer
downstream can hide it. Before that, cheap consistency checks: the graph library's mapping must name
existing channels and give each channel one group, no layer may lose all its channels, and every
producer must end with the planned number of channels (a removal that silently did nothing is caught).

Cost: the witness is the caller's model itself, run with temporary forward hooks under
``torch.inference_mode()`` in eval mode (its training flags are restored afterwards; nothing is copied or
cast), and the pruned model is run as it is — both in float32 on a small probe batch (``PROBE_SIZE``
images: prune() passes its first calibration images, else random ones), centre-cropped to
``PROBE_SIDE`` pixels a side when the model accepts that size (which channel feeds which does not depend
on the spatial size; a model that needs its full input size, e.g. a flatten into a Linear, is probed at
full size), with a relative tolerance of 1e-5 per compared tensor. Two images, not one: on one image a wrong
mapping can hide behind channels that happen to be dead there (bench/fuzz_surgery.py found such a case);
tiling the two crops into one image instead of batching them was tried and let that case through. When a
consumer of the witness reads more all-zero channels on the probe than the plan removes from it (ReLU-dead
channels, behind which a wrong mapping hides), the comparison is repeated at full size on all the images
given (prune() passes up to ``PROBE_RESERVE`` calibration images). Only when that fails is the comparison repeated in float64 (on cast copies of
the tensors), which rules out float32 rounding; the error then names the first layer, in execution
order, whose output diverges.

With ``on_mismatch="exclude"`` a failing plan is not an error: every planned group is verified on its
own (on a fresh copy), the groups that fail are dropped, the rest is removed from a fresh copy of the
original and verified again, and a warning names the excluded groups (``SurgeryReport.excluded``).
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import model_device
from .errors import ChanpruneError, ConfigError, ModelError, PruneError, VerificationError
from .graph import PruningGraph, channel_axis
from .modes import eval_mode

TOLERANCE = 1e-5  # relative error allowed between the pruned model and the masked original
PROBE_RESERVE = 16  # images prune() passes at most: the comparison runs on the first PROBE_SIZE, and on all of them
# (at full size) when a consumer of the witness reads more all-zero channels than it loses (a wrong mapping can hide
# behind channels dead on the first images: bench/fuzz_surgery.py found such a case)
PROBE_SIZE = 2  # images in the probe batch: prune() takes this many calibration images, else random ones (one image
# can leave a wrong mapping invisible when the channels it touches are dead on it: bench/fuzz_surgery.py found such a case)
PROBE_SIDE = 8  # spatial sides of the probe are first cropped to this; the full size is used if the model refuses it
ON_MISMATCH = ("raise", "exclude")
_FIX = "pass on_mismatch='exclude' to drop the offending groups, exclude their layers with ignored_layers, or pass verify=False to skip this check"


@dataclass
class SurgeryReport:
    removed: dict[int, list[int]]
    verified: bool
    max_rel_error: float | None
    verify_seconds: float
    remove_seconds: float
    excluded: list[dict] = field(default_factory=list)  # groups dropped by on_mismatch="exclude": index, name, reason
    probe_shape: tuple[int, ...] = ()  # the input the verification ran on


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


def _removed_output(module: nn.Module, inputs, output: torch.Tensor, index: torch.Tensor, axis: int) -> torch.Tensor:
    """``module``'s output as if its channels ``index`` had been removed, written back with zeros there.

    Zeroing the output is exact for every layer that treats channels independently. A LayerNorm over the
    channels is not one of them: its mean and variance run over the channels it has, so the layer is
    recomputed on the kept channels only — what the pruned LayerNorm computes.
    """
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        x = inputs[0]
        keep = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
        keep[index] = False
        keep = torch.nonzero(keep).flatten()
        weight = module.weight.index_select(0, keep) if module.weight is not None else None
        bias = module.bias.index_select(0, keep) if module.bias is not None else None
        y = F.layer_norm(x.index_select(-1, keep), (len(keep),), weight, bias, module.eps)
        return torch.zeros_like(output).index_copy(-1, keep, y.to(output.dtype))
    return output.index_fill(axis, index, 0.0)


def mask_hooks(model: nn.Module, sites: Mapping[str, Sequence[int]]):
    """Register forward hooks that zero ``sites[name]`` output channels; returns the handles."""
    modules = dict(model.named_modules())

    def make(channels, axis):
        index = torch.as_tensor(channels, dtype=torch.long)

        def hook(module, inputs, output):
            nonlocal index
            if index.device != output.device:
                index = index.to(output.device)
            return _removed_output(module, inputs, output, index, axis)

        return hook

    return [modules[name].register_forward_hook(make(c, channel_axis(modules[name]))) for name, c in sites.items()]


_FRESH_OUTPUT = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def _witness_hooks(modules: Mapping[str, nn.Module], sites: Mapping[str, Sequence[int]]):
    """:func:`mask_hooks` for the no-grad witness: convs, Linears and BatchNorms return a fresh tensor, so their
    output is zeroed in place (one op, no copy); other module types get a zeroed copy."""

    def make(channels, inplace, axis):
        index = torch.as_tensor(channels, dtype=torch.long)

        def hook(module, inputs, output):
            nonlocal index
            if index.device != output.device:
                index = index.to(output.device)
            if inplace:
                output.index_fill_(axis, index, 0.0)
                return None
            return _removed_output(module, inputs, output, index, axis)

        return hook

    return [modules[name].register_forward_hook(make(c, isinstance(modules[name], _FRESH_OUTPUT), channel_axis(modules[name])))
            for name, c in sites.items()]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _out_channels(module: nn.Module) -> int | None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return int(module.weight.shape[0])
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return int(module.num_features)
    return None


def _first_float_dtype(model: nn.Module) -> torch.dtype | None:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in model.buffers():
        if t.is_floating_point():
            return t.dtype
    return None


def _forward(model: nn.Module, probe: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``model(probe)`` in eval mode, without autograd, in ``dtype`` — without casting, copying or mutating
    ``model`` (a model in another dtype runs on cast copies of its tensors through ``functional_call``)."""
    own = _first_float_dtype(model)
    x = probe.to(device=model_device(model), dtype=dtype)
    with torch.inference_mode(), eval_mode(model):
        if own is None or own == dtype:
            out = model(x)
        else:
            state = {n: (t.to(dtype) if t.is_floating_point() else t)
                     for n, t in list(model.named_parameters()) + list(model.named_buffers())}
            out = torch.func.functional_call(model, state, (x,))
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the model returns a {type(out).__name__}, not a tensor; verified surgery needs a model whose forward returns one tensor.")
    return out


def _failing_layer(model: nn.Module, probe: torch.Tensor, dtype: torch.dtype) -> str:
    """Name the innermost module whose forward raises on ``probe`` (the model's own code if none)."""
    stack: list[str] = []
    failed: list[str] = []

    def pre(name):
        def hook(_m, _i):
            stack.append(name)

        return hook

    def post(_m, _i, _o):
        stack.pop()

    handles = []
    for n, m in model.named_modules():
        if n:
            handles.append(m.register_forward_pre_hook(pre(n)))
            handles.append(m.register_forward_hook(post))
    try:
        _forward(model, probe, dtype)
    except Exception:
        failed.extend(stack[-1:])
    finally:
        for h in handles:
            h.remove()
    return failed[0] if failed else "the model's forward()"


def _recorders(modules: Mapping[str, nn.Module], names: Sequence[str], store: dict[str, list[torch.Tensor]]):
    """Forward hooks appending each named module's output to ``store[name]`` (one entry per call)."""

    def make(name):
        def hook(_module, _inputs, output):
            store.setdefault(name, []).append(output)

        return hook

    return [modules[n].register_forward_hook(make(n)) for n in names]


def _dead_inputs(modules: Mapping[str, nn.Module], removed_in: Mapping[str, int], found: list[str]):
    """Forward pre-hooks on the consumers: a consumer whose input has more all-zero channels than it loses is
    appended to ``found`` (a wrong mapping onto a channel dead on this probe would go unseen there)."""

    def make(name, allowed):
        def hook(module, inputs):
            x = inputs[0]
            if not isinstance(x, torch.Tensor) or x.dim() < 2 or name in found:
                return
            alive = (x != 0).movedim(channel_axis(module), 0).reshape(x.shape[channel_axis(module)], -1).any(1)
            if int((~alive).sum()) > allowed:
                found.append(name)

        return hook

    return [modules[n].register_forward_pre_hook(make(n, k)) for n, k in removed_in.items() if n in modules]


def _compare(original: nn.Module, pruned: nn.Module, probe: torch.Tensor, dtype: torch.dtype,
             sites: Mapping[str, Sequence[int]], consumers: Sequence[str], tolerance: float,
             removed_in: Mapping[str, int] | None = None, dead: list[str] | None = None) -> tuple[float, str | None]:
    """Run the masked witness and the pruned model on ``probe``; return (largest relative error, first place
    that exceeds ``tolerance`` in execution order, or None).

    Compared: the model output, and the output of every consumer of a pruned group — where a wrong input
    mapping shows first, before a ReLU or a narrow layer downstream can hide it from the final output. A
    consumer that lost output channels itself is compared on the channels it kept (those the witness did
    not mask there). With ``removed_in`` (consumer → input channels it loses), consumers of the witness whose input
    has more all-zero channels than that are appended to ``dead``.
    """
    w_store: dict[str, list[torch.Tensor]] = {}
    p_store: dict[str, list[torch.Tensor]] = {}
    modules = dict(original.named_modules())
    handles = _witness_hooks(modules, sites) + _recorders(modules, consumers, w_store)
    if removed_in and dead is not None:
        handles += _dead_inputs(modules, removed_in, dead)
    try:
        expected = _forward(original, probe, dtype)
    except ChanpruneError:
        raise
    except Exception as exc:
        raise ModelError(f"the original model does not run on the probe batch of shape {tuple(probe.shape)} ({_brief(exc)}); "
                         "pass a probe (or example inputs) the model accepts.") from None
    finally:
        for h in handles:
            h.remove()
    modules = dict(pruned.named_modules())
    handles = _recorders(modules, consumers, p_store)
    try:
        got = _forward(pruned, probe, dtype)
    except ChanpruneError:
        raise
    except Exception as exc:
        where = _failing_layer(pruned, probe, dtype)
        raise VerificationError(
            f"the pruned model no longer runs: layer {where!r} fails on the probe batch ({_brief(exc)}); {_FIX}."
        ) from None
    finally:
        for h in handles:
            h.remove()
    # one max|p - w| and one max|w| per compared tensor, all divided at the end: a few small ops per layer
    names: list[str] = []
    diffs: list[torch.Tensor] = []
    scales: list[torch.Tensor] = []
    mismatch = got.new_tensor(float("inf"))

    def add(name, p, w):
        names.append(name)
        if p is None:  # calls or shapes do not correspond
            diffs.append(mismatch), scales.append(mismatch.new_tensor(1.0))
        else:
            diffs.append((p - w).abs().max()), scales.append(w.abs().max())

    for name, w_outs in w_store.items():  # dicts keep insertion order: execution order of the first call
        p_outs = p_store.get(name, [])
        if len(p_outs) != len(w_outs):
            add(name, None, None)
            continue
        for w, p in zip(w_outs, p_outs):
            if w.shape != p.shape:  # this consumer lost output channels too: compare the ones it kept
                gone = set(sites.get(name, ()))
                axis = channel_axis(modules[name]) % w.dim() if w.dim() > 1 else 0
                keep = [c for c in range(w.shape[axis]) if c not in gone] if w.dim() > 1 else []
                others = [d for d in range(w.dim()) if d != axis]
                if (p.dim() != w.dim() or len(keep) != p.shape[axis]
                        or any(w.shape[d] != p.shape[d] for d in others)):
                    add(name, None, None)
                    continue
                w = w.index_select(axis, torch.as_tensor(keep, device=w.device))
            add(name, p, w)
    if got.shape == expected.shape:
        add("the model output", got, expected)
    else:
        add("the model output", None, None)
    errors = (torch.stack(diffs).double() / torch.stack(scales).double().clamp_min(1e-12)).cpu().tolist()
    worst = max(errors)
    first = next((n for n, e in zip(names, errors) if not e <= tolerance), None)
    return worst, first


def _check_plan(graph: PruningGraph, plan: Mapping[int, Sequence[int]]) -> None:
    """The caller's mistakes (unknown group, index out of range, a group emptied) are PruneErrors, never excluded."""
    for gi, idxs in plan.items():
        if not 0 <= gi < len(graph.groups):
            raise PruneError(f"the plan names group {gi}, but the model has {len(graph.groups)} groups (0 to {len(graph.groups) - 1}); build the plan from this model's PruningGraph.")
        group = graph.groups[gi]
        if idxs[0] < 0 or idxs[-1] >= group.channels:
            raise PruneError(f"group {group.name!r} has {group.channels} channels; index {idxs[0] if idxs[0] < 0 else idxs[-1]} is out of range.")
        if len(idxs) >= group.channels:
            raise PruneError(f"removing all {group.channels} channels of group {group.name!r} would disconnect the network; keep at least one.")


def _check_mapping(graph: PruningGraph, plan: Mapping[int, Sequence[int]]) -> None:
    """Index bookkeeping the witness relies on must at least be self-consistent (a garbled group is refused)."""
    claimed: dict[str, tuple[int, set[int]]] = {}
    for gi in plan:
        group = graph.groups[gi]
        if group.garbled:
            raise VerificationError(f"the graph library maps group {group.name!r} {group.garbled}; {_FIX}.")
        for member in group.members:
            if member.role != "out":
                continue
            n = _out_channels(member.module)
            idxs = set(member.idxs)
            if idxs and n is not None and (min(idxs) < 0 or max(idxs) >= n):
                raise VerificationError(
                    f"the graph library maps group {group.name!r} to channels of layer {member.name!r} that do not exist "
                    f"(it has {n}); {_FIX}.")
            if member.name in claimed:
                other, seen = claimed[member.name]
                both = seen & idxs
                if both and other != gi:
                    raise VerificationError(
                        f"the graph library puts output channel {min(both)} of layer {member.name!r} in two groups "
                        f"({graph.groups[other].name!r} and {group.name!r}); {_FIX}.")
                seen |= idxs
            else:
                claimed[member.name] = (gi, idxs)


def _check_layers_kept(graph: PruningGraph, plan: Mapping[int, Sequence[int]]) -> None:
    """A group can span several layers (the branches of a concatenation): none of them may lose every channel."""
    for gi, idxs in plan.items():
        removed = set(idxs)
        group = graph.groups[gi]
        for member in group.members:
            n = _out_channels(member.module) if member.role == "out" else None
            if n is not None and n == len(set(member.idxs)) and all(r in removed for r in member.root_idxs):
                raise PruneError(
                    f"removing channels {idxs[:8]}{'...' if len(idxs) > 8 else ''} of group {group.name!r} would remove all "
                    f"{n} output channels of layer {member.name!r} (the group spans several layers, e.g. concatenated "
                    "branches); keep at least one channel of every layer, or pass on_mismatch='exclude' to skip the group.")


def _crop(probe: torch.Tensor) -> torch.Tensor:
    """The centre crop of ``probe`` with every spatial side at most ``PROBE_SIDE`` (``probe`` itself if none is larger)."""
    if probe.dim() < 3 or all(n <= PROBE_SIDE for n in probe.shape[2:]):
        return probe
    out = probe
    for dim in range(2, probe.dim()):
        n = probe.shape[dim]
        if n > PROBE_SIDE:
            out = out.narrow(dim, (n - PROBE_SIDE) // 2, PROBE_SIDE)
    return out.contiguous()


def _surgery(graph: PruningGraph, plan: dict[int, list[int]], original: nn.Module, verify: bool,
             probe: torch.Tensor | None, tolerance: float) -> tuple[nn.Module, SurgeryReport]:
    pruned = graph.model
    t0 = time.perf_counter()
    _check_mapping(graph, plan)
    _check_layers_kept(graph, plan)
    sites = mask_sites(graph, plan)
    expected: dict[str, int] = {}
    for gi, idxs in plan.items():
        removed = set(idxs)
        for member in graph.groups[gi].producers:
            expected[member.name] = (expected.get(member.name, member.module.weight.shape[0])
                                     - sum(1 for r in member.root_idxs if r in removed))
    for gi, idxs in plan.items():  # one group at a time, as PruningGraph.remove does, to name a failing one
        try:
            graph.remove({gi: idxs})
        except PruneError as exc:  # the plan was checked above: this is Torch-Pruning refusing its own mapping
            raise VerificationError(
                f"the graph library cannot remove channels {idxs[:8]}{'...' if len(idxs) > 8 else ''} of group "
                f"{graph.groups[gi].name!r}: by its own channel mapping {str(exc).split(': ', 1)[-1].rstrip('.')}; {_FIX}."
            ) from None
        except ChanpruneError:
            raise
        except Exception as exc:  # Torch-Pruning failing inside its own index bookkeeping
            raise VerificationError(
                f"the graph library failed while removing channels of group {graph.groups[gi].name!r} ({_brief(exc)}); {_FIX}."
            ) from None
    remove_seconds = time.perf_counter() - t0

    modules = dict(pruned.named_modules())
    for name, want in expected.items():
        got = modules[name].weight.shape[0]
        if got != want:
            raise VerificationError(
                f"the removal did not take effect as planned on layer {name!r}: it has {got} output channels, "
                f"expected {want}; {_FIX}."
            )

    report = SurgeryReport(plan, False, None, 0.0, remove_seconds)
    if not verify or not plan:
        return pruned, report
    t0 = time.perf_counter()
    if probe is None:
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn((PROBE_RESERVE,) + tuple(graph.example_inputs.shape[1:]), generator=gen)
    dtype = torch.float64 if _first_float_dtype(original) == torch.float64 else torch.float32
    consumers = sorted({m.name for gi in plan for m in graph.groups[gi].consumers})
    removed_in: dict[str, int] = {}  # consumer → input channels the plan takes from it
    for gi, idxs in plan.items():
        gone = set(idxs)
        for m in graph.groups[gi].consumers:
            removed_in[m.name] = removed_in.get(m.name, 0) + sum(1 for r in m.root_idxs if r in gone)

    def attempt(batch: torch.Tensor, crop: bool = True):
        """Compare on the crop of ``batch`` where the model accepts it, else at full size: (error, where, dead, batch used)."""
        dead: list[str] = []
        small = _crop(batch) if crop else batch
        if small is not batch:  # channel mappings do not depend on the spatial size, so a crop checks them for less
            try:
                return (*_compare(original, pruned, small, dtype, sites, consumers, tolerance, removed_in, dead), dead, small)
            except ModelError:  # the model needs its full input size (flatten into a Linear, fixed reshapes)
                dead.clear()
        return (*_compare(original, pruned, batch, dtype, sites, consumers, tolerance, removed_in, dead), dead, batch)

    reserve = probe
    error, where, dead, probe = attempt(reserve[:PROBE_SIZE])
    # a consumer reading channels that are zero on the whole probe (ReLU-dead there) can hide a wrong mapping behind
    # them: compare on every image given, then at their full size
    if where is None and dead and len(reserve) > PROBE_SIZE:
        error, where, dead, probe = attempt(reserve)
    if where is None and dead and probe.shape != reserve.shape:
        error, where, dead, probe = attempt(reserve, crop=False)
    if where is not None and dtype != torch.float64:
        # rule out float32 rounding: the same comparison in float64 (on cast copies of the tensors only)
        error, where = _compare(original, pruned, probe, torch.float64, sites, consumers, tolerance)
    if where is not None:
        raise VerificationError(
            f"the pruned model disagrees with the original masked at the removed channels "
            f"(relative error {error:.2e}, first divergence at {where!r}); {_FIX}."
        )
    report.verified, report.max_rel_error, report.probe_shape = True, error, tuple(probe.shape)
    report.verify_seconds = time.perf_counter() - t0
    return pruned, report


def _fresh_graph(graph: PruningGraph, original: nn.Module) -> PruningGraph:
    """A new PruningGraph over a fresh deep copy of ``original``, with the same ignored layers."""
    names = {m: n for n, m in graph.model.named_modules()}
    ignored = [names[m] for m in graph.ignored if m in names]
    return PruningGraph(copy.deepcopy(original), graph.example_inputs, ignored_layers=ignored)


def apply_plan(
    graph: PruningGraph,
    plan: Mapping[int, Sequence[int]],
    original: nn.Module,
    *,
    verify: bool = True,
    probe: torch.Tensor | None = None,
    tolerance: float = TOLERANCE,
    on_mismatch: str = "raise",
) -> tuple[nn.Module, SurgeryReport]:
    """Remove root indices ``plan[g]`` from group g of ``graph.model`` (a copy of ``original``), in place.

    ``original`` is never modified: with ``verify`` it serves as the witness, masked at the removed
    channels, and a :class:`VerificationError` names the first layer where the two disagree (or the layer
    where the pruned model stops running, or the group the graph library failed on).

    ``on_mismatch="exclude"``: instead of raising (a :class:`VerificationError`, or a :class:`PruneError` for
    a group the model cannot lose these channels from), find the groups whose surgery fails on its own
    (each verified alone on a fresh copy of ``original``), drop them, redo the surgery of the rest on a
    fresh copy and verify again; a warning names the excluded groups, and ``report.excluded`` lists them
    (index, name, channels that were to go, reason). Mistakes in the plan itself (unknown group, index
    out of range, a whole group) are raised in either mode. ``graph`` is then updated in place to describe
    the fresh copy (``graph.model`` is the returned pruned model), so callers holding it stay consistent.

    Returns the pruned model (``graph.model``) and a report.
    """
    if on_mismatch not in ON_MISMATCH:
        raise ConfigError(f"on_mismatch must be one of {', '.join(map(repr, ON_MISMATCH))}, not {on_mismatch!r}.")
    plan = {int(g): sorted(set(int(i) for i in idxs)) for g, idxs in plan.items() if len(idxs)}
    _check_plan(graph, plan)
    try:
        return _surgery(graph, plan, original, verify, probe, tolerance)
    except PruneError as exc:  # VerificationError, or a group this model cannot lose these channels from
        if on_mismatch != "exclude":
            raise
        first = exc

    # graph.model is half-pruned now: every further attempt works on a fresh copy of the original.
    t0 = time.perf_counter()
    bad: dict[int, str] = {}
    for gi, idxs in plan.items():
        try:
            _surgery(_fresh_graph(graph, original), {gi: idxs}, original, True, probe, tolerance)
        except PruneError as exc:
            bad[gi] = str(exc)
    kept = {gi: idxs for gi, idxs in plan.items() if gi not in bad}
    try:
        _surgery(_fresh_graph(graph, original), kept, original, True, probe, tolerance)
    except PruneError:
        # every group passes alone but some combination does not: add groups one at a time
        accepted: dict[int, list[int]] = {}
        for gi, idxs in kept.items():
            trial = {**accepted, gi: idxs}
            try:
                _surgery(_fresh_graph(graph, original), trial, original, True, probe, tolerance)
                accepted = trial
            except PruneError as exc:
                bad[gi] = f"fails together with the groups before it: {exc}"
        kept = accepted
    fresh = _fresh_graph(graph, original)
    pruned, report = _surgery(fresh, kept, original, verify, probe, tolerance)
    graph.__dict__.update(fresh.__dict__)
    report.excluded = [{"index": gi, "name": graph.groups[gi].name, "channels": len(plan[gi]), "reason": bad[gi]}
                       for gi in sorted(bad)]
    report.remove_seconds += time.perf_counter() - t0  # the search is part of the surgery's cost
    names = ", ".join(repr(graph.groups[gi].name) for gi in sorted(bad)) or "none"
    warnings.warn(
        f"verified surgery excluded {len(bad)} group(s) it could not carry out correctly ({names}); "
        f"they keep all their channels (first error: {first})",
        stacklevel=2,
    )
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
