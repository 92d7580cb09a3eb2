"""Random small CNNs for fuzzing the verified surgery (used by test_architectures.py and bench/fuzz_surgery.py).

An architecture is a plain JSON-able spec (so a failing example prints as something one can rebuild):

    {"in_channels": 1, "size": 8, "classes": 3, "body": [block, ...], "head": {...}}

Blocks (each keeps track of the channel count ``c`` and spatial size ``h`` as it goes):

* ``conv``    Conv2d 3x3 (``groups`` 1, 2 or 4) [+ BatchNorm] + ReLU
* ``dw``      depthwise 3x3 + BatchNorm + ReLU, then optionally a pointwise 1x1 conv
* ``res``     relu(body(x) + shortcut(x)): identity shortcut when widths match, else a 1x1 projection + BN
* ``cat``     cat([branch_a(x), branch_b(x) (, x)], 1): concatenation of branches, optionally with the input
* ``twice``   one Conv2d c->c applied twice in forward (a shared module), with a BN after each use
* ``pool``    max or average 2x2 pooling
* ``reshape`` x.reshape(n, c, h*w) -> .view(n, c, h, w): a functional reshape round trip

Heads:

* ``gap``     global average pool -> flatten -> [Linear hidden + ReLU] -> Linear
* ``flat``    adaptive avg pool to 2x2 -> x.view(n, -1) -> [hidden] -> Linear(4c, ...)
* ``catflat`` flattened features of two pooled maps, concatenated before a Linear:
              cat([avgpool2x2(x).flatten(1), maxpool1x1(y).flatten(1)]) where y is x itself or a side
              conv of x (``side``), in either order (``swap``)
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

MAX_WIDTH = 16


def _bn(c: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():  # non-trivial statistics: a masked channel must not be accidentally zero downstream
        bn.running_mean.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    return bn


class Conv(nn.Module):
    def __init__(self, cin, cout, groups, bn, gen):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=not bn)
        self.bn = _bn(cout, gen) if bn else nn.Identity()

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class DW(nn.Module):
    def __init__(self, c, pw, gen):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = _bn(c, gen)
        self.pw = nn.Conv2d(c, pw, 1) if pw else None

    def forward(self, x):
        x = F.relu(self.bn(self.dw(x)))
        return self.pw(x) if self.pw is not None else x


class Res(nn.Module):
    def __init__(self, c, w, gen):
        super().__init__()
        self.conv1 = nn.Conv2d(c, w, 3, padding=1, bias=False)
        self.bn1 = _bn(w, gen)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = _bn(w, gen)
        self.proj = None if w == c else nn.Sequential(nn.Conv2d(c, w, 1, bias=False), _bn(w, gen))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.proj is None else self.proj(x)))


class Cat(nn.Module):
    def __init__(self, c, wa, wb, with_input, gen):
        super().__init__()
        self.a = Conv(c, wa, 1, True, gen)
        self.b = nn.Conv2d(c, wb, 1)
        self.with_input = with_input

    def forward(self, x):
        parts = [self.a(x), F.relu(self.b(x))]
        if self.with_input:
            parts.append(x)
        return torch.cat(parts, 1)


class Twice(nn.Module):
    def __init__(self, c, gen):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = _bn(c, gen)
        self.bn2 = _bn(c, gen)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv(x)))
        return F.relu(self.bn2(self.conv(x)))


class Pool(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return F.max_pool2d(x, 2) if self.kind == "max" else F.avg_pool2d(x, 2)


class Reshape(nn.Module):
    def forward(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h * w).view(n, c, h, w)


class Head(nn.Module):
    def __init__(self, c, spec, classes, gen):
        super().__init__()
        self.kind = spec["kind"]
        self.swap = spec.get("swap", False)
        if self.kind == "gap":
            features = c
        elif self.kind == "flat":
            features = 4 * c
        else:  # catflat
            self.side = Conv(c, spec["side"], 1, False, gen) if spec.get("side") else None
            features = 4 * c + (spec["side"] or c)
        hidden = spec.get("hidden")
        self.hidden = nn.Linear(features, hidden) if hidden else None
        self.fc = nn.Linear(hidden or features, classes)

    def forward(self, x):
        n = x.shape[0]
        if self.kind == "gap":
            z = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        elif self.kind == "flat":
            z = F.adaptive_avg_pool2d(x, 2).view(n, -1)
        else:
            y = x if self.side is None else self.side(x)
            parts = [F.adaptive_avg_pool2d(x, 2).flatten(1), F.adaptive_max_pool2d(y, 1).flatten(1)]
            z = torch.cat(parts[::-1] if self.swap else parts, 1)
        if self.hidden is not None:
            z = F.relu(self.hidden(z))
        return self.fc(z)


class FuzzNet(nn.Module):
    def __init__(self, spec: dict, seed: int = 0):
        super().__init__()
        self.spec = spec
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        c, h = spec["in_channels"], spec["size"]
        blocks = []
        for b in spec["body"]:
            kind = b["kind"]
            if kind == "conv":
                blocks.append(Conv(c, b["width"], b["groups"], b["bn"], gen))
                c = b["width"]
            elif kind == "dw":
                blocks.append(DW(c, b["pw"], gen))
                c = b["pw"] or c
            elif kind == "res":
                blocks.append(Res(c, b["width"], gen))
                c = b["width"]
            elif kind == "cat":
                blocks.append(Cat(c, b["wa"], b["wb"], b["with_input"], gen))
                c = b["wa"] + b["wb"] + (c if b["with_input"] else 0)
            elif kind == "twice":
                blocks.append(Twice(c, gen))
            elif kind == "pool":
                blocks.append(Pool(b["pool"]))
                h //= 2
            elif kind == "reshape":
                blocks.append(Reshape())
            else:  # pragma: no cover
                raise ValueError(kind)
        self.body = nn.Sequential(*blocks)
        self.head = Head(c, spec["head"], spec["classes"], gen)

    def forward(self, x):
        return self.head(self.body(x))


def example_inputs(spec: dict, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, spec["in_channels"], spec["size"], spec["size"], generator=g)


# ------------------------------------------------------------------------------------ strategies

_width = st.integers(2, MAX_WIDTH)


@st.composite
def block_specs(draw, c: int, h: int, allow_reshape: bool = True):
    """One block for an input of c channels at h x h; returns (spec, c_out, h_out)."""
    kinds = ["conv", "dw", "res", "cat", "twice"] + (["reshape"] if allow_reshape else []) + (["pool"] if h >= 4 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        groups = draw(st.sampled_from([g for g in (1, 2, 4) if c % g == 0]))
        width = draw(st.integers(1, MAX_WIDTH // groups)) * groups
        return {"kind": "conv", "width": width, "groups": groups, "bn": draw(st.booleans())}, width, h
    if kind == "dw":
        pw = draw(st.one_of(st.none(), _width))
        return {"kind": "dw", "pw": pw}, pw or c, h
    if kind == "res":
        width = draw(st.one_of(st.just(c), _width)) if c >= 2 else draw(_width)
        return {"kind": "res", "width": width, "proj": width != c}, width, h
    if kind == "cat":
        with_input = draw(st.booleans()) and c <= MAX_WIDTH // 2
        room = MAX_WIDTH - (c if with_input else 0)
        wa = draw(st.integers(1, max(1, room - 1)))
        wb = draw(st.integers(1, max(1, room - wa)))
        return {"kind": "cat", "wa": wa, "wb": wb, "with_input": with_input}, wa + wb + (c if with_input else 0), h
    if kind == "twice":
        return {"kind": "twice"}, c, h
    if kind == "pool":
        return {"kind": "pool", "pool": draw(st.sampled_from(["max", "avg"]))}, c, h // 2
    return {"kind": "reshape"}, c, h


@st.composite
def arch_specs(draw, max_blocks: int = 4):
    in_channels = draw(st.integers(1, 3))
    size = draw(st.sampled_from([4, 8, 12, 20]))  # 20 > surgery.PROBE_SIDE: verified on a crop, or at full size
    c, h = in_channels, size
    kind = draw(st.sampled_from(["gap", "flat", "catflat"]))
    body = []
    # the first block is a conv, so every net has at least one prunable group before the head
    first = draw(st.integers(2, MAX_WIDTH))
    body.append({"kind": "conv", "width": first, "groups": 1, "bn": draw(st.booleans())})
    c = first
    for _ in range(draw(st.integers(0, max_blocks - 1))):
        # at most one reshape, and none before a catflat head: Torch-Pruning's tracing of those takes from
        # ~20 s to (seemingly) forever
        allow = kind != "catflat" and not any(b["kind"] == "reshape" for b in body)
        block, c, h = draw(block_specs(c, h, allow_reshape=allow))
        body.append(block)
    head = {"kind": kind, "hidden": draw(st.one_of(st.none(), st.integers(2, MAX_WIDTH)))}
    if kind == "catflat":
        head["side"] = draw(st.one_of(st.none(), _width))
        head["swap"] = draw(st.booleans())
    return {"in_channels": in_channels, "size": size, "classes": draw(st.integers(2, 5)), "body": body, "head": head}


def plans(draw, widths: list[int]) -> dict[int, list[int]]:
    """A random plan: for each group a random (possibly empty) subset of its channels, leaving at least one."""
    plan = {}
    for gi, n in enumerate(widths):
        k = draw(st.integers(0, n - 1))
        if k:
            plan[gi] = sorted(draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True)))
    return plan


def known_gaps(spec: dict) -> list[str]:
    """Features of ``spec`` where Torch-Pruning 1.6's own channel mapping is known to go wrong (see
    test_architectures.py): concatenated flattened pooled maps, a concatenation flattened into a Linear,
    grouped convs, a reshape round trip."""
    gaps = []
    if spec["head"]["kind"] == "catflat":
        gaps.append("concatenated flattened pools")
    if any(b["kind"] == "conv" and b["groups"] > 1 for b in spec["body"]):
        gaps.append("grouped conv")
    if any(b["kind"] == "reshape" for b in spec["body"]):
        gaps.append("reshape")
    mixing = [b["kind"] for b in spec["body"] if b["kind"] in ("conv", "res", "cat") or (b["kind"] == "dw" and b["pw"])]
    if spec["head"]["kind"] in ("flat", "catflat") and mixing and mixing[-1] == "cat":
        gaps.append("concatenation before a flatten head")
    return gaps


# ------------------------------------------------------------------------------------ one trial

def one_sentence(msg: str) -> bool:
    """A clean refusal: one line, ending in a full stop, with no second sentence and no stack trace."""
    msg = msg.strip()
    return (bool(msg) and "\n" not in msg and "Traceback" not in msg and msg.endswith(".")
            and re.search(r"[.!?]\s+[A-Z]", msg) is None)


def widths_of(spec: dict, seed: int = 0):
    """Group widths of the model built from ``spec`` (raises ChanpruneError when it cannot be traced)."""
    import copy

    from chanprune.graph import PruningGraph

    model = FuzzNet(spec, seed).eval()
    graph = PruningGraph(copy.deepcopy(model), example_inputs(spec))
    return model, graph


def run_plan(model: nn.Module, graph, plan: dict[int, list[int]], **kwargs):
    """Verified surgery of ``plan`` on ``graph`` (a graph of a deep copy of ``model``), as ``prune_copy`` does.

    Returns ("verified", report) or ("refused", error); any other exception propagates.
    """
    from chanprune.errors import ChanpruneError
    from chanprune.surgery import apply_plan

    try:
        _, report = apply_plan(graph, plan, model, **kwargs)
    except ChanpruneError as exc:
        return "refused", exc
    return "verified", report
