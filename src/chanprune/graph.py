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

Every fact about the model's structure that the methods need is answered here, so that nothing else
reads Torch-Pruning's internals: which groups are residual (:attr:`ChannelGroup.is_residual`), which
convs are depthwise (:func:`is_depthwise`), which channels of a layer a plan removes or keeps
(:meth:`PruningGraph.removed`, :meth:`PruningGraph.kept_channels`), a member's channels per root index
(:meth:`Member.per_root`), what follows a layer in the traced computation (:meth:`PruningGraph.successors`)
and where a per-channel constant added to a layer's output ends up (:meth:`PruningGraph.norm_sites`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops as tp_ops

from .device import to_device
from .errors import ModelError, PruneError
from .modes import eval_mode

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

    def per_root(self) -> dict[int, list[int]]:
        """Root index → the module's own channel indices that carry it (several after a flatten)."""
        out: dict[int, list[int]] = {}
        for i, r in zip(self.idxs, self.root_idxs):
            out.setdefault(int(r), []).append(int(i))
        return out


def is_depthwise(module: nn.Module) -> bool:
    """A conv with one filter per input channel (groups == in_channels > 1)."""
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups > 1 and module.groups == module.in_channels


@dataclass
class ChannelGroup:
    """Channels that must be removed together, as Torch-Pruning's DependencyGraph found them."""

    index: int
    name: str                      # root module name
    root: nn.Module
    channels: int                  # n_l: number of root indices
    members: list[Member] = field(default_factory=list)
    # Root indices that must go together (:func:`tied_classes`): None when every channel stands alone;
    # an empty list when the group cannot lose channels safely at all
    classes: list[list[int]] | None = None
    # what is wrong with Torch-Pruning's mapping of this group (it then keeps all its channels), else None
    garbled: str | None = None

    @property
    def step(self) -> int:
        """Kept counts must be multiples of this: the size of a tied class (the group's width if it cannot be pruned)."""
        if self.classes is None:
            return 1
        return len(self.classes[0]) if self.classes else self.channels

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

    @property
    def is_residual(self) -> bool:
        """A residual/tied group: more than one non-depthwise layer writes its channels (an add joins them).

        Depthwise convs only pass a channel on (MobileNet's expansion → depthwise pair is one channel), so
        they do not count.
        """
        return sum(1 for p in self.producers if not is_depthwise(p.module)) > 1

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


@dataclass(frozen=True, eq=False)
class Node:
    """One vertex of the traced computation: a layer of the model, or a functional operation between layers.

    ``kind`` is ``"layer"`` (``module`` is the model's module), ``"cat"`` (a concatenation), ``"add"`` (an
    elementwise addition, e.g. a residual join), ``"avgpool"`` (a functional average pool),
    ``"elementwise"`` (any other elementwise op, e.g. an activation) or ``"other"`` (reshapes, splits, ...).
    """

    kind: str
    module: nn.Module | None
    traced: object = field(repr=False)  # the tracer's own node, only for PruningGraph


def is_residual(group: ChannelGroup) -> bool:
    """:attr:`ChannelGroup.is_residual` as a function (for filters and sorts)."""
    return group.is_residual


