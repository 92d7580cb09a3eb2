"""Decomposition of trained layers into low-rank pairs (docs/trp.md, "Decomposition").

Each chosen layer of rank r becomes a :class:`~chanprune.lowrank.modules.LowRank`:

* ``channel``: conv(C→r, kh×kw, the layer's stride/padding/dilation) then conv(r→N, 1×1, the bias);
  factors √Σ V_rᵀ and U_r √Σ.
* ``spatial``: conv(C→r, kh×1, vertical stride/padding/dilation) then conv(r→N, 1×kw, horizontal ones,
  the bias); each factor takes √σ.
* Linear layers (``linear``): Linear(in→r) then Linear(r→out, the bias).

A layer is left as it is where the factorised pair would not have fewer MACs than the layer at its
actual input size (channel: r(C·kh·kw + N) ≥ N·C·kh·kw per output position; spatial: r·C·kh·H_o·W_in +
r·N·kw·H_o·W_o ≥ N·C·kh·kw·H_o·W_o; linear: r(in + out) ≥ in·out). Ranks come from the energy rule (or
``value``, or explicit ``ranks``); with ``target_macs`` the energy threshold is chosen as the largest one
whose decomposed model keeps at most that fraction of the MACs (exact search over the thresholds where
any layer's rank changes, no probing).

This is also the "plain SVD" baseline: run it on a normally trained model (optionally followed by
:func:`chanprune.finetune`); run it after :func:`chanprune.lowrank.trp_train` for TRP.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..calibration import trace_inputs
from ..device import to_device
from ..errors import ConfigError, ModelError, PruneError
from ..modes import eval_mode
from .modules import LowRank
from .svd import _svd, check_rule, energy_kept, select_rank, singular_values, to_matrix

__all__ = ["DecomposeConfig", "LayerPlan", "select_layers", "plan_decomposition", "decompose_layer", "decompose",
           "layer_ranks", "layer_macs"]

CONV_SCHEMES = ("channel", "spatial")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class DecomposeConfig:
    """What to decompose and at which ranks. Invalid values raise :class:`ConfigError`.

    ``scheme``: ``channel`` or ``spatial`` for k×k convs (Linear layers always use the ``linear`` form).
    ``rule``/``threshold``: ``energy`` (keep ≥ threshold of Σσ²) or ``value`` (keep σ ≥ threshold).
    ``target_macs``: keep at most this fraction of the model's MACs by choosing the energy threshold
    (overrides ``threshold``; needs ``rule='energy'``). ``ranks``: explicit rank per layer name.
    ``layers``: explicit layer names; by default every conv with a kernel larger than 1×1 and
    ``groups=1`` except the first conv and strided convs, and every Linear except the classifier.
    """

    scheme: str = "channel"
    rule: str = "energy"
    threshold: float = 0.9
    target_macs: float | None = None
    ranks: dict[str, int] | None = None
    layers: tuple[str, ...] | None = None
    include_strided: bool = False
    include_first: bool = False
    include_linear: bool = True

    def __post_init__(self) -> None:
        if self.scheme not in CONV_SCHEMES:
            raise ConfigError(f"scheme must be 'channel' or 'spatial', not {self.scheme!r}.")
        check_rule(self.rule, self.threshold)
        if self.target_macs is not None:
            t = self.target_macs
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
                raise ConfigError(f"target_macs must lie in (0, 1], got {t!r}; e.g. target_macs=0.5 keeps half the MACs.")
            if self.rule != "energy":
                raise ConfigError("target_macs chooses an energy threshold, so it needs rule='energy'; drop target_macs "
                                  "or use the energy rule.")
        if self.ranks is not None:
            if not isinstance(self.ranks, Mapping) or not all(isinstance(k, str) and _is_int(v) and v >= 1
                                                               for k, v in self.ranks.items()):
                raise ConfigError("ranks must map layer names to positive integers, e.g. {'layer1.0.conv1': 4}.")
            self.ranks = dict(self.ranks)
        if self.layers is not None:
            if isinstance(self.layers, str) or not all(isinstance(n, str) for n in self.layers):
                raise ConfigError("layers must be a list of layer names, e.g. ['layer1.0.conv1'].")
            self.layers = tuple(self.layers)
        for name in ("include_strided", "include_first", "include_linear"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, not {getattr(self, name)!r}.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        return {"method": "decompose", **d}


# --------------------------------------------------------------------------------------- layer choice

def _inside_lowrank(model: nn.Module) -> set[str]:
    inside = set()
    for name, m in model.named_modules():
        if isinstance(m, LowRank):
            inside.update(f"{name}.{child}" if name else child for child, _ in m.named_modules() if child)
    return inside


def _classifier(model: nn.Module) -> str | None:
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def select_layers(model: nn.Module, scheme: str = "channel", layers: Iterable[str] | None = None, *,
                  include_strided: bool = False, include_first: bool = False,
                  include_linear: bool = True) -> list[tuple[str, nn.Module, str]]:
    """``[(name, module, scheme)]`` of the layers to factorise; Linear layers get scheme ``linear``."""
    inside = _inside_lowrank(model)
    named = dict(model.named_modules())
    if layers is not None:
        out = []
        for name in layers:
            m = named.get(name)
            if m is None:
                raise ConfigError(f"layer {name!r} is not a module of this model; use a name from model.named_modules().")
            if name in inside or isinstance(m, LowRank):
                raise ConfigError(f"layer {name!r} is already decomposed; pick layers that are plain convs or Linears.")
            if type(m) is nn.Conv2d and m.groups == 1:
                out.append((name, m, scheme))
            elif type(m) is nn.Linear:
                out.append((name, m, "linear"))
            else:
                raise ConfigError(f"layer {name!r} is a {type(m).__name__}; only Conv2d with groups=1 and Linear layers can "
                                  "be decomposed.")
        return out
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    classifier = _classifier(model)
    out = []
    for name, m in model.named_modules():
        if name in inside:
            continue
        if type(m) is nn.Conv2d:
            if m.groups != 1 or tuple(m.kernel_size) == (1, 1):
                continue
            if name == first_conv and not include_first:
                continue
            if tuple(m.stride) != (1, 1) and not include_strided:
                continue
            out.append((name, m, scheme))
        elif type(m) is nn.Linear and include_linear and name != classifier:
            out.append((name, m, "linear"))
    return out


# --------------------------------------------------------------------------------------- MACs

def _geometry(model: nn.Module, modules: dict[str, nn.Module], example_inputs: torch.Tensor) -> dict[str, tuple]:
    """name → (input shape, output shape) of one forward pass on ``example_inputs``."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, m in modules.items():
        def hook(_m, inputs, output, name=name):
            seen.setdefault(name, (tuple(inputs[0].shape), tuple(output.shape)))
        handles.append(m.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_inputs)
    except Exception as exc:
        raise ModelError(f"the model does not run on the example input of shape {tuple(example_inputs.shape)} "
                         f"({type(exc).__name__}); pass data= or example_inputs= that fit the model.") from None
    finally:
        for h in handles:
            h.remove()
    return seen


