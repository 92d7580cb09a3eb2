"""Channel groups and physical channel removal: a thin layer over Torch-Pruning's DependencyGraph.

Torch-Pruning traces the model and ties together every module whose channels must be removed together
(a conv's outputs, its BatchNorm, the consumers' input slices, residual adds, concatenations, depthwise
convs). chanprune never traces dependencies itself; it only reads Torch-Pruning's groups into
:class:`ChannelGroup` records (members, consumers, channel count) and asks Torch-Pruning to remove the
chosen indices.

A group's channels are indexed by its *root* module's output channels ("root indices"). Every member
slice maps to root indices through Torch-Pruning's ``root_idxs`` (a flatten before a Linear maps one
channel to H·W input features), so per-member statistics are reduced onto root indices with
:meth:`ChannelGroup.reduce`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from .errors import ModelError, PruneError

PRUNABLE_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


@dataclass
class Member:
    """One module slice inside a group: ``idxs`` are the module's own channel indices, ``root_idxs`` the group's."""

    name: str
    module: nn.Module
    idxs: list[int]
    root_idxs: list[int]
    role: str  # "out" (the module's output channels) or "in" (a consumer's input channels)


@dataclass
class ChannelGroup:
    """Channels that must be removed together, as Torch-Pruning's DependencyGraph found them."""

    index: int
    name: str                      # root module name
    root: nn.Module
    channels: int                  # n_l: number of root indices
    members: list[Member] = field(default_factory=list)

    @property
    def producers(self) -> list[Member]:
        """Convs/Linears whose *output* channels are in this group (their weight rows are the filters)."""
        return [m for m in self.members if m.role == "out" and isinstance(m.module, PRUNABLE_TYPES)]

    @property
    def norms(self) -> list[Member]:
        return [m for m in self.members if m.role == "out" and isinstance(m.module, _NORM_TYPES)]

    @property
    def consumers(self) -> list[Member]:
        """Convs/Linears whose *input* channels are in this group."""
        return [m for m in self.members if m.role == "in" and isinstance(m.module, PRUNABLE_TYPES)]

    def reduce(self, member: Member, values: torch.Tensor, how: str = "sum") -> torch.Tensor:
        """Reduce a per-member-index vector (len(member.idxs)) onto root indices (len == channels)."""
        root = torch.as_tensor(member.root_idxs, dtype=torch.long, device=values.device)
        out = torch.zeros(self.channels, dtype=values.dtype, device=values.device)
        out.index_add_(0, root, values)
        if how == "mean":
            counts = torch.zeros(self.channels, dtype=values.dtype, device=values.device)
            counts.index_add_(0, root, torch.ones_like(values))
            out = out / counts.clamp_min(1)
        return out

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"ChannelGroup({self.index}, {self.name!r}, channels={self.channels}, members={len(self.members)})"


def default_ignored(model: nn.Module) -> list[nn.Module]:
    """The classifier (the last Linear, else the last conv): its outputs are the classes and stay."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        for m in model.modules():
            if isinstance(m, PRUNABLE_TYPES):
                last = m
    return [last] if last is not None else []


def _resolve_layers(model: nn.Module, layers: Iterable[str | nn.Module] | None) -> list[nn.Module]:
    if layers is None:
        return []
    names = dict(model.named_modules())
    out = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            out.append(layer)
        elif layer in names:
            out.append(names[layer])
        else:
            raise ModelError(
                f"ignored layer {layer!r} is not a module of this model; use a name from model.named_modules()."
            )
    return out


class PruningGraph:
    """The prunable channel groups of a model, and removal of chosen channels through Torch-Pruning.

    ``ignored_layers`` (names or modules) keep their output channels; the classifier is always kept.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        ignored_layers: Iterable[str | nn.Module] | None = None,
    ):
        self.model = model
        self.example_inputs = example_inputs
        ignored = default_ignored(model) + _resolve_layers(model, ignored_layers)
        self.ignored = ignored
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        except Exception as exc:  # tracing failures come from deep inside torch/torch-pruning
            raise ModelError(
                f"Torch-Pruning could not trace this model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "check that forward() runs on the example input and uses standard nn.Module layers."
            ) from None
        finally:
            model.train(was_training)
        self.names = {m: n for n, m in model.named_modules()}
        self.groups: list[ChannelGroup] = []
        for tp_group in self.dg.get_all_groups(ignored_layers=list(ignored), root_module_types=PRUNABLE_TYPES):
            self.groups.append(self._wrap(len(self.groups), tp_group))
        if not self.groups:
            raise ModelError("this model has no prunable channel groups (no conv or linear layer besides the classifier).")

    def _wrap(self, index: int, tp_group) -> ChannelGroup:
        root_item = tp_group.items[0]
        root = root_item.dep.target.module
        channels = len(set(root_item.root_idxs))
        group = ChannelGroup(index=index, name=self.names.get(root, "?"), root=root, channels=channels)
        seen = set()
        for item in tp_group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in self.names:
                continue  # functional nodes (add, cat, flatten, ...)
            role = "out" if self.dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
            key = (id(module), role)
            if key in seen:
                continue
            seen.add(key)
            group.members.append(
                Member(self.names[module], module, list(item.idxs), list(item.root_idxs), role)
            )
        return group

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    def widths(self) -> list[int]:
        return [g.channels for g in self.groups]

    def remove(self, plan: Mapping[int, Sequence[int]]) -> None:
        """Physically remove root indices ``plan[g]`` from each group ``g`` (in place, via Torch-Pruning).

        Each group's Torch-Pruning group is rebuilt just before its removal, so index offsets of
        concatenations reflect the removals already done.
        """
        for gi, idxs in plan.items():
            group = self.groups[gi]
            idxs = sorted({int(i) for i in idxs})
            if not idxs:
                continue
            if idxs[0] < 0 or idxs[-1] >= group.channels:
                raise PruneError(f"group {group.name!r} has {group.channels} channels; index {idxs[-1]} is out of range.")
            if len(idxs) >= group.channels:
                raise PruneError(
                    f"removing all {group.channels} channels of group {group.name!r} would disconnect the network; keep at least one."
                )
            pruner = self.dg.get_pruner_of_module(group.root)
            tp_group = self.dg.get_pruning_group(group.root, pruner.prune_out_channels, idxs)
            if not self.dg.check_pruning_group(tp_group):
                raise PruneError(f"Torch-Pruning refused to prune group {group.name!r}: it would leave a layer with no channels.")
            tp_group.prune(record_history=False)


def resolve_round_to(keep: int, channels: int, round_to: int | None) -> int:
    """Round a kept-channel count up to a multiple of ``round_to`` (never above ``channels``, never below 1)."""
    keep = max(1, min(channels, int(keep)))
    if round_to and round_to > 1:
        keep = min(channels, ((keep + round_to - 1) // round_to) * round_to)
    return keep


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` lowest scores (ties broken by index, deterministic)."""
    if count <= 0:
        return []
    order = torch.argsort(scores.detach().double().cpu(), stable=True)
    return sorted(order[:count].tolist())
