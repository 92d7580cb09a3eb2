"""Partition pruning (Shahhosseini et al., arXiv 1901.11391 / PDP 2020; methods.md §6 [reconstruction]).

Instead of narrowing a layer, cut the weights that *cross* between P devices, so each device computes
its part of a run of consecutive layers from its own part of the previous one.

In the paper's order, for a run of layers L_1…L_K (Linear, or convolutions → grouped convolutions):

1. **split** every neuron set of the run (inputs of L_1, the hidden sets, outputs of L_K) into P parts
   of equal size (± 1; exactly equal for convolutions);
2. **assign** neurons to parts — ``contiguous`` (index order) or ``energy`` (maximise the weight energy
   Σ_p ‖W[R_p, C_p]‖² on the diagonal blocks, :mod:`chanprune.partition.assignment`); the permutation
   is absorbed by the run itself (hidden sets: rows of one layer, per-neuron BatchNorms and columns of
   the next; the ends: gathers on the first and last layer), so the function is unchanged before the cut;
3. **cut** — ``block_diagonal`` keeps W[R_p, C_p]; ``block_topk`` also keeps the off-diagonal blocks of
   largest energy while the inputs they make devices exchange stay within ``budget`` (a fraction of the
   all-to-all traffic Σ_{p≠q}|C_q|); ``balanced`` keeps, in each device's rows R_p, the |R_p|·|C_p|
   largest-magnitude weights wherever they are (equal non-zeros per device, the same count as
   block-diagonal, but reading other devices' inputs: the communication-unaware baseline);
4. **recover** — ``compensate``: each row part p is refit in closed form from the original model's
   input statistics using only the inputs it keeps, W′_{R_p} = W_{R_p} Σ̃_{C,S_p} Σ̃_{S_p S_p}⁻¹,
   b′ = b + Wμ − W′μ_{S_p} (:func:`chanprune.recovery.compensate`); ``bn`` re-estimates BatchNorms;
   fine-tuning is :func:`chanprune.finetune` afterwards.

The result is the model with each partitioned layer replaced by its single-process form
(:class:`~chanprune.partition.modules.BlockLinear`, :class:`~chanprune.partition.modules.GroupedConv2d`),
verified against the original with the cut weights zeroed (and the refit applied) in place; it saves,
loads and exports like any model, and :mod:`chanprune.partition.runtime` runs it on P processes.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..calibration import as_batches, trace_inputs
from ..config import PruneConfig
from ..cost import count_macs_params
from ..errors import ConfigError, VerificationError
from ..partition import assignment as assign
from ..partition.modules import BlockLinear, GroupedConv2d
from ..recovery import compensate, consumer_moments
from ..recovery.stats import call_order, columns, weight_matrix
from .registry import register_method

MODES = ("block_diagonal", "block_topk", "balanced")
ASSIGNMENTS = ("contiguous", "energy")
_PER_NEURON = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class PartitionConfig(PruneConfig):
    """Partition a run of consecutive layers into ``parts`` (P) independent blocks.

    ``layers``: the names of the run (consecutive Linear layers, or consecutive convolutions); default
    every Linear layer but the last one called (the classifier, where the parts are gathered).
    ``mode``: ``block_diagonal`` | ``block_topk`` (with ``budget``) | ``balanced``; ``assignment``:
    ``contiguous`` | ``energy``. ``recover``: ``none`` | ``compensate`` | ``bn`` | ``compensate+bn``.
    ``ridge``: the refit's regulariser (λ = ridge·tr(Σ̃)/D). ``target_macs``/``ratio`` do not apply.
    """

    method: ClassVar[str] = "partition"
    # not a MAC-target method, so not listed in chanprune.methods.METHODS (which `prune --method` and the
    # scoreboard drive with MAC targets); `chanprune partition` is its command
    generic: ClassVar[bool] = True
    parts: int = 2
    layers: tuple[str, ...] = ()
    mode: str = "block_diagonal"
    assignment: str = "contiguous"
    budget: float = 0.25
    ridge: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        self.target_macs = None  # the cut is set by P and the mode, not by a MAC target
        if isinstance(self.parts, bool) or not isinstance(self.parts, int) or self.parts < 1:
            raise ConfigError(f"parts (P) must be a positive integer, not {self.parts!r}; e.g. parts=2.")
        if isinstance(self.layers, str):
            self.layers = (self.layers,)
        self.layers = tuple(self.layers)
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if self.assignment not in ASSIGNMENTS:
            raise ConfigError(f"assignment must be one of {', '.join(ASSIGNMENTS)}, not {self.assignment!r}.")
        if not isinstance(self.budget, (int, float)) or not 0 <= self.budget <= 1:
            raise ConfigError(f"budget must lie in [0, 1] (a fraction of the all-to-all traffic), not {self.budget!r}.")
        if not isinstance(self.ridge, (int, float)) or self.ridge < 0:
            raise ConfigError(f"ridge must be >= 0, not {self.ridge!r}.")


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Consecutive layers ``names`` (call order) and the modules called between layer k and k+1."""

    names: list[str]
    layers: list[nn.Module]
    between: list[list[str]]
    conv: bool


