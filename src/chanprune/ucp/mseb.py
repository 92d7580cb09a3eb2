"""Modified squeeze-and-excitation blocks (MSEB) of UCP (Chang et al., arXiv 2010.01251), and their scores.

An MSEB sits between a convolution and its BatchNorm (conv → MSEB → BN, not after the block as in SENet):

    MSEB(x) = x ⊙ s(x),   s(x) = sigmoid(W₂ · ReLU(W₁ · GAP(x)))

with W₁ ∈ ℝ^{⌊c/16⌋×c}, W₂ ∈ ℝ^{c×⌊c/16⌋} and no biases; a layer of at most 16 channels gets a hidden width
of 1 with biases. The channel importance is the mean excitation over the data, I_j = (1/N) Σ_i s_j(x_i).

The insertion finds every prunable convolution whose only successor is a BatchNorm through the pruning
graph (never by module names), so it works on any model chanprune can trace. ``neutral=True`` inserts the
blocks without changing the function: W₂ = 0 gives s ≡ ½, and the convolution's weights are doubled to
cancel it, so a trained checkpoint keeps its accuracy when its MSEB training starts.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..errors import ModelError

__all__ = ["MSEB", "ConvMSEB", "insert_mseb", "strip_mseb", "mseb_scores", "mseb_modules", "SCORES_ATTR"]

# Where strip_mseb leaves the scores on the plain model: {conv name: I (channels,)}, read by criterion 'mseb'.
SCORES_ATTR = "chanprune_mseb_scores"


class MSEB(nn.Module):
    """x ⊙ sigmoid(W₂ ReLU(W₁ GAP(x))) over the channel axis (axis 1)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ModelError(f"an MSEB needs channels >= 1 and reduction >= 1, got {channels} and {reduction}.")
        small = channels <= reduction
        hidden = 1 if small else channels // reduction
        self.squeeze = nn.Linear(channels, hidden, bias=small)
        self.excite = nn.Linear(hidden, channels, bias=small)
        self._sum: torch.Tensor | None = None  # Σ_i s(x_i) while recording
        self._count = 0

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """s(x): one weight in (0, 1) per sample and channel."""
        return torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=tuple(range(2, x.dim())))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.excitation(x)
        if self._sum is not None:
            self._sum += s.detach().sum(0).double()
            self._count += s.shape[0]
        return x * s.view(*s.shape, *([1] * (x.dim() - 2)))

    def make_neutral(self) -> None:
        """W₂ = 0 (and its bias, if any): s ≡ ½ whatever the input."""
        with torch.no_grad():
            self.excite.weight.zero_()
            if self.excite.bias is not None:
                self.excite.bias.zero_()


class ConvMSEB(nn.Module):
    """A convolution followed by its MSEB; ``conv`` keeps the original module (and its parameter names below it)."""

    def __init__(self, conv: nn.Module, mseb: MSEB) -> None:
        super().__init__()
        self.conv = conv
        self.mseb = mseb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mseb(self.conv(x))


def mseb_modules(model: nn.Module) -> Iterator[tuple[str, ConvMSEB]]:
    """(name of the wrapped conv as it was before insertion, wrapper) for every MSEB of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, ConvMSEB):
            yield name, module


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def insert_mseb(model: nn.Module, example_inputs: torch.Tensor, *, reduction: int = 16, neutral: bool = True,
                ignored_layers: Iterable[str] = ()) -> list[str]:
    """Wrap every prunable conv that feeds a BatchNorm as conv → MSEB (in place); returns the wrapped names.

    Convolutions are found through the pruning graph: the producers of every prunable channel group whose
    single successor is a BatchNorm. ``neutral`` keeps the function unchanged (see the module docstring).
    """
    from ..graph import PruningGraph

    if any(True for _ in mseb_modules(model)):
        raise ModelError("this model already carries MSEBs; call strip_mseb(model) before inserting them again.")
    graph = PruningGraph(model, example_inputs, ignored_layers=tuple(ignored_layers))
    targets = []
    for conv, name in graph.producers_feeding_norm():
        if isinstance(conv, nn.Conv2d) and conv.groups == 1:
            targets.append((name, conv))
    if not targets:
        raise ModelError("no convolution followed by a BatchNorm was found; UCP's MSEBs sit between the two.")
    param = next(model.parameters())
    for name, conv in targets:
        mseb = MSEB(conv.out_channels, reduction).to(device=param.device, dtype=param.dtype)
        if neutral:
            mseb.make_neutral()
            with torch.no_grad():
                conv.weight.mul_(2.0)
                if conv.bias is not None:
                    conv.bias.mul_(2.0)
        _set_module(model, name, ConvMSEB(conv, mseb))
    return [name for name, _ in targets]


@torch.no_grad()
def mseb_scores(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """I_j = (1/N) Σ_i s_j(x_i) for every MSEB, keyed by the name of the conv it follows (float64, on the model's device)."""
    from ..engine.evaluate import preserve_mode

    blocks = dict(mseb_modules(model))
    if not blocks:
        raise ModelError("this model carries no MSEB; insert them with insert_mseb(model, example_inputs) and train first.")
    device = next(model.parameters()).device
    for block in blocks.values():
        block.mseb._sum = torch.zeros(block.mseb.excite.out_features, dtype=torch.float64, device=device)
        block.mseb._count = 0
    try:
        with preserve_mode(model):
            model.eval()
            for x, _ in distributed.shard(batches)[1]:  # under torchrun: this rank's block, sums all-reduced
                model(x.to(device))
        counts = torch.tensor([block.mseb._count for block in blocks.values()], dtype=torch.float64, device="cpu")
        distributed.all_reduce_([block.mseb._sum for block in blocks.values()] + [counts])
        return {name: block.mseb._sum / max(int(n), 1) for (name, block), n in zip(blocks.items(), counts.tolist())}
    finally:
        for block in blocks.values():
            block.mseb._sum, block.mseb._count = None, 0


@torch.no_grad()
def strip_mseb(model: nn.Module, scores: dict[str, torch.Tensor] | None = None, *, fold: bool = True) -> nn.Module:
    """Put every wrapped conv back in place of its ConvMSEB (in place) and return the model.

    With ``scores`` (from :func:`mseb_scores`) and ``fold=True``, each filter j is scaled by I_j, the mean
    excitation, so the plain network approximates the one that was trained with MSEBs (exactly where the
    excitation does not depend on the input, as in the neutral state). The scores are kept on the model as
    ``model.chanprune_mseb_scores`` for the ``mseb`` criterion.
    """
    for name, block in list(mseb_modules(model)):
        conv = block.conv
        if fold and scores is not None and name in scores:
            scale = scores[name].to(conv.weight.dtype)
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
            if conv.bias is not None:
                conv.bias.mul_(scale)
        _set_module(model, name, conv)
    if scores is not None:
        setattr(model, SCORES_ATTR, {k: v.detach().cpu() for k, v in scores.items()})
    return model
