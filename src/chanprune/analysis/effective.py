"""Effective filters and maximum safe compression (Zhou et al., arXiv 2206.03596; docs/hierarchical.md).

Under the Gauss–Newton/Fisher view the loss Hessian of layer l is H_l ≈ (1/N)𝒢_lᵀ𝒢_l, so its rank is
the rank of the gradient matrix 𝒢_l and λ_i(H_l) = σ_i(𝒢_l)²/N. Identical units, dead units and
linearly dependent units make 𝒢_l rank-deficient. The number of effective filters is

    k_l = rule(σ(𝒢_l)),   σ(𝒢_l) = √eig(K_l),  K_l = 𝒢_lᵀ𝒢_l,

the maximum safe rate of layer l is ρ_l^max = 1 − k_l/n_l, and the network's maximum compression is
R_max = 1 − Cost(every group at k_l channels)/Cost(original), consumers' input slices included.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from .._atomic import write_bytes_atomic, write_text_atomic
from ..calibration import as_batches
from ..cost import CostModel
from ..errors import AnalysisError, ConfigError
from ..graph import PruningGraph, resolve_round_to
from .readings import READINGS, collect

RULES = ("energy", "rel", "abs", "exact")
_EPS = torch.finfo(torch.float64).eps


def spectrum(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvalues λ of K = 𝒢ᵀ𝒢 in descending order (σ_i = √λ_i), clamped at 0."""
    lam = torch.linalg.eigvalsh(gram.double())
    return lam.flip(0).clamp_min(0)


def effective_rank(lam: torch.Tensor, rule: str = "energy", threshold: float | None = None) -> int:
    """Numerical rank of 𝒢 from λ = σ² (descending).

    energy(η): min r with Σ_{i≤r} σ_i² ≥ η Σ σ_i²;  rel(τ): #{σ_i > τσ₁};  abs(τ): #{σ_i > τ};
    exact: #{λ_i > λ₁·n·ε} — applied in the squared domain, since a round-off eigenvalue ≈ ε·λ₁ would
    otherwise become σ ≈ √ε·σ₁ and count as rank.
    """
    lam = lam.double()
    n = lam.numel()
    if n == 0 or float(lam[0]) <= 0:
        return 0
    if rule == "energy":
        eta = 0.99 if threshold is None else threshold
        cum = torch.cumsum(lam, 0) / lam.sum()
        return int(min(n, int(torch.searchsorted(cum, torch.tensor(eta, dtype=cum.dtype, device=cum.device) - 1e-15)) + 1))
    sigma = lam.sqrt()
    if rule == "rel":
        tau = 1e-2 if threshold is None else threshold
        return int((sigma > tau * sigma[0]).sum())
    if rule == "abs":
        tau = 1e-6 if threshold is None else threshold
        return int((sigma > tau).sum())
    if rule == "exact":
        return int((lam > lam[0] * n * _EPS).sum())
    raise ConfigError(f"unknown rank rule {rule!r}; choose one of {', '.join(RULES)}.")


FEW_SAMPLES = 64  # below this many images the ranks are estimates from too few samples: warn


@dataclass
class AnalysisConfig:
    """Settings of the effective-filter analysis.

    ``reading``: which gradient matrix (docs/hierarchical.md); ``labels``: ``true`` (empirical Fisher) or
    ``sampled`` (true Fisher); ``rule``/``threshold``: the numerical-rank rule; ``calibration``: the number of
    calibration images N (at least the widest group's channel count for the ``gate`` reading).

    Default ``feature`` reading at η = 0.999: of the four readings, its estimated network maximum sat
    closest to the measured no-fine-tune knee on the shipped ResNet-20/56 and VGG-16 (bench/effective_filters.py,
    README "Which gradient reading predicts the knee?"). Hierarchical pruning has its own default (gate, η = 0.99),
    chosen by accuracy at equal MACs.
    """

    reading: str = "feature"
    labels: str = "true"
    rule: str = "energy"
    threshold: float | None = 0.999
    calibration: int = 512
    batch_size: int = 64
    seed: int = 0
    ignored_layers: tuple[str, ...] = ()

    def __post_init__(self):
        if self.reading not in READINGS:
            raise ConfigError(f"unknown reading {self.reading!r}; choose one of {', '.join(READINGS)}.")
        if self.labels not in ("true", "sampled"):
            raise ConfigError(f"labels must be 'true' or 'sampled', not {self.labels!r}.")
        if self.rule not in RULES:
            raise ConfigError(f"unknown rank rule {self.rule!r}; choose one of {', '.join(RULES)}.")
        if self.rule == "energy" and self.threshold is not None and not (0 < self.threshold <= 1):
            raise ConfigError(f"the energy threshold must lie in (0, 1], got {self.threshold}.")
        if self.rule in ("rel", "abs") and self.threshold is not None and self.threshold < 0:
            raise ConfigError(f"the {self.rule} threshold must be non-negative, got {self.threshold}.")
        if not isinstance(self.calibration, int) or self.calibration < 1:
            raise ConfigError(f"calibration must be a positive number of images, not {self.calibration!r}.")
        self.ignored_layers = tuple(self.ignored_layers)