def find_run(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> Run:
    """Check that ``names`` are consecutive Linear (or Conv2d) layers, each called once; return the run."""
    modules = dict(model.named_modules())
    calls, count = call_order(model, example)
    order = [n for n in calls if not any(True for _ in modules[n].children())]  # leaves, by first call
    if not names:
        linears = [n for n in order if isinstance(modules[n], nn.Linear)]
        if len(linears) < 2:
            raise ConfigError("the model has fewer than two Linear layers, so there is no run to partition before "
                              "the classifier; pass layers=(...) naming the layers to partition.")
        names = list(dict.fromkeys(linears[:-1]))
    for n in names:
        if n not in modules:
            raise ConfigError(f"the model has no layer named {n!r}; use a name from model.named_modules().")
        if type(modules[n]) not in (nn.Linear, nn.Conv2d):
            raise ConfigError(f"layer {n!r} is a {type(modules[n]).__name__}; partition takes Linear and Conv2d layers.")
        if isinstance(modules[n], nn.Conv2d) and modules[n].groups != 1:
            raise ConfigError(f"layer {n!r} is already a grouped convolution (groups={modules[n].groups}); leave it out.")
        if count.get(n, 0) != 1:
            raise ConfigError(f"layer {n!r} is called {count.get(n, 0)} times per forward; partition needs layers called once.")
    names = sorted(dict.fromkeys(names), key=order.index)
    conv = isinstance(modules[names[0]], nn.Conv2d)
    if any(isinstance(modules[n], nn.Conv2d) != conv for n in names):
        raise ConfigError("layers mixes Linear and Conv2d layers; partition one run of one kind at a time.")
    between: list[list[str]] = []
    for a, b in zip(names, names[1:]):
        mid = order[order.index(a) + 1: order.index(b)]
        width = modules[a].out_features if not conv else modules[a].out_channels
        nxt = modules[b].in_features if not conv else modules[b].in_channels
        for m in mid:
            mod = modules[m]
            has_state = any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False))
            if isinstance(mod, _PER_NEURON) and mod.num_features == width:
                continue
            if has_state or isinstance(mod, (nn.Linear, nn.Conv2d)):
                raise ConfigError(f"layers {a!r} and {b!r} are not consecutive: {m!r} ({type(mod).__name__}) runs between "
                                  "them; name a run of layers with only activations, dropout, pooling or BatchNorm between.")
        if width != nxt:
            raise ConfigError(f"layers {a!r} and {b!r} are not consecutive: {a!r} has {width} outputs but {b!r} "
                              f"reads {nxt}; name a run where each layer feeds the next.")
        between.append(mid)
    return Run(list(names), [modules[n] for n in names], between, conv)


# --------------------------------------------------------------------------- the plan


@dataclass
class LayerCut:
    """One layer's cut, in part order: rows/cols map part position → original index."""

    rows: np.ndarray
    cols: np.ndarray
    out_sizes: list[int]
    in_sizes: list[int]
    pairs: list[tuple[int, int]]
    mask: torch.Tensor | None  # balanced: 0/1 (out × in) in part order


def _bounds(sizes: Sequence[int]) -> list[int]:
    return [0] + np.cumsum(sizes).tolist()


def _block_energy(E: np.ndarray, rb: list[int], cb: list[int], P: int) -> np.ndarray:
    return np.array([[E[rb[p]:rb[p + 1], cb[q]:cb[q + 1]].sum() for q in range(P)] for p in range(P)])


