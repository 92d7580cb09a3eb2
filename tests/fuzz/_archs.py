"""Random small CNNs for fuzzing the verified surgery (used by test_architectures.py and bench/fuzz_surgery.py).

An architecture is a plain JSON-able spec (so a failing example prints as something one can rebuild):

    {"in_channels": 1, "size": 8, "classes": 3, "body": [block, ...], "head": {...}}

Blocks (each keeps track of the channel count ``c`` and spatial size ``h`` as it goes):

* ``conv``    Conv2d 3x3 (``groups`` 1, 2, 3, 4 or 8, ResNeXt-style) [+ BatchNorm] + an activation (``act``:
              ReLU, GELU or Hardswish); ``dead`` output channels get a bias of −100 (no BatchNorm): zero
              after the ReLU on every image
* ``dw``      depthwise 3x3 + BatchNorm + ReLU, then optionally a pointwise 1x1 conv
* ``res``     relu(body(x) + shortcut(x)): identity shortcut when widths match, else a 1x1 projection + BN
* ``cat``     cat([branch_a(x), branch_b(x) (, x)], 1): concatenation of branches, optionally with the input
* ``twice``   one Conv2d c->c applied twice in forward (a shared module), with a BN after each use
* ``pool``    max or average 2x2 pooling
* ``reshape`` x.reshape(n, c, h*w) -> .view(n, c, h, w): a functional reshape round trip
* ``next``    ConvNeXt-style residual block, channels last: x + permute(ls ⊙ Linear(act(Linear(LN(permute(dw(x)))))))
* ``se``      squeeze-and-excitation: x ⊙ sigmoid(conv1x1(relu(conv1x1(avgpool(x))))), ``dead`` hidden units
              (all of them when ``dead`` equals the hidden width) zero on every image
* ``unet``    U-Net stage: skip = conv(x); cat([skip, ConvTranspose2d(stride 2)(conv(pool(skip)))]) -> conv

Heads:

* ``gap``     global average pool -> flatten -> [Linear hidden + ReLU] -> Linear
* ``flat``    adaptive avg pool to 2x2 -> x.view(n, -1) -> [hidden] -> Linear(4c, ...)
* ``catflat`` flattened features of two pooled maps, concatenated before a Linear:
              cat([avgpool2x2(x).flatten(1), maxpool1x1(y).flatten(1)]) where y is x itself or a side
              conv of x (``side``), in either order (``swap``)
"""
from __future__ import annotations

import copy
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


_ACTS = {"relu": F.relu, "gelu": F.gelu, "hardswish": F.hardswish}


class Conv(nn.Module):
    def __init__(self, cin, cout, groups, bn, gen, act="relu", dead=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=not bn or bool(dead))
        self.bn = _bn(cout, gen) if bn and not dead else nn.Identity()
        self.act = act
        if dead:
            with torch.no_grad():
                self.conv.bias[:dead] = -100.0

    def forward(self, x):
        return _ACTS[self.act](self.bn(self.conv(x)))


class LayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        return x * self.gamma


