"""The report's figures (matplotlib, Agg), each returned as PNG bytes to be inlined into the page."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def widths(names: Sequence[str], before: Sequence[int], after: Sequence[int], unit: str) -> bytes:
    """Per-layer bars: what was kept (solid) and what was removed (hatched) of each layer's ``unit``."""
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * n + 2), 4.2))
    x = np.arange(n)
    kept = np.asarray(after, dtype=float)
    removed = np.asarray(before, dtype=float) - kept
    ax.bar(x, kept, color="tab:blue", label="kept")
    ax.bar(x, removed, bottom=kept, color="white", edgecolor="tab:red", hatch="///", label="removed")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel(unit)
    ax.set_title(f"Per layer: {unit} before (full bar) and after (blue)")
    ax.legend()
    return png(fig)


def spectra(eigenvalues: Sequence[Sequence[float]], matrix: str = "gradient matrix") -> bytes:
    """Normalised singular values σ_i/σ_1 of each group's ``matrix`` (the reading's), coloured by depth."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, lam in enumerate(eigenvalues):
        sigma = np.sqrt(np.clip(np.asarray(lam, dtype=float), 0, None))
        if sigma.size and sigma[0] > 0:
            ax.semilogy(np.arange(1, sigma.size + 1), np.clip(sigma / sigma[0], 1e-12, None),
                        color=cmap(i / max(1, len(eigenvalues) - 1)), lw=1)
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i / σ_1")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(f"Singular-value spectra of each group's {matrix} (colour = depth)", 80)), fontsize=9)
    return png(fig)


def max_rates(names: Sequence[str], rates: Sequence[float], network: float) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * len(names) + 2), 4.0))
    ax.bar(np.arange(len(names)), rates, color="tab:green")
    ax.axhline(network, color="k", ls="--", lw=1, label=f"network: {network:.1%} of the MACs removable")
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("max safe rate ρ_max = 1 − k/n")
    ax.set_title("Estimated maximum pruning rate per group")
    ax.legend()
    return png(fig)


def rate_curve(thresholds: Sequence[float], macs: Sequence[float], params: Sequence[float], chosen: float | None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    ax.plot(thresholds, macs, "o-", label="MACs removable")
    ax.plot(thresholds, params, "s--", label="params removable")
    if chosen is not None:
        ax.axvline(chosen, color="grey", lw=1, ls=":", label=f"threshold used ({chosen:g})")
    ax.set_xlabel("energy threshold η")
    ax.set_ylabel("network maximum compression")
    ax.set_ylim(0, 1)
    ax.set_title("Maximum compression vs the rank threshold")
    ax.legend()
    return png(fig)


def speedups(labels: Sequence[str], medians: Sequence[float], p10s: Sequence[float], mac_reduction: float) -> bytes:
    """Measured speed-ups (bars: from the medians, and from the p10s — the least disturbed rounds) against the MAC
    reduction (the dashed line a runtime that turned every removed MAC into time would reach)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.0))
    x = np.arange(len(labels))
    for offset, values, name, color in ((-0.2, medians, "median", "tab:blue"), (0.2, p10s, "p10", "tab:orange")):
        ax.bar(x + offset, values, width=0.4, color=color, label=f"speed-up ({name}s)")
        for i, v in enumerate(values):
            ax.text(i + offset, v, f"{v:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.axhline(mac_reduction, color="k", ls="--", lw=1, label=f"MAC reduction {mac_reduction:.2f}×")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("speed-up over the dense model")
    ax.set_title("Measured speed-up vs MAC reduction")
    ax.legend(fontsize=8)
    return png(fig)