def _topk_pairs(Eb: np.ndarray, in_sizes: list[int], budget: float) -> list[tuple[int, int]]:
    """Diagonal blocks, then off-diagonal blocks by energy while the exchanged inputs fit the budget."""
    P = len(in_sizes)
    pairs = [(p, p) for p in range(P)]
    allowed = budget * (P - 1) * sum(in_sizes)
    used = 0.0
    for p, q in sorted(((p, q) for p in range(P) for q in range(P) if p != q), key=lambda pq: -Eb[pq]):
        if used + in_sizes[q] <= allowed + 1e-9:
            pairs.append((p, q))
            used += in_sizes[q]
    return pairs


def _balanced_mask(Wp: torch.Tensor, out_sizes: list[int], in_sizes: list[int]) -> torch.Tensor:
    """In each row part R_p, keep the |R_p|·|C_p| largest-|w| weights (any column)."""
    mag = Wp.detach().double().reshape(Wp.shape[0], Wp.shape[1], -1).pow(2).sum(-1)
    mask = torch.zeros(mag.shape, dtype=torch.float32)
    rb = _bounds(out_sizes)
    for p in range(len(out_sizes)):
        block = mag[rb[p]:rb[p + 1]].flatten()
        keep = torch.topk(block, out_sizes[p] * in_sizes[p]).indices
        flat = torch.zeros(block.numel())
        flat[keep] = 1
        mask[rb[p]:rb[p + 1]] = flat.reshape(-1, mag.shape[1])
    return mask


def plan_cuts(run: Run, config: PartitionConfig) -> tuple[list[LayerCut], dict]:
    """The assignment and the kept blocks of every layer of the run; a report of the energy kept."""
    P = config.parts
    if config.mode != "block_diagonal" and run.conv:
        raise ConfigError(f"mode={config.mode!r} applies to Linear layers; convolutions are partitioned "
                          "block-diagonally as grouped convolutions (mode='block_diagonal').")
    weights = [m.weight for m in run.layers]
    what = "channels" if run.conv else "neurons"
    widths = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    sizes = []
    for k, n in enumerate(widths):
        where = f"input {what} of {run.names[0]!r}" if k == 0 else f"output {what} of {run.names[k - 1]!r}"
        sizes.append(assign.part_sizes(n, P, exact=run.conv, what=where))
    E = assign.energies(weights)
    if config.assignment == "energy" and P > 1:
        labels = assign.energy_assignment(E, sizes, [True] * len(sizes))
    else:
        labels = [assign.contiguous(s) for s in sizes]
    perms = [np.argsort(lab, kind="stable") for lab in labels]
    cuts = []
    report = {"energy_total": float(sum(e.sum() for e in E)),
              "energy_diagonal": assign.kept_energy(E, labels, P),
              "energy_diagonal_contiguous": assign.kept_energy(E, [assign.contiguous(s) for s in sizes], P),
              "layers": {}}
    kept_total = 0.0
    for k, (name, layer) in enumerate(zip(run.names, run.layers)):
        rows, cols = perms[k + 1], perms[k]
        Ep = E[k][rows][:, cols]
        rb, cb = _bounds(sizes[k + 1]), _bounds(sizes[k])
        Eb = _block_energy(Ep, rb, cb, P)
        mask = None
        if config.mode == "block_diagonal" or P == 1:
            pairs = [(p, p) for p in range(P)]
        elif config.mode == "block_topk":
            pairs = _topk_pairs(Eb, sizes[k], config.budget)
        else:
            pairs = [(p, q) for p in range(P) for q in range(P)]
            mask = _balanced_mask(layer.weight[rows][:, cols], sizes[k + 1], sizes[k])
        if mask is not None:
            kept = float((torch.as_tensor(Ep) * mask.double()).sum())
        else:
            kept = float(sum(Eb[p, q] for p, q in pairs))
        kept_total += kept
        traffic = sum(sizes[k][q] for p, q in pairs if p != q) if mask is None else \
            sum(int(mask[rb[p]:rb[p + 1], cb[q]:cb[q + 1]].any(0).sum()) for p in range(P) for q in range(P) if p != q)
        report["layers"][name] = {"out_sizes": sizes[k + 1], "in_sizes": sizes[k], "blocks": [list(pq) for pq in pairs],
                                  "energy_kept": kept / max(float(E[k].sum()), 1e-300),
                                  "exchanged_inputs": int(traffic)}
        cuts.append(LayerCut(rows, cols, sizes[k + 1], sizes[k], pairs, mask))
    report["energy_kept"] = kept_total / max(report["energy_total"], 1e-300)
    return cuts, report