class Next(nn.Module):
    """ConvNeXt block: depthwise conv, then channels last: LayerNorm, Linear, activation, Linear, layer scale."""

    def __init__(self, c, expand, act):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, expand)
        self.pw2 = nn.Linear(expand, c)
        self.ls = LayerScale(c)
        self.act = act

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.ls(self.pw2(_ACTS[self.act](self.pw1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class SE(nn.Module):
    def __init__(self, c, hidden, dead):
        super().__init__()
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, c, 1)
        if dead:
            with torch.no_grad():
                self.fc1.bias[:dead] = -100.0

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class UNet(nn.Module):
    """skip = conv(x); down = conv(pool(skip)); out = conv(cat([skip, up(down)])) with a transposed-conv up."""

    def __init__(self, c, ws, wd, wo, gen):
        super().__init__()
        self.skip = Conv(c, ws, 1, True, gen)
        self.down = Conv(ws, wd, 1, True, gen)
        self.up = nn.ConvTranspose2d(wd, wd, 2, stride=2)
        self.out = Conv(ws + wd, wo, 1, True, gen)

    def forward(self, x):
        s = self.skip(x)
        d = self.down(F.max_pool2d(s, 2))
        return self.out(torch.cat([s, F.relu(self.up(d))], 1))


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
                blocks.append(Conv(c, b["width"], b["groups"], b["bn"], gen, b.get("act", "relu"), b.get("dead", 0)))
                c = b["width"]
            elif kind == "next":
                blocks.append(Next(c, b["expand"], b["act"]))
            elif kind == "se":
                blocks.append(SE(c, b["hidden"], b["dead"]))
            elif kind == "unet":
                blocks.append(UNet(c, b["ws"], b["wd"], b["wo"], gen))
                c = b["wo"]
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


GROUPS = (1, 2, 3, 4, 8)
ACTS = tuple(_ACTS)


@st.composite
def block_specs(draw, c: int, h: int, allow_reshape: bool = True):
    """One block for an input of c channels at h x h; returns (spec, c_out, h_out)."""
    kinds = (["conv", "dw", "res", "cat", "twice", "next", "se"] + (["reshape"] if allow_reshape else [])
             + (["pool"] if h >= 4 else []) + (["unet"] if h >= 2 and h % 2 == 0 else []))
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        groups = draw(st.sampled_from([g for g in GROUPS if c % g == 0]))
        width = draw(st.integers(1, max(1, 2 * MAX_WIDTH // groups) if groups > 1 else MAX_WIDTH)) * groups
        spec = {"kind": "conv", "width": width, "groups": groups, "bn": draw(st.booleans()),
                "act": draw(st.sampled_from(ACTS)), "dead": 0}
        if spec["act"] == "relu" and draw(st.integers(0, 3)) == 0:
            spec["dead"] = draw(st.integers(1, width))
        return spec, width, h
    if kind == "next":
        return {"kind": "next", "expand": draw(st.integers(2, 2 * MAX_WIDTH)), "act": draw(st.sampled_from(["gelu", "hardswish"]))}, c, h
    if kind == "se":
        hidden = draw(st.integers(1, MAX_WIDTH // 2))
        return {"kind": "se", "hidden": hidden, "dead": draw(st.sampled_from([0, hidden, max(1, hidden // 2)]))}, c, h
    if kind == "unet":
        wo = draw(_width)
        return {"kind": "unet", "ws": draw(_width), "wd": draw(_width), "wo": wo}, wo, h
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


def patterns(spec: dict) -> list[str]:
    """The issue-16 patterns a spec contains (the rows of the coverage table)."""
    body = spec["body"]
    out = []
    if any(b["kind"] == "conv" and b["groups"] > 1 for b in body):
        out.append("grouped conv")
    if any(b["kind"] == "next" for b in body):
        out.append("channels-last block")
    if any(b["kind"] == "se" for b in body):
        out.append("SE block")
    if any(b.get("dead") for b in body):
        out.append("dead units")
    if any(b.get("act") in ("gelu", "hardswish") for b in body):
        out.append("GELU/Hardswish")
    if any(b["kind"] == "unet" for b in body):
        out.append("U-Net (transposed conv + skip concat)")
    return out or ["none of these"]


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


# ------------------------------------------------------------------------------------ every method on one model

def method_configs(target: float = 0.5, calibration: int = 32) -> dict:
    """One config per registered method, at ``target`` of the MACs, for tiny models (every method must appear:
    a method registered later without an entry here fails test_every_method_is_fuzzed)."""
    import chanprune as cp

    common = {"target_macs": target, "calibration": calibration, "batch_size": calibration}
    return {
        "l1": cp.L1Config(**common), "l2": cp.L2Config(**common), "bn_scale": cp.BNScaleConfig(**common),
        "taylor": cp.TaylorConfig(**common), "fpgm": cp.FPGMConfig(**common), "hrank": cp.HRankConfig(**common),
        "random": cp.RandomConfig(**common),
        "hierarchical": cp.HierarchicalConfig(allow_exceed=True, **common),  # past the analysis: coverage, not accuracy
        "cp": cp.CPConfig(**common), "cap": cp.CaPConfig(**common),
        # a search of per-group rates: two random and two trained episodes at one rate are enough to exercise
        # its surgery and refit (run_method gives it a DataBundle: it carves validation images from the train split)
        "cacp": cp.CACPConfig(support=(target,), warmup=2, episodes=2, hidden=16, replay_batch=4, val_images=16,
                              calibration=calibration, batch_size=calibration),
        # MSEB scores from the given weights (no MSEB training, no retraining): its selection and surgery; it
        # re-estimates BatchNorm statistics afterwards whatever the config says
        "ucp": cp.UCPConfig(rule="target", target_macs=target, mseb_epochs=0, retrain_epochs=0, calibration=calibration,
                            batch_size=calibration, recover_batches=1),
    }


# methods that change weights after the verified surgery: the inputs their consumer refits are fitted on (None: only
# BatchNorm statistics change, UCP's re-estimation)
REFITS: dict[str, str | None] = {"cp": "pruned", "cap": "original", "cacp": "original", "ucp": None}
NEEDS_BUNDLE = ("cacp", "ucp")  # methods that take their images from a DataBundle's training split


def calibration_data(spec: dict, n: int = 32):
    g = torch.Generator().manual_seed(1)
    x = example_inputs(spec, batch=n, seed=1)
    return x, torch.randint(0, spec["classes"], (n,), generator=g)


def random_bundle(spec: dict, n: int = 64):
    """A DataBundle of random uint8 images of the spec's shape (for methods that need a training split)."""
    from chanprune.data.base import make_bundle

    g = torch.Generator().manual_seed(2)
    shape = (spec["in_channels"], spec["size"], spec["size"])
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % spec["classes"]
    return make_bundle("random", images, labels, images[:8], labels[:8], [str(c) for c in range(spec["classes"])],
                       hflip=False, crop_padding=0, source="random")


def _plan_of(record: dict) -> dict[int, list[int]]:
    return {gi: g["removed"] for gi, g in enumerate(record["groups"]) if g["removed"]}


def _capture(model: nn.Module, names, x):
    """({name: input}, {name: output}) of the named layers on x (eval mode, no grad)."""
    from chanprune.modes import eval_mode

    ins, outs = {}, {}
    modules = dict(model.named_modules())

    def make(n):
        def hook(_m, i, o):
            ins.setdefault(n, i[0].detach())
            outs.setdefault(n, o.detach())

        return hook

    handles = [modules[n].register_forward_hook(make(n)) for n in names]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return ins, outs


def refit_check(method: str, model: nn.Module, pruned: nn.Module, x: torch.Tensor) -> str | None:
    """The second check of a method that refits consumers (the masked-original comparison cannot apply after it).

    * kept indices match the plan: the surgery of the recorded plan alone (no refit) gives a model with the
      same tensor shapes, and the same weights in every layer the method does not refit;
    * each refit consumer, on the inputs the method fitted it on (CP: the pruned model's own; CaP: the
      original's, at the kept input channels), is closer to the original layer's output (centred: a
      folded intercept moves into a BatchNorm) than the same layer without the refit. CP's branch ends are
      fitted to a shortcut-corrected target instead, so they are left out.

    Returns None, or what failed.
    """
    from chanprune.graph import PruningGraph, channel_axis
    from chanprune.surgery import apply_plan

    record = pruned.chanprune_history[-1]
    plan = _plan_of(record)
    if not plan:
        return None
    graph = PruningGraph(copy.deepcopy(model), x[:1], ignored_layers=record["config"]["ignored_layers"])
    plain, _ = apply_plan(graph, plan, model, verify=False)
    state, state0 = pruned.state_dict(), plain.state_dict()
    if state.keys() != state0.keys() or any(state[k].shape != state0[k].shape for k in state):
        return "the refit model's shapes differ from the surgery of its recorded plan"
    consumers = sorted({m.name for gi in plan for m in graph.groups[gi].consumers}) if REFITS[method] else []
    skip = set(record.get("cp", {}).get("branch_ends", []))
    refit = [n for n in consumers if n not in skip]
    from chanprune.graph import _NORM_TYPES

    modules0 = dict(plain.named_modules())
    for name, module in pruned.named_modules():
        if name in consumers or isinstance(module, _NORM_TYPES) or not isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            continue
        if not torch.equal(module.weight, modules0[name].weight):
            return f"layer {name!r} is not refit, but its weights differ from the surgery of the recorded plan"
    if not refit:
        return None
    orig_in, orig_out = _capture(model, refit, x)
    if REFITS[method] == "pruned":
        inputs, _ = _capture(pruned, refit, x)
    else:
        inputs = {}
        for n in refit:
            axis = channel_axis(dict(model.named_modules())[n])
            gone = {i for gi, idxs in plan.items() for m in graph.groups[gi].consumers if m.name == n
                    for i, r in zip(m.idxs, m.root_idxs) if r in set(idxs)}
            keep = [i for i in range(orig_in[n].shape[axis]) if i not in gone]
            inputs[n] = orig_in[n].index_select(axis, torch.as_tensor(keep))
    mods, mods0 = dict(pruned.named_modules()), dict(plain.named_modules())
    for n in refit:
        module = dict(model.named_modules())[n]
        axis = channel_axis(module) % orig_out[n].dim()
        rows = graph.kept_channels(plan, n, orig_out[n].shape[axis])
        want = orig_out[n].index_select(axis, torch.as_tensor(rows)).double()
        with torch.no_grad():
            got, got0 = mods[n](inputs[n]).double(), mods0[n](inputs[n]).double()
        dims = tuple(d for d in range(want.dim()) if d != axis)

        def err(y):
            e = y - want
            return float((e - e.mean(dims, keepdim=True)).pow(2).sum())

        scale = float((want - want.mean(dims, keepdim=True)).pow(2).sum())
        # CP fits on sampled positions and is measured here on all of them (5 % slack); both refits carry a
        # ridge of 1e-3 relative to the input variance, so where no refit was needed (the removed inputs were
        # dead) they may miss by that much of the output's spread
        if err(got) > err(got0) * 1.05 + 1e-3 * scale + 1e-12:
            return (f"the refit of {n!r} is further from the original output ({err(got):.3e}) than no refit "
                    f"({err(got0):.3e})")
    return None


def run_method(spec: dict, method: str, config=None, seed: int = 0) -> tuple[str, str, str]:
    """Prune FuzzNet(spec) with one method; (outcome, reason, detail). outcome: "verified" (the surgery verified,
    re-checked independently: float64 witness on other images, or :func:`refit_check` for refit methods),
    "refused" (a one-sentence ChanpruneError; reason: its type and cause), or "crashed" (anything else:
    another exception, a message that is not one sentence, a failed independent check, a modified caller model).
    """
    import traceback
    import warnings

    from chanprune import prune
    from chanprune.errors import ChanpruneError
    from chanprune.graph import PruningGraph

    model = FuzzNet(spec, seed).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = calibration_data(spec, (config or method_configs()[method]).calibration)
    config = config or method_configs()[method]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method in NEEDS_BUNDLE:  # refits come from the bundle's calibration images: check on those
                bundle = random_bundle(spec)
                x, y = bundle.calibration(config.calibration, seed=config.seed)
                pruned = prune(model, config, bundle, example_inputs=x[:1])
                if method == "cacp":
                    pruned = pruned.at(config.support[0])
            else:
                pruned = prune(model, config, (x, y), example_inputs=x[:1])
    except ChanpruneError as exc:
        msg = str(exc)
        if not one_sentence(msg):
            return "crashed", "not one sentence", msg
        return "refused", f"{type(exc).__name__}: {cause(msg)}", msg
    except Exception as exc:  # noqa: BLE001 - a raw exception is the failure this run looks for
        return "crashed", f"raw {type(exc).__name__}", "".join(traceback.format_exception(exc))[-1500:]
    if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
        return "crashed", "caller's model modified", ""
    record = pruned.chanprune_history[-1]
    if record["groups"] and "removed" not in record["groups"][0]:  # an older chanprune (bench's before/after runs)
        return ("verified", "", "") if record["verified"] else ("crashed", "not verified", json_safe(record))
    plan = _plan_of(record)
    if not plan:
        return "verified", "nothing removed", ""
    if not record["verified"]:
        return "crashed", "not verified", json_safe(record)
    if method in REFITS:
        problem = refit_check(method, model, pruned, x)
        return ("crashed", "refit check", problem) if problem else ("verified", "", "")
    graph = PruningGraph(copy.deepcopy(model), x[:1], ignored_layers=record["config"]["ignored_layers"])
    error = independent_check(model, graph, plan, pruned, spec)
    if not error < 1e-9:
        return "crashed", "independent check", f"relative error {error:.2e}"
    return "verified", "", ""


def independent_check(model, graph, plan, pruned, spec) -> float:
    """float64, a 3-image probe verification never saw: pruned(x) vs the original masked at its producers."""
    from chanprune.surgery import mask_hooks, mask_sites

    witness = copy.deepcopy(model).double().eval()
    handles = mask_hooks(witness, mask_sites(graph, plan))
    x = example_inputs(spec, batch=3, seed=12345).double()
    try:
        with torch.no_grad():
            want = witness(x)
            got = copy.deepcopy(pruned).double().eval()(x)
    finally:
        for h in handles:
            h.remove()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def cause(msg: str) -> str:
    """A refusal message without its numbers and names, to group refusals by cause."""
    msg = msg.split(";")[0]
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"\([^()]*\)", "(…)", msg)
    return re.sub(r"\[[^\]]*\]|\d+(\.\d+)?(e[-+]\d+)?", "N", msg)


def json_safe(record: dict) -> str:
    import json

    return json.dumps(record, default=str)[:500]