def layer_macs(module: nn.Module, scheme: str, rank: int | None, in_shape: tuple, out_shape: tuple) -> int:
    """MACs of one sample through ``module`` (rank None) or through its rank-``rank`` factorisation, without bias."""
    batch = in_shape[0] or 1
    if isinstance(module, nn.Linear):
        rows = (int(torch.Size(in_shape).numel()) // module.in_features) // batch
        if rank is None:
            return rows * module.in_features * module.out_features
        return rows * rank * (module.in_features + module.out_features)
    n, c, kh, kw = module.weight.shape  # c = in_channels / groups
    ho, wo = out_shape[2], out_shape[3]
    if rank is None:
        return n * c * kh * kw * ho * wo
    if scheme == "channel":
        return rank * c * kh * kw * ho * wo + n * rank * ho * wo
    w_in = in_shape[3]  # the kh×1 conv keeps the input width
    return rank * c * kh * ho * w_in + n * rank * kw * ho * wo


@dataclass
class LayerPlan:
    """The decision for one layer."""

    name: str
    scheme: str
    shape: list[int]
    full_rank: int
    rank: int
    energy: float           # fraction of Σσ² the rank keeps
    macs_before: int
    macs_after: int         # of the factorised pair at ``rank`` (= macs_before when skipped)
    decompose: bool
    reason: str = ""        # why it is skipped
    spectrum: list[float] = field(default_factory=list, repr=False)


def _plan_layer(name: str, m: nn.Module, scheme: str, geo: tuple, sigma: torch.Tensor, rank: int) -> LayerPlan:
    full = int(sigma.numel())
    before = layer_macs(m, scheme, None, *geo)
    after = layer_macs(m, scheme, rank, *geo) if rank >= 1 else before
    plan = LayerPlan(name, scheme, list(m.weight.shape), full, rank, energy_kept(sigma, rank), before, after, False,
                     spectrum=sigma.tolist())
    if rank < 1:
        plan.reason = "the weight is zero"
    elif after >= before:
        plan.reason = f"rank {rank} of {full} would not reduce MACs ({after:,} ≥ {before:,})"
    else:
        plan.decompose = True
    if not plan.decompose:
        plan.macs_after = before
    return plan


def _targets(model: nn.Module, config: DecomposeConfig) -> list[tuple[str, nn.Module, str]]:
    targets = select_layers(model, config.scheme, config.layers, include_strided=config.include_strided,
                            include_first=config.include_first, include_linear=config.include_linear)
    if config.ranks:
        names = {n for n, _, _ in targets}
        unknown = sorted(set(config.ranks) - names)
        if unknown:
            raise ConfigError(f"ranks names layer {unknown[0]!r}, which is not among the layers to decompose; "
                              "list it in layers= or fix the name.")
    return targets


def plan_decomposition(model: nn.Module, config: DecomposeConfig | None = None, *, data=None,
                       example_inputs: torch.Tensor | None = None) -> tuple[list[LayerPlan], dict]:
    """Per-layer ranks and MACs, without changing the model; ``(plans, info)``.

    ``info``: ``{"threshold": the energy threshold used, "macs_before": conv/linear MACs of the chosen layers,
    "macs_saved": predicted MAC saving}``.
    """
    config = config or DecomposeConfig()
    example = to_device(trace_inputs(data, example_inputs), model)
    targets = _targets(model, config)
    if not targets:
        return [], {"threshold": config.threshold, "macs_saved": 0}
    geometry = _geometry(model, {n: m for n, m, _ in targets}, example)
    spectra = {}
    for name, m, scheme in targets:
        if name not in geometry:
            raise ModelError(f"layer {name!r} is not used in the forward pass, so it has no MACs to save; "
                             "leave it out of layers=.")
        spectra[name] = singular_values(m.weight, scheme)
    threshold = config.threshold
    if config.target_macs is not None:
        threshold = _search_threshold(model, targets, geometry, spectra, config, example)

    def rank_of(name, sigma):
        if config.ranks and name in config.ranks:
            return min(config.ranks[name], int(sigma.numel()))
        return select_rank(sigma, config.rule, threshold)

    plans = [_plan_layer(n, m, s, geometry[n], spectra[n], rank_of(n, spectra[n])) for n, m, s in targets]
    return plans, {"threshold": threshold, "macs_saved": sum(p.macs_before - p.macs_after for p in plans)}


def _search_threshold(model, targets, geometry, spectra, config: DecomposeConfig, example) -> float:
    """Largest energy threshold whose decomposed model keeps ≤ target_macs of the MACs (predicted exactly)."""
    from ..measurement import count_macs_params

    total, _ = count_macs_params(model, example)
    budget = config.target_macs * total
    # thresholds where some layer's rank changes: the cumulative energies of every spectrum
    candidates = {1.0}
    for sigma in spectra.values():
        lam = sigma.square()
        if float(lam.sum()) > 0:
            candidates.update((torch.cumsum(lam, 0) / lam.sum()).clamp(max=1.0).tolist())
    fixed = {n: min(config.ranks[n], int(spectra[n].numel())) for n in (config.ranks or {})}

    def predicted(e: float) -> float:
        saved = 0
        for n, m, s in targets:
            r = fixed.get(n, select_rank(spectra[n], "energy", e))
            p = _plan_layer(n, m, s, geometry[n], spectra[n], r)
            saved += p.macs_before - p.macs_after
        return total - saved

    ordered = sorted(c for c in candidates if 0 < c <= 1)
    lo, hi = 0, len(ordered) - 1  # predicted() is non-decreasing in e: find the last e within budget
    if predicted(ordered[0]) > budget:
        raise PruneError(f"target_macs={config.target_macs:g} is out of reach: at rank 1 everywhere the decomposed model "
                         f"keeps {predicted(ordered[0]) / total:.1%} of the MACs; raise target_macs, add layers, or "
                         "combine with channel pruning.")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predicted(ordered[mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return float(ordered[lo])


# --------------------------------------------------------------------------------------- surgery

def decompose_layer(module: nn.Module, scheme: str, rank: int) -> LowRank:
    """The rank-``rank`` factorisation of one Conv2d (``channel``/``spatial``) or Linear (``linear``)."""
    if scheme == "linear":
        if type(module) is not nn.Linear:
            raise ConfigError(f"the 'linear' scheme decomposes Linear layers, not {type(module).__name__}.")
    elif scheme in CONV_SCHEMES:
        if type(module) is not nn.Conv2d or module.groups != 1:
            raise ConfigError(f"the {scheme!r} scheme decomposes Conv2d layers with groups=1, not this {type(module).__name__}.")
        # spatial: every padding mode commutes with the split into a vertical and a horizontal conv (tested)
    else:
        raise ConfigError(f"unknown low-rank scheme {scheme!r}; choose 'channel', 'spatial' or 'linear'.")
    weight = module.weight.detach()
    matrix = to_matrix(weight, scheme)
    full = min(matrix.shape)
    if not _is_int(rank) or not 1 <= rank <= full:
        raise ConfigError(f"rank must be an integer from 1 to {full} for this layer, got {rank!r}.")
    u, s, vh = _svd(matrix)
    root = s[:rank].sqrt()
    left = u[:, :rank] * root          # rows of 𝒯(W) × r
    right = root[:, None] * vh[:rank]  # r × columns of 𝒯(W)
    dtype, device = weight.dtype, weight.device
    bias = module.bias is not None
    kw = {"dtype": dtype, "device": device}
    if scheme == "linear":
        first = nn.Linear(module.in_features, rank, bias=False, **kw)
        second = nn.Linear(rank, module.out_features, bias=bias, **kw)
        w1, w2 = right, left
    elif scheme == "channel":
        n, c, kh, kwid = weight.shape
        first = nn.Conv2d(c, rank, (kh, kwid), stride=module.stride, padding=module.padding, dilation=module.dilation,
                          bias=False, padding_mode=module.padding_mode, **kw)
        second = nn.Conv2d(rank, n, 1, bias=bias, **kw)
        w1, w2 = right.reshape(rank, c, kh, kwid), left.reshape(n, rank, 1, 1)
    else:
        n, c, kh, kwid = weight.shape
        (sh, sw), (dh, dw) = module.stride, module.dilation
        if isinstance(module.padding, str):
            p1 = p2 = module.padding
        else:
            p1, p2 = (module.padding[0], 0), (0, module.padding[1])
        first = nn.Conv2d(c, rank, (kh, 1), stride=(sh, 1), padding=p1, dilation=(dh, 1), bias=False,
                          padding_mode=module.padding_mode, **kw)
        second = nn.Conv2d(rank, n, (1, kwid), stride=(1, sw), padding=p2, dilation=(1, dw), bias=bias,
                           padding_mode=module.padding_mode, **kw)
        # 𝒯(W) rows are (c, i), columns (n, j): U_r √Σ → kh×1 filters, √Σ V_rᵀ → 1×kw filters
        w1 = left.reshape(c, kh, rank).permute(2, 0, 1).unsqueeze(-1)
        w2 = right.reshape(rank, n, kwid).permute(1, 0, 2).unsqueeze(2)
    with torch.no_grad():
        first.weight.copy_(w1.to(dtype))
        second.weight.copy_(w2.to(dtype))
        if bias:
            second.bias.copy_(module.bias.detach())
    out = LowRank(scheme, first, second)
    out.train(module.training)
    return out


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def decompose(model: nn.Module, config: DecomposeConfig | None = None, *, data=None,
              example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Return a copy of ``model`` with the chosen layers factorised (the argument is left untouched).

    The record (per-layer ranks, energies, MACs, skipped layers and why) is appended to
    ``decomposed.chanprune_history``; the result saves and loads with :func:`chanprune.save`/`load`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"decompose() needs a torch.nn.Module, got {type(model).__name__}.")
    config = config or DecomposeConfig()
    if not isinstance(config, DecomposeConfig):
        raise ConfigError(f"config must be a DecomposeConfig, not {type(config).__name__}.")
    from ..measurement import count_macs_params

    t0 = time.perf_counter()
    example = to_device(trace_inputs(data, example_inputs), model)
    plans, info = plan_decomposition(model, config, example_inputs=example)
    out = copy.deepcopy(model)
    for p in plans:
        if p.decompose:
            _set(out, p.name, decompose_layer(out.get_submodule(p.name), p.scheme, p.rank))
    out.train(model.training)
    macs0, params0 = count_macs_params(model, example)
    macs1, params1 = count_macs_params(out, example)
    record = {
        "method": "decompose",
        "config": config.to_dict(),
        "threshold": info["threshold"],
        "layers": [{k: v for k, v in asdict(p).items() if k != "spectrum"} for p in plans],
        "decomposed": sum(p.decompose for p in plans),
        "skipped": sum(not p.decompose for p in plans),
        "macs": {"before": macs0, "after": macs1, "kept": macs1 / macs0 if macs0 else float("nan")},
        "params": {"before": params0, "after": params1, "kept": params1 / params0 if params0 else float("nan")},
        "seconds": time.perf_counter() - t0,
    }
    if config.target_macs is not None:
        record["target"] = ["macs", config.target_macs]
    out.chanprune_history = list(getattr(model, "chanprune_history", [])) + [record]
    return out


def layer_ranks(model: nn.Module, scheme: str = "channel", energy: float = 0.9, layers: Iterable[str] | None = None,
                **select) -> dict[str, int]:
    """Energy-rule rank of every layer :func:`select_layers` picks (a quick 'how low-rank is it' reading)."""
    return {name: select_rank(singular_values(m.weight, s), "energy", energy)
            for name, m, s in select_layers(model, scheme, layers, **select)}
