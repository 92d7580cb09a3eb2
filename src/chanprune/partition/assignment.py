"""Which neuron goes to which part: ``contiguous`` or ``energy`` (methods.md §6, step 3).

A run of K consecutive layers has K + 1 neuron sets: the inputs of layer 1 (set 0), the K − 1 hidden
sets between layers, and the outputs of layer K (set K). An assignment gives every neuron of set k a
part in 0…P−1 with fixed part sizes. With E_k = W_k∘W_k summed over kernel positions (out × in), the
weight energy the block-diagonal cut keeps is

    J = Σ_k Σ_p Σ_{i ∈ R^k_p} Σ_{j ∈ R^{k−1}_p} E_k[i, j].

``contiguous`` takes parts in index order. ``energy`` maximises J by block coordinate ascent from the
contiguous assignment: with every other set fixed, neuron i of set k contributes
g[i, p] = Σ_{j∈R^{k−1}_p} E_k[i, j] + Σ_{m∈R^{k+1}_p} E_{k+1}[m, i] when placed in part p, independently of
the other neurons of its set, so the best assignment of set k with the sizes fixed is a linear
assignment problem (SciPy's ``linear_sum_assignment`` on g with each part repeated size_p times) —
exact, hence at least as good as any sequence of pairwise swaps. J never decreases, so ``energy``
keeps at least the energy of ``contiguous``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["part_sizes", "contiguous", "energy_assignment", "kept_energy", "energies"]


def part_sizes(n: int, parts: int, *, exact: bool, what: str) -> list[int]:
    """Sizes of ``parts`` parts of ``n`` neurons, as equal as possible (``exact``: must divide)."""
    if parts > n:
        raise ConfigError(f"P={parts} is larger than the {n} {what}; pick P <= {n} or leave that layer out.")
    if exact and n % parts:
        raise ConfigError(f"P={parts} does not divide the {n} {what} (a grouped convolution needs equal parts); "
                          f"pick a P that divides {n} or leave that layer out.")
    base, extra = divmod(n, parts)
    return [base + (1 if p < extra else 0) for p in range(parts)]


def contiguous(sizes: Sequence[int]) -> np.ndarray:
    """Part label of each neuron: the first sizes[0] neurons in part 0, and so on."""
    return np.repeat(np.arange(len(sizes)), sizes)


def energies(weights: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """E_k = Σ over kernel positions of W_k² (out × in), float64."""
    return [w.detach().double().reshape(w.shape[0], w.shape[1], -1).pow(2).sum(-1).cpu().numpy() for w in weights]


def _part_sums(E: np.ndarray, labels: np.ndarray, parts: int, axis: int) -> np.ndarray:
    """Σ of E over the neurons of each part along ``axis`` (1: columns → n_rows × P; 0: rows → n_cols × P)."""
    onehot = np.eye(parts)[labels]
    return E @ onehot if axis == 1 else E.T @ onehot


def kept_energy(E: Sequence[np.ndarray], labels: Sequence[np.ndarray], parts: int) -> float:
    """J: the energy on the diagonal blocks of every layer."""
    total = 0.0
    for k, Ek in enumerate(E):
        g = _part_sums(Ek, labels[k], parts, axis=1)  # rows of layer k+1 (set k+1) × parts of set k
        total += float(g[np.arange(g.shape[0]), labels[k + 1]].sum())
    return total


def _best_labels(gain: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    slots = contiguous(sizes)
    rows, cols = linear_sum_assignment(gain[:, slots], maximize=True)
    out = np.empty(gain.shape[0], dtype=np.int64)
    out[rows] = slots[cols]
    return out


def energy_assignment(E: Sequence[np.ndarray], sizes: Sequence[Sequence[int]], free: Sequence[bool],
                      sweeps: int = 10) -> list[np.ndarray]:
    """Labels of the K + 1 neuron sets maximising J; sets with ``free[k]`` False stay contiguous.

    ``E[k]`` is layer k+1's energy (set k+1 × set k), ``sizes[k]`` the part sizes of set k.
    """
    parts = len(sizes[0])
    labels = [contiguous(s) for s in sizes]
    best = kept_energy(E, labels, parts)
    for _ in range(sweeps):
        for k in range(len(labels)):
            if not free[k]:
                continue
            gain = np.zeros((len(labels[k]), parts))
            if k >= 1:  # set k are the rows of layer k
                gain += _part_sums(E[k - 1], labels[k - 1], parts, axis=1)
            if k < len(E):  # set k are the columns of layer k+1
                gain += _part_sums(E[k], labels[k + 1], parts, axis=0)
            labels[k] = _best_labels(gain, sizes[k])
        now = kept_energy(E, labels, parts)
        if now <= best * (1 + 1e-12):
            best = max(best, now)
            break
        best = now
    return labels