def channel_axis(module: nn.Module) -> int:
    """The axis of a layer's input and output tensors that holds its channels.

    Linear and LayerNorm act on the trailing axis (a channels-last block, N·H·W·C, as in ConvNeXt; for
    the usual N·C input of a classifier it is axis 1 as well); convolutions and BatchNorm/GroupNorm
    read and write channels on axis 1.
    """
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def layer_channels(module: nn.Module, role: str) -> int | None:
    """How many output (``role="out"``) or input (``"in"``) channels a layer has; None for other module types."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return int(module.out_channels if role == "out" else module.in_channels)
    if isinstance(module, nn.Linear):
        return int(module.out_features if role == "out" else module.in_features)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return int(module.num_features)
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return int(module.normalized_shape[0])
    return None


def is_grouped_conv(module: nn.Module) -> bool:
    """A convolution with 1 < groups, other than a depthwise one (groups = in = out channels)."""
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            and module.groups > 1 and not (module.groups == module.in_channels == module.out_channels))


def tied_classes(group: ChannelGroup) -> list[list[int]] | None:
    """Classes of root indices a grouped convolution of ``group`` forces to be removed together.

    A conv with G groups (not depthwise) reads and writes its channels in G equal slices, and its weight
    keeps one slice's worth of input columns: Torch-Pruning slices them correctly only when the same
    positions go from every slice (and the slices stay equal). So the root indices at position p of every
    slice form a class; with several grouped members the classes are joined (union-find). Returns None
    when no member is a grouped conv, the classes (equal sizes, sorted) when they are consistent, and []
    when the group cannot lose channels safely: a member covers only part of a grouped conv's channels
    (a concatenation into it ties this group to another one), a grouped transposed conv (Torch-Pruning
    slices its weight on the wrong axis), or classes of unequal size.
    """
    parent = list(range(group.channels))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    found = False
    for member in group.members:
        module = member.module
        if not is_grouped_conv(module):
            continue
        found = True
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return []
        size = module.in_channels if member.role == "in" else module.out_channels
        if sorted(set(member.idxs)) != list(range(size)):
            return []
        width = size // module.groups
        first: dict[int, int] = {}
        for i, r in zip(member.idxs, member.root_idxs):
            p = i % width
            if p in first:
                a, b = find(first[p]), find(int(r))
                if a != b:
                    parent[b] = a
            else:
                first[p] = int(r)
    if not found:
        return None
    classes: dict[int, list[int]] = {}
    for r in range(group.channels):
        classes.setdefault(find(r), []).append(r)
    out = sorted(classes.values())
    return out if len({len(c) for c in out}) == 1 else []


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
        # traced where the model is: an example input left on the CPU must not fail a model on a GPU
        self.example_inputs = example_inputs = to_device(example_inputs, model)
        ignored = default_ignored(model) + _resolve_layers(model, ignored_layers)
        self.ignored = ignored
        try:
            with eval_mode(model), torch.enable_grad():
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        except Exception as exc:  # tracing failures come from deep inside torch/torch-pruning
            if "same device" in str(exc):
                places = sorted({str(t.device) for t in list(model.parameters()) + list(model.buffers())})
                raise ModelError(
                    f"the model's tensors are on more than one device ({', '.join(places)}), so it cannot run; "
                    "move the whole model to one device with model.to(device)."
                ) from None
            raise ModelError(
                f"Torch-Pruning could not trace this model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "check that forward() runs on the example input and uses standard nn.Module layers."
            ) from None
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
        group.classes = tied_classes(group)
        for member in group.members:  # a mapping onto channels a layer does not have (a wrong trace): keep it whole
            n = layer_channels(member.module, member.role)
            if n is not None and any(not 0 <= i < n for i in member.idxs):
                group.garbled = group.garbled or f"to channels of layer {member.name!r} that do not exist (it has {n})"
                pairs = [(i, r) for i, r in zip(member.idxs, member.root_idxs) if 0 <= i < n]
                member.idxs, member.root_idxs = [i for i, _ in pairs], [r for _, r in pairs]
        if group.garbled:
            group.classes = []
            group.members = [m for m in group.members if m.idxs]  # a member left with no channel of its own
        return group

    def __len__(self) -> int:
        return len(self.groups)

    # ------------------------------------------------------------------ structure facts

    def _node(self, traced) -> Node:
        module = traced.module
        if isinstance(module, tp_ops._ConcatOp):
            kind = "cat"
        elif isinstance(module, tp_ops._ElementWiseOp):
            op = str(traced.grad_fn)
            kind = "add" if "Add" in op else "avgpool" if "AvgPool" in op else "elementwise"
        elif module in self.names:
            kind = "layer"
        else:
            kind = "other"
        return Node(kind, module if kind == "layer" else None, traced)

    def node(self, module: nn.Module) -> Node | None:
        """The traced node of a layer (None for a layer the trace did not reach)."""
        traced = self.dg.module2node.get(module)
        return None if traced is None else self._node(traced)

    def successors(self, where: nn.Module | Node) -> list[Node]:
        """The nodes that read the output of a layer (or of a node), in the traced computation."""
        node = where if isinstance(where, Node) else self.node(where)
        return [] if node is None else [self._node(out) for out in node.traced.outputs]

    def removed(self, plan: Mapping[int, Sequence[int]], name: str, role: str = "out") -> set[int]:
        """The ``role`` ("out": output, "in": input) channels of layer ``name`` that ``plan`` removes."""
        out: set[int] = set()
        for gi, idxs in plan.items():
            rem = {int(i) for i in idxs}
            for m in self.groups[int(gi)].members:
                if m.name == name and m.role == role:
                    out |= {i for i, r in zip(m.idxs, m.root_idxs) if r in rem}
        return out

    def kept_channels(self, plan: Mapping[int, Sequence[int]], name: str, size: int, role: str = "out") -> list[int]:
        """The ``role`` channels (of ``size``) of layer ``name`` (a BN, conv or Linear) that survive ``plan``."""
        gone = self.removed(plan, name, role)
        return [c for c in range(size) if c not in gone]

    def _avg_pools_commute(self) -> bool:
        """Average pooling passes a per-channel constant through unchanged unless it pads with counted zeros."""
        for m in self.model.modules():
            if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and m.count_include_pad:
                pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
                if any(pad):
                    return False
        return True

    def norm_sites(self, module: nn.Module) -> list[tuple[str, dict[int, int]]] | None:
        """Where a per-row constant b′ added to ``module``'s output can go instead of a bias.

        Follows the traced graph from ``module`` through concatenations and average pools (which pass a
        per-channel constant through unchanged); if every path ends in a BatchNorm with running statistics,
        returns [(BN name, {module output row: BN channel})] — subtracting b′ from those running means gives
        the same eval-mode function. Else None. Indices are in the graph's (unpruned) numbering.
        """
        start = self.node(module)
        if start is None or not start.traced.outputs:
            return None
        pools_ok = self._avg_pools_commute()
        leaves: dict[int, nn.Module] = {}
        stack, seen = [start], set()
        while stack:
            for nxt in self.successors(stack.pop()):
                target = nxt.module
                if isinstance(target, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    if target.running_mean is None:
                        return None
                    leaves[id(target)] = target
                    continue
                if not (nxt.kind == "cat" or (nxt.kind == "avgpool" and pools_ok)):
                    return None
                if id(nxt.traced) not in seen:
                    seen.add(id(nxt.traced))
                    stack.append(nxt)
        # rows → root indices of the group this module produces, root → channel of each BatchNorm
        for group in self.groups:
            prod = next((m for m in group.producers if m.module is module), None)
            if prod is None:
                continue
            row_root = dict(zip(prod.idxs, prod.root_idxs))
            sites = []
            for bn in leaves.values():
                member = next((m for m in group.norms if m.module is bn), None)
                if member is None:
                    return None
                root_bn = dict(zip(member.root_idxs, member.idxs))
                sites.append((self.names[bn], {row: root_bn[r] for row, r in row_root.items() if r in root_bn}))
            return sites
        if len(leaves) == 1:  # an unpruned layer (not in any group) feeding one BN of the same width
            bn = next(iter(leaves.values()))
            if bn.num_features == module.weight.shape[0]:
                return [(self.names[bn], {i: i for i in range(bn.num_features)})]
        return None

    def __iter__(self):
        return iter(self.groups)

    def widths(self) -> list[int]:
        return [g.channels for g in self.groups]

    def producers_feeding_norm(self) -> list[tuple[nn.Module, str]]:
        """(module, name) of every group producer whose only successor in the traced graph is a norm layer."""
        out, seen = [], set()
        for group in self.groups:
            for member in group.producers:
                if id(member.module) in seen:
                    continue
                seen.add(id(member.module))
                successors = self.successors(member.module)
                if len(successors) == 1 and isinstance(successors[0].module, _NORM_TYPES):
                    out.append((member.module, member.name))
        return out

    def steps(self, round_to: int | str | None = None) -> list[int]:
        """Per group, the multiple its kept count must be: lcm(``round_to``, the tied-class size) (a non-integer
        ``round_to`` such as "auto" rounds elsewhere: the tied classes alone)."""
        base = round_to if isinstance(round_to, int) and round_to > 0 else 1
        return [math.lcm(base, g.step) for g in self.groups]

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
    if isinstance(round_to, int) and round_to > 1:  # "auto" is applied after the allocation (chanprune.rounding)
        keep = min(channels, ((keep + round_to - 1) // round_to) * round_to)
    return keep


def spare_layers(group: ChannelGroup, removed: Sequence[int]) -> list[int]:
    """``removed`` with every layer of ``group`` left at least one output channel: a group spanning several layers
    (concatenated branches) may otherwise empty a narrow branch. For each layer that would lose all its channels,
    its lowest root index stays and the highest root index still kept elsewhere goes instead, so the count is kept.
    Groups tied by a grouped conv are returned unchanged (their classes decide)."""
    out = sorted({int(i) for i in removed})
    if group.classes is not None:
        return out
    for member in group.members:
        n = layer_channels(member.module, "out") if member.role == "out" else None
        roots = sorted(set(member.root_idxs))
        gone = set(out)
        if n is None or n != len(set(member.idxs)) or not roots or not all(r in gone for r in roots):
            continue
        others = [r for r in range(group.channels) if r not in gone and r not in roots]
        if not others:
            continue  # the plan leaves nothing else to give up instead
        out = sorted((gone - {roots[0]}) | {others[-1]})
    return out


def lowest(scores: torch.Tensor, count: int, classes: Sequence[Sequence[int]] | None = None) -> list[int]:
    """Indices of the ``count`` lowest scores (ties broken by index, deterministic).

    With tied ``classes`` (:func:`tied_classes`, equal sizes) whole classes go, lowest summed score first:
    count/|class| of them (``count`` is a multiple of the class size where the allocation respected it).
    """
    if count <= 0:
        return []
    scores = scores.detach().double().cpu()
    if classes:
        size = len(classes[0])
        index = torch.as_tensor(classes, dtype=torch.long, device=scores.device)
        order = torch.argsort(scores[index].sum(1), stable=True)
        return sorted(int(r) for c in order[: count // size].tolist() for r in classes[c])
    order = torch.argsort(scores, stable=True)
    return sorted(order[:count].tolist())