def kept_mask(cut: LayerCut, shape: torch.Size) -> torch.Tensor:
    """The 0/1 mask of kept weights (out × in channels) in the original order."""
    part = torch.zeros(shape[0], shape[1])
    rb, cb = _bounds(cut.out_sizes), _bounds(cut.in_sizes)
    for p, q in cut.pairs:
        part[rb[p]:rb[p + 1], cb[q]:cb[q + 1]] = 1
    if cut.mask is not None:
        part = part * cut.mask
    out = torch.zeros_like(part)
    out[torch.as_tensor(cut.rows)[:, None], torch.as_tensor(cut.cols)[None, :]] = part
    return out


# --------------------------------------------------------------------------- recovery


def cut_weights(layer: nn.Module, mask: torch.Tensor, moments=None, ridge: float = 1e-3):
    """(W, b) of the cut layer in the original order: W ⊙ mask, or each row group refit (compensate).

    Rows that keep the same input channels (a row part; one row in ``balanced``) are refit together from
    the layer's input moments, using only the coordinates of their kept channels.
    """
    W = layer.weight.detach().double().cpu()
    b = None if layer.bias is None else layer.bias.detach().double().cpu()
    kshape = W.shape[2:]
    full_mask = mask.double().reshape(mask.shape + (1,) * len(kshape)).expand_as(W)
    if moments is None:
        return (W * full_mask).to(layer.weight.dtype), None if b is None else b.to(layer.weight.dtype)
    Wm = torch.zeros_like(W)
    b_new = torch.zeros(W.shape[0], dtype=torch.float64)
    groups: dict[tuple, list[int]] = {}
    for r in range(mask.shape[0]):
        groups.setdefault(tuple(torch.nonzero(mask[r]).flatten().tolist()), []).append(r)
    flat = weight_matrix(layer).detach().double().cpu()
    for kept, rows in groups.items():
        comp = compensate(flat[rows], None if b is None else b[rows], moments, columns(layer, kept), ridge=ridge)
        r = torch.as_tensor(rows)
        Wm[r[:, None], torch.as_tensor(kept, dtype=torch.long)[None, :]] = comp.weight.reshape((len(rows), len(kept)) + kshape)
        b_new[r] = comp.bias
    return Wm.to(layer.weight.dtype), b_new.to(layer.weight.dtype)


# --------------------------------------------------------------------------- surgery


def _index_or_none(perm: np.ndarray) -> torch.Tensor | None:
    t = torch.as_tensor(perm, dtype=torch.long)
    return None if torch.equal(t, torch.arange(len(t))) else t