@dataclass
class GroupAnalysis:
    index: int
    name: str
    channels: int
    effective: int
    max_rate: float
    eigenvalues: list[float] = field(repr=False)
    # False when the gradient matrix had fewer rows than the group has channels (gate reading, N < n_l): its rank
    # cannot show redundancy there, so the group is taken as fully effective (k_l = n_l, ρ_l^max = 0).
    resolved: bool = True


@dataclass
class AnalysisResult:
    """Per-group effective filters and the network's maximum compression under one rank rule."""

    config: AnalysisConfig
    groups: list[GroupAnalysis]
    samples: int
    max_compression_macs: float    # R_max in MACs: 1 − cost(k)/cost(n)
    max_compression_params: float
    seconds: float
    grams: dict = field(default_factory=dict, repr=False)   # group index → K (kept for selection)
    _cost: CostModel | None = field(default=None, repr=False)

    @property
    def effective(self) -> list[int]:
        return [g.effective for g in self.groups]

    def rerank(self, rule: str, threshold: float | None) -> "AnalysisResult":
        """The same spectra under another rank rule (no new pass over the data)."""
        cfg = AnalysisConfig(**{**asdict(self.config), "rule": rule, "threshold": threshold})
        groups = []
        for g in self.groups:
            k = _effective(torch.tensor(g.eigenvalues, dtype=torch.float64, device="cpu"), g.channels, rule, threshold, g.resolved,
                           self._cost.graph.groups[g.index].step)
            groups.append(GroupAnalysis(g.index, g.name, g.channels, k, 1 - k / g.channels, g.eigenvalues, g.resolved))
        macs, params = _network_rates(self._cost, [g.effective for g in groups])
        return AnalysisResult(cfg, groups, self.samples, macs, params, self.seconds, self.grams, self._cost)

    def curve(self, thresholds: Sequence[float], rule: str | None = None) -> list[dict]:
        """Network maximum compression as a function of the rank threshold (the 'maximum' depends on it)."""
        rule = rule or self.config.rule
        rows = []
        for t in thresholds:
            r = self.rerank(rule, t)
            rows.append({"rule": rule, "threshold": t, "max_compression_macs": r.max_compression_macs,
                         "max_compression_params": r.max_compression_params})
        return rows

    def to_dict(self, spectra: bool = True) -> dict:
        return {
            "config": asdict(self.config),
            "samples": self.samples,
            "max_compression_macs": self.max_compression_macs,
            "max_compression_params": self.max_compression_params,
            "seconds": self.seconds,
            "groups": [
                {k: v for k, v in asdict(g).items() if spectra or k != "eigenvalues"} for g in self.groups
            ],
        }

    def save_json(self, path) -> Path:
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))
        return path

    def table(self):
        """A rich Table: group, channels, effective filters, maximum rate."""
        from rich.table import Table

        t = Table(title=f"Effective filters ({self.config.reading} reading, {self.config.rule}"
                        f"{'' if self.config.threshold is None else f' {self.config.threshold:g}'}, N={self.samples})")
        for col in ("#", "group", "channels", "effective", "max rate"):
            t.add_column(col, justify="right" if col != "group" else "left")
        for g in self.groups:
            t.add_row(str(g.index), g.name, str(g.channels), str(g.effective) + ("" if g.resolved else " *"), f"{g.max_rate:.0%}")
        t.caption = (f"network max compression: {self.max_compression_macs:.1%} of MACs, "
                     f"{self.max_compression_params:.1%} of params removable")
        if not all(g.resolved for g in self.groups):
            t.caption += f"\n* more channels than the {self.samples} samples can resolve: taken as all effective"
        return t

    @property
    def matrix(self) -> str:
        """What the spectra are of, for labels: the feature reading uses activations, not gradients."""
        what = ("feature matrix (activations, no gradients)" if self.config.reading == "feature"
                else f"gradient matrix ({self.config.reading} reading)")
        return f"{what}, N={self.samples}"

    def plot(self, folder) -> list[Path]:
        """Two PNGs: normalised singular-value spectra per group, and max rate by depth (the report's figures)."""
        from ..report import plots

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        figures = {"spectra.png": plots.spectra([g.eigenvalues for g in self.groups], self.matrix),
                   "max_rates.png": plots.max_rates([g.name for g in self.groups], [g.max_rate for g in self.groups],
                                                    self.max_compression_macs)}
        paths = []
        for name, data in figures.items():
            write_bytes_atomic(folder / name, data)
            paths.append(folder / name)
        return paths

    def plot_curve(self, rows: list[dict], path) -> Path:
        """The network's maximum compression (MACs and params) against the rank threshold, from :meth:`curve`."""
        from ..report import plots

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        chosen = self.config.threshold if rows and self.config.rule == rows[0]["rule"] else None
        write_bytes_atomic(path, plots.rate_curve([r["threshold"] for r in rows], [r["max_compression_macs"] for r in rows],
                                                  [r["max_compression_params"] for r in rows], chosen))
        return path


