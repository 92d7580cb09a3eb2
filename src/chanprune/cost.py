"""MACs and parameters of a model for any per-group channel counts, without pruning it.

Torch-Pruning's counter gives each layer's MACs and parameters once; removing channels scales a layer's
cost by (outputs kept / outputs) · (inputs kept / inputs) — only the output factor for depthwise convs
and normalisation layers. A group's removal shrinks both its producers (outputs) and its consumers
(inputs): a channel removed from a layer is also removed from every layer reading it. This makes the MAC-target search cheap (no surgery per probe); the
final model is always re-counted with Torch-Pruning's counter.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode

from .device import to_device
from .graph import PruningGraph
from .modes import eval_mode, preserve_mode


def _channels(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.out_channels, module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return module.num_features, module.num_features
    return None


def _output_only(module: nn.Module) -> bool:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == module.in_channels == module.out_channels


COST_NAMES = {"macs": "MACs", "params": "params"}  # how a target's kind is written in messages


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """``(MACs per sample, parameter count)`` of ``model`` as it is, by Torch-Pruning's counter.

    It counts multiply-accumulates, not FLOPs, per sample (it averages over the batch); a conv's bias adds
    ``out_channels·H·W``. The model is not changed and every module's train/eval flag is as before; the
    input follows the model's device.
    """
    with preserve_mode(model):
        macs, params = tp.utils.count_ops_and_params(model, to_device(example_inputs, model))
    return int(round(float(macs))), int(params)


class CostModel:
    """cost(keep) → (MACs, params) for per-group kept-channel counts ``keep`` (list aligned with graph.groups)."""

    def __init__(self, graph: PruningGraph):
        self.graph = graph
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
            graph.model, graph.example_inputs, layer_wise=True
        )
        self.macs, self.params = int(macs), int(params)
        self.layers = []  # (macs, params, out, in, output_only, [(g, out_mult, in_mult)])
        touched: dict[nn.Module, list] = {}
        for g in graph.groups:
            for member in g.members:
                if _channels(member.module) is None:
                    continue
                mult = len(member.idxs) / g.channels
                entry = touched.setdefault(member.module, [])
                entry.append((g.index, mult if member.role == "out" else 0.0, mult if member.role == "in" else 0.0))
        self.links = touched  # module → [(group, share of its outputs, share of its inputs)]
        for module, links in touched.items():
            out_c, in_c = _channels(module)
            self.layers.append(
                (float(layer_macs.get(module) or 0), float(layer_params.get(module) or 0), out_c, in_c, _output_only(module), links)
            )
        # Activations and pooling are counted too; their cost follows the channels of the layer feeding them.
        sources = self._sources()
        for module, macs_m in layer_macs.items():
            if module in touched or not macs_m or _channels(module) is not None or list(module.children()):
                continue
            source = self._upstream(module, touched, sources)
            if source is not None:
                out_c, _ = _channels(source)
                links = [(g, om, 0.0) for g, om, _ in touched[source] if om]
                self.layers.append((float(macs_m), float(layer_params.get(module) or 0), out_c, out_c, True, links))
        self._fixed_macs = self.macs - sum(layer[0] for layer in self.layers)
        self._fixed_params = self.params - sum(layer[1] for layer in self.layers)

    def _sources(self) -> dict[nn.Module, nn.Module]:
        """For every leaf module, the leaf module that wrote its input tensor (one hooked forward pass).

        Found by tensor identity rather than the traced graph, which omits activation modules. A tensor made
        by a functional op between modules (a residual ``+``, ``flatten``, ``cat``) is credited to the writer
        of the op's first input that has one, so a ReLU after a residual add follows the add's channels.
        """
        writer: dict[int, nn.Module] = {}
        source: dict[nn.Module, nn.Module] = {}
        alive: list[torch.Tensor] = []  # hold every output so no address is reused during the pass

        def hook(module, inputs, output):
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].data_ptr() in writer:
                source[module] = writer[inputs[0].data_ptr()]
            if isinstance(output, torch.Tensor):
                alive.append(output)
                writer[output.data_ptr()] = module

        class Propagate(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if isinstance(out, torch.Tensor) and out.data_ptr() not in writer:
                    flat = [a for a in args for a in (a if isinstance(a, (list, tuple)) else (a,))]
                    first = next((writer[a.data_ptr()] for a in flat
                                  if isinstance(a, torch.Tensor) and a.data_ptr() in writer), None)
                    if first is not None:
                        alive.append(out)
                        writer[out.data_ptr()] = first
                return out

        leaves = [m for m in self.graph.model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with eval_mode(self.graph.model), torch.no_grad(), Propagate():
                self.graph.model(self.graph.example_inputs)
        finally:
            for h in handles:
                h.remove()
        return source

    def _upstream(self, module: nn.Module, touched, sources) -> nn.Module | None:
        """The nearest module upstream of ``module`` whose channels we track."""
        for _ in range(16):
            module = sources.get(module)
            if module is None:
                return None
            if module in touched and any(om for _, om, _ in touched[module]):
                return module
        return None

    def __call__(self, keep: Sequence[int]) -> tuple[float, float]:
        removed = [g.channels - k for g, k in zip(self.graph.groups, keep)]
        macs, params = float(self._fixed_macs), float(self._fixed_params)
        for layer_macs, layer_params, out_c, in_c, output_only, links in self.layers:
            out_now = out_c - sum(om * removed[g] for g, om, _ in links)
            in_now = in_c - sum(im * removed[g] for g, _, im in links)
            scale = out_now / out_c if output_only else (out_now / out_c) * (in_now / in_c)
            macs += layer_macs * scale
            params += layer_params * scale
        return macs, params

    def kept(self, keep: Sequence[int], kind: str = "macs") -> float:
        """The fraction of the dense model's MACs (or params) that per-group widths ``keep`` cost."""
        macs, params = self(keep)
        return macs / self.macs if kind == "macs" else params / self.params
