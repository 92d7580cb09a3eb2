"""What one rank holds and what it all-reduces, for a ResNet-50 at ImageNet resolution (docs/distributed.md).

    python -m bench.resnet50_memory

Builds the standard ResNet-50 (bottleneck blocks 3-4-6-3, 1000 classes, 224×224 input; torchvision's layout,
written out here because torchvision is not a dependency), traces its channel groups with chanprune's
PruningGraph and writes bench/results/resnet50_memory.json with
  * params and their bytes (float32), the DDP gradient all-reduce per step;
  * activation bytes per image: the sum of every leaf module's float32 output in one forward pass — what a
    training step or a gradient-reading analysis keeps for the backward pass, to within the few tensors
    autograd frees early or saves twice;
  * per channel group l (n_l channels): the analysis statistics K_l = G_lᵀG_l and Σ_i G_l[i] in float64,
    (n_l² + n_l)·8 bytes — each rank holds them and all-reduces them once per analysis;
  * per dense consumer (D = c·k² im2col inputs): CaP's float64 moments (D² + D)·8 bytes, and CP's sampled rows
    per image (points·D·8 bytes) that are gathered;
  * the totals, and the memory per rank for an analysis batch and a training batch of a given size.
Nothing is trained; one forward pass at batch 1 on the CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "resnet50_memory.json"
MiB = 2 ** 20


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers, inplanes = [], 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def main(analysis_batch: int = 64, train_batch: int = 32, cp_points: int = 10) -> dict:
    from chanprune.graph import PruningGraph
    from chanprune.recovery.stats import block_size, supported

    torch.set_num_threads(1)
    model = ResNet50().eval()
    x = torch.zeros(1, 3, 224, 224)
    params = sum(p.numel() for p in model.parameters())
    act = [0]

    def hook(_m, _i, out):
        act[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    graph = PruningGraph(model, x)
    groups = [{"name": g.name, "channels": g.channels, "gram_bytes": (g.channels ** 2 + g.channels) * 8} for g in graph.groups]
    consumers = {}
    for g in graph.groups:
        for m in g.consumers:
            if supported(m.module) and m.name not in consumers:
                d = m.module.weight[0].numel()  # c·k² (in_features for a Linear)
                consumers[m.name] = {"D": d, "k2": block_size(m.module), "moments_bytes": (d * d + d) * 8,
                                     "cp_rows_bytes_per_image": cp_points * d * 8}
    gram_total = sum(g["gram_bytes"] for g in groups)
    moments_total = sum(c["moments_bytes"] for c in consumers.values())
    widest = max(consumers.values(), key=lambda c: c["D"])
    weights = params * 4
    record = {
        "command": "python -m bench.resnet50_memory",
        "input": [3, 224, 224], "params": params, "weights_MiB": weights / MiB,
        "ddp_gradient_allreduce_MiB_per_step": weights / MiB,
        "activations_MiB_per_image": act[0] / MiB,
        "groups": len(groups), "gram_total_MiB": gram_total / MiB,
        "largest_group": max(groups, key=lambda g: g["channels"]),
        "consumers": len(consumers), "cap_moments_total_MiB": moments_total / MiB,
        "cap_widest_consumer": {"name": max(consumers, key=lambda n: consumers[n]["D"]), **widest,
                                "moments_MiB": widest["moments_bytes"] / MiB},
        "cp_rows_MiB_per_image_all_consumers": sum(c["cp_rows_bytes_per_image"] for c in consumers.values()) / MiB,
        "per_rank": {
            "analysis_batch": analysis_batch,
            "analysis_MiB": (weights + gram_total + analysis_batch * act[0]) / MiB,
            "train_batch_per_rank": train_batch,
            # weights + gradients + SGD momentum + DDP's gradient buckets (about one more gradient copy) + activations
            "train_MiB": (4 * weights + train_batch * act[0]) / MiB,
        },
        "per_group": groups,
        "per_consumer": consumers,
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    r = main()
    print(json.dumps({k: v for k, v in r.items() if k not in ("per_group", "per_consumer")}, indent=1))