def _effective(lam: torch.Tensor, channels: int, rule: str, threshold: float | None, resolved: bool, step: int = 1) -> int:
    """k_l: the numerical rank of 𝒢_l, or n_l for a group whose 𝒢_l has too few rows to show redundancy; rounded up
    to a multiple of ``step`` (a group tied by a grouped conv keeps whole classes, :attr:`ChannelGroup.step`)."""
    return channels if not resolved else resolve_round_to(max(1, effective_rank(lam, rule, threshold)), channels, step)


def _network_rates(cost: CostModel, keep: list[int]) -> tuple[float, float]:
    macs, params = cost(keep)
    return 1 - macs / cost.macs, 1 - params / cost.params


def analyze(model: nn.Module, data, config: AnalysisConfig | None = None, *, example_inputs: torch.Tensor | None = None,
            graph: PruningGraph | None = None) -> AnalysisResult:
    """Effective filters k_l, maximum rates ρ_l^max and the network's R_max (docs/hierarchical.md).

    The model must be in eval mode (running BatchNorm statistics keep per-sample rows independent).
    ``data``: a DataBundle (``calibration`` images from its training split) or (images, labels).
    """
    config = config or AnalysisConfig()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"analyze() needs a torch.nn.Module, got {type(model).__name__}.")
    if model.training:
        raise AnalysisError("the model is in train mode, so BatchNorm mixes samples and per-sample gradients are wrong; call model.eval() first.")
    t0 = time.perf_counter()
    batches = as_batches(data, config.calibration, config.batch_size, config.seed)
    if not batches:
        raise AnalysisError("no calibration images were given; pass data=a DataBundle or (images, labels) with at least one image.")
    if example_inputs is None:
        example_inputs = batches[0][0][:1]
    if graph is None:
        graph = PruningGraph(model, example_inputs, ignored_layers=config.ignored_layers)
    n_images = sum(len(x) for x, _ in batches)
    if n_images < FEW_SAMPLES:
        warnings.warn(
            f"the analysis sees only {n_images} image{'s' if n_images != 1 else ''}, too few for its ranks (and the "
            f"maximum compression from them) to mean much; pass calibration={max(FEW_SAMPLES, config.calibration)} "
            f"or more.", stacklevel=2)
    # The gate reading gives one row per sample, so rank(𝒢_l) ≤ N: a group wider than N would look redundant
    # by sampling alone. Such groups are kept whole (k_l = n_l) with a warning; if no group is narrow enough,
    # the analysis says nothing and is refused.
    too_wide = [g for g in graph.groups if config.reading == "gate" and n_images < g.channels]
    if too_wide:
        widest = max(g.channels for g in too_wide)
        if len(too_wide) == len(graph.groups):
            raise AnalysisError(
                f"{n_images} samples cannot reveal the rank of any group (the gate reading gives one row per sample and the "
                f"narrowest group has {min(g.channels for g in too_wide)} channels); use at least {widest} images (calibration={widest}).")
        names = ", ".join(f"{g.name} ({g.channels})" for g in too_wide[:3]) + (", …" if len(too_wide) > 3 else "")
        warnings.warn(
            f"groups wider than the {n_images} samples can resolve are taken as all effective and are not pruned by the "
            f"analysis: {names}; pass calibration={widest} or more to analyse them.",
            stacklevel=2)
    unresolved = {g.index for g in too_wide}
    stats = collect(model, graph, batches, config.reading, labels=config.labels, seed=config.seed)
    cost = CostModel(graph)
    groups = []
    grams = {}
    for g in graph.groups:
        lam = spectrum(stats[g.index].gram)
        resolved = g.index not in unresolved
        k = _effective(lam, g.channels, config.rule, config.threshold, resolved, g.step)
        groups.append(GroupAnalysis(g.index, g.name, g.channels, k, 1 - k / g.channels, lam.tolist(), resolved))
        grams[g.index] = stats[g.index].gram
    macs, params = _network_rates(cost, [g.effective for g in groups])
    return AnalysisResult(config, groups, n_images, macs, params, time.perf_counter() - t0, grams, cost)