def _block_module(layer: nn.Module, cut: LayerCut, W: torch.Tensor, b: torch.Tensor | None, first: bool, last: bool):
    rows, cols = torch.as_tensor(cut.rows), torch.as_tensor(cut.cols)
    Wp = W[rows][:, cols]
    bp = None if b is None else b[rows]
    in_index = _index_or_none(cut.cols) if first else None
    out_index = _index_or_none(np.argsort(cut.rows)) if last else None
    rb, cb = _bounds(cut.out_sizes), _bounds(cut.in_sizes)
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Conv2d):
        P = len(cut.in_sizes)
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation, groups=P, bias=bp is not None,
                         padding_mode=layer.padding_mode, **factory)
        with torch.no_grad():
            for p in range(P):
                conv.weight[rb[p]:rb[p + 1]] = Wp[rb[p]:rb[p + 1], cb[p]:cb[p + 1]]
            if bp is not None:
                conv.bias.copy_(bp)
        return GroupedConv2d(conv, in_index=in_index, out_index=out_index)
    module = BlockLinear(cut.in_sizes, cut.out_sizes, cut.pairs, bias=bp is not None, masked=cut.mask is not None,
                         in_index=in_index, out_index=out_index, **factory)
    with torch.no_grad():
        for i, (p, q) in enumerate(cut.pairs):
            blk = module.blocks[i]
            blk.weight.copy_(Wp[rb[p]:rb[p + 1], cb[q]:cb[q + 1]])
            if cut.mask is not None:
                getattr(module, f"mask{i}").copy_(cut.mask[rb[p]:rb[p + 1], cb[q]:cb[q + 1]])
            if blk.bias is not None:
                blk.bias.copy_(bp[rb[p]:rb[p + 1]])
    return module


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _permute_norm(norm: nn.Module, perm: np.ndarray) -> None:
    idx = torch.as_tensor(perm, dtype=torch.long)
    with torch.no_grad():
        for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
            if t is not None:
                t.copy_(t[idx.to(t.device)])


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def partition(model: nn.Module, config: PartitionConfig, data=None, *, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Return a partitioned copy of ``model`` (the argument is left untouched); the record is in
    ``chanprune_history[-1]``. ``data``: calibration images for ``recover`` and the verification."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"partition() needs a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(config, PartitionConfig):
        raise ConfigError(f"partition() takes a PartitionConfig, not {type(config).__name__}.")
    t0 = time.perf_counter()
    batches = as_batches(data, config.calibration, config.batch_size, config.seed)
    if example_inputs is None and batches and not hasattr(data, "example_inputs"):
        example_inputs = batches[0][0][:1]
    example = trace_inputs(data, example_inputs)
    if config.recover in ("compensate", "compensate+bn") and not batches:
        raise ConfigError("recover='compensate' refits each block from calibration statistics; pass data=a DataBundle "
                          "or (images, labels).")
    original = copy.deepcopy(model).eval()
    run = find_run(original, config.layers, example)
    cuts, report = plan_cuts(run, config)
    moments = None
    if config.recover in ("compensate", "compensate+bn"):
        moments = consumer_moments(original, run.names, batches)
    reference = copy.deepcopy(original)  # the original with the cut (and the refit) in place, original order
    pruned = copy.deepcopy(original)
    modules = dict(pruned.named_modules())
    for k, (name, layer, cut) in enumerate(zip(run.names, run.layers, cuts)):
        mask = kept_mask(cut, layer.weight.shape)
        W, b = cut_weights(layer, mask, None if moments is None else moments[name], config.ridge)
        ref = reference.get_submodule(name)
        with torch.no_grad():
            ref.weight.copy_(W)
            if b is not None:
                if ref.bias is None:
                    ref.bias = nn.Parameter(torch.zeros_like(b))
                ref.bias.copy_(b)
        _set(pruned, name, _block_module(layer, cut, W, b, first=k == 0, last=k == len(cuts) - 1))
        if k < len(cuts) - 1:
            for m in run.between[k]:
                if isinstance(modules[m], _PER_NEURON):
                    _permute_norm(modules[m], cut.rows)
    probe = batches[0][0][:16] if batches else example
    max_rel = None
    if config.verify:
        with torch.no_grad():
            max_rel = _relative_error(pruned.eval()(probe), reference.eval()(probe))
        if not max_rel <= 1e-4:
            raise VerificationError(
                f"the partitioned model differs from the original with the cut weights zeroed (relative error "
                f"{max_rel:.2e}); layers {', '.join(map(repr, run.names))} are probably not a plain chain in forward() "
                "(a functional operation between them that does not act per neuron); name another run.")
    if config.recover in ("bn", "compensate+bn"):
        from ..engine import recalibrate_bn

        if config.recover_batches is None:  # the calibration images, as every method's recover='bn'
            if not batches:
                raise ConfigError(f"recover={config.recover!r} re-estimates BatchNorm on the calibration images; "
                                  "pass data=a DataBundle or (images, labels).")
            recalibrate_bn(pruned, batches, num_batches=len(batches))
        else:
            recalibrate_bn(pruned, data, num_batches=config.recover_batches, batch_size=config.batch_size)
    pruned.eval()
    macs0, params0 = count_macs_params(original, example)
    macs1, params1 = count_macs_params(pruned, example)
    nonzeros = sum(m.nonzeros() for m in pruned.modules() if isinstance(m, BlockLinear) and m.masked)
    masked_dense = sum(m.blocks[i].weight.numel() for m in pruned.modules() if isinstance(m, BlockLinear) and m.masked
                       for i in range(len(m.blocks)))
    record = {
        "method": config.method,
        "config": config.to_dict(),
        "run": run.names,
        "partition": report,
        "macs": {"before": macs0, "after": macs1, "ratio": macs1 / macs0},
        "params": {"before": params0, "after": params1 - masked_dense + nonzeros,
                   "ratio": (params1 - masked_dense + nonzeros) / params0},
        "verified": bool(config.verify),
        "verify_max_rel_error": max_rel,
        "seconds": {"total": time.perf_counter() - t0},
    }
    history = list(getattr(model, "chanprune_history", []))
    history.append(record)
    pruned.chanprune_history = history
    if hasattr(model, "chanprune_spec"):
        pruned.chanprune_spec = copy.deepcopy(model.chanprune_spec)
    return pruned


@register_method(PartitionConfig)
def _handler(model, config, data=None, example_inputs=None):
    return partition(model, config, data, example_inputs=example_inputs)
