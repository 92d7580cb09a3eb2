"""The single-process form of a partitioned layer (Shahhosseini et al., arXiv 1901.11391; methods.md §6).

A layer y = Wx + b whose inputs are split into parts C_1…C_P and outputs into R_1…R_P keeps a set of
blocks K ⊆ {(p, q)}; part p of the output is

    y_{R_p} = Σ_{q : (p, q) ∈ K} W[R_p, C_q] x_{C_q} + b_{R_p}.

Block-diagonal partitioning keeps K = {(p, p)}: part p reads its own inputs only, so P devices compute
the layer with no exchange. Neurons are held in *part order* (the concatenation C_1 ‖ … ‖ C_P); a
layer at the start of a partitioned run gathers its inputs into that order (``in_index``) and one at
the end scatters its outputs back (``out_index``), so the model around the run sees the original order.

* :class:`BlockLinear` — a Linear layer as P×P (possibly sparse) blocks, each an ``nn.Linear``; a block
  may carry a 0/1 mask (the ``balanced`` mode's per-device magnitude selection).
* :class:`GroupedConv2d` — a convolution partitioned block-diagonally is an ``nn.Conv2d`` with
  ``groups=P`` (equal parts), plus the same optional gathers.

Both import nothing from chanprune, so :mod:`chanprune.io` can record them.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["BlockLinear", "GroupedConv2d"]


def _index_buffer(module: nn.Module, name: str, index, size: int) -> None:
    """``index``: None/False (no gather), True (an identity permutation, to be loaded), or a permutation."""
    if index is True:
        index = range(size)
    if index is None or index is False:
        module.register_buffer(name, None)
        return
    t = torch.as_tensor(index, dtype=torch.long).flatten()
    if t.numel() != size or not torch.equal(t.sort().values, torch.arange(size)):
        raise ValueError(f"{name} must be a permutation of 0..{size - 1}")
    module.register_buffer(name, t.clone())


class BlockLinear(nn.Module):
    """A Linear layer kept as blocks W[R_p, C_q], (p, q) ∈ ``pairs``; the bias lives in the diagonal blocks.

    ``blocks[i]`` is an ``nn.Linear(in_sizes[q], out_sizes[p])`` for ``pairs[i] = (p, q)``; every row
    part has its diagonal block (it holds b_{R_p}). ``masked``: every block has a 0/1 buffer
    ``mask{i}`` multiplied into its weight (so fine-tuning keeps the removed weights at zero).
    """

    def __init__(self, in_sizes: Sequence[int], out_sizes: Sequence[int], pairs: Sequence[Sequence[int]],
                 bias: bool = True, masked: bool = False, in_index: bool | Sequence[int] | torch.Tensor | None = None,
                 out_index: bool | Sequence[int] | torch.Tensor | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.in_sizes = [int(s) for s in in_sizes]
        self.out_sizes = [int(s) for s in out_sizes]
        self.pairs = [(int(p), int(q)) for p, q in pairs]
        P = len(self.in_sizes)
        if P < 1 or len(self.out_sizes) != P or min(self.in_sizes + self.out_sizes) < 1:
            raise ValueError("in_sizes and out_sizes must list the same number P >= 1 of positive part sizes")
        if len(set(self.pairs)) != len(self.pairs) or any(not (0 <= p < P and 0 <= q < P) for p, q in self.pairs):
            raise ValueError(f"pairs must be distinct (p, q) with 0 <= p, q < {P}")
        if any((p, p) not in self.pairs for p in range(P)):
            raise ValueError("every row part needs its diagonal block (p, p)")
        self.in_features, self.out_features = sum(self.in_sizes), sum(self.out_sizes)
        self.masked = bool(masked)
        factory = {"device": device, "dtype": dtype}
        self.blocks = nn.ModuleList(
            nn.Linear(self.in_sizes[q], self.out_sizes[p], bias=bias and p == q, **factory) for p, q in self.pairs)
        if self.masked:
            for i, blk in enumerate(self.blocks):
                self.register_buffer(f"mask{i}", torch.ones_like(blk.weight, device=device))
        _index_buffer(self, "in_index", in_index, self.in_features)
        _index_buffer(self, "out_index", out_index, self.out_features)

    @property
    def parts(self) -> int:
        return len(self.in_sizes)

    def block_weight(self, i: int) -> torch.Tensor:
        w = self.blocks[i].weight
        return w * getattr(self, f"mask{i}") if self.masked else w

    def forward_parts(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The output parts [y_{R_1}, …] from the input parts [x_{C_1}, …] (in part order)."""
        ys: list[torch.Tensor | None] = [None] * self.parts
        for i, (p, q) in enumerate(self.pairs):
            blk = self.blocks[i]
            y = nn.functional.linear(xs[q], self.block_weight(i), blk.bias)
            ys[p] = y if ys[p] is None else ys[p] + y
        return ys  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = x.index_select(-1, self.in_index)
        y = torch.cat(self.forward_parts(x.split(self.in_sizes, -1)), -1)
        if self.out_index is not None:
            y = y.index_select(-1, self.out_index)
        return y

    def dense(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b) of the equivalent dense layer in the original neuron order (zeros outside the blocks)."""
        w0 = self.blocks[0].weight
        W = torch.zeros(self.out_features, self.in_features, dtype=w0.dtype, device=w0.device)
        r0 = [0] + list(torch.tensor(self.out_sizes).cumsum(0).tolist())
        c0 = [0] + list(torch.tensor(self.in_sizes).cumsum(0).tolist())
        has_bias = self.blocks[self.pairs.index((0, 0))].bias is not None
        b = torch.zeros(self.out_features, dtype=w0.dtype, device=w0.device) if has_bias else None
        for i, (p, q) in enumerate(self.pairs):
            W[r0[p]:r0[p + 1], c0[q]:c0[q + 1]] = self.block_weight(i).detach()
            if p == q and has_bias:
                b[r0[p]:r0[p + 1]] = self.blocks[i].bias.detach()
        rows = torch.arange(self.out_features) if self.out_index is None else self.out_index
        cols = torch.arange(self.in_features) if self.in_index is None else self.in_index
        # part-order row r holds original neuron rows_orig[r]; out_index maps original → part order
        rows_orig = torch.empty_like(rows)
        rows_orig[rows] = torch.arange(self.out_features)
        Wo = torch.zeros_like(W)
        Wo[rows_orig[:, None], cols[None, :]] = W
        bo = None
        if b is not None:
            bo = torch.zeros_like(b)
            bo[rows_orig] = b
        return Wo, bo

    def nonzeros(self) -> int:
        """Weights kept (masked-out entries not counted), biases excluded."""
        return int(sum(int((self.block_weight(i) != 0).sum()) if self.masked else self.blocks[i].weight.numel()
                       for i in range(len(self.blocks))))

    def extra_repr(self) -> str:
        return (f"in_sizes={self.in_sizes}, out_sizes={self.out_sizes}, blocks={len(self.pairs)}"
                f"{', masked' if self.masked else ''}")


class GroupedConv2d(nn.Module):
    """A convolution partitioned block-diagonally: ``conv`` has ``groups = P``; optional channel gathers."""

    def __init__(self, conv: nn.Conv2d, in_index: bool | Sequence[int] | torch.Tensor | None = None,
                 out_index: bool | Sequence[int] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.conv = conv
        _index_buffer(self, "in_index", in_index, conv.in_channels)
        _index_buffer(self, "out_index", out_index, conv.out_channels)

    @property
    def parts(self) -> int:
        return int(self.conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_index is not None:
            x = x.index_select(1, self.in_index)
        y = self.conv(x)
        if self.out_index is not None:
            y = y.index_select(1, self.out_index)
        return y
