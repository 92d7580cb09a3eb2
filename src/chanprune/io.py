"""Save and load models without pickle: weights in safetensors, architecture in a JSON spec.

``save(model, "runs/x/model")`` writes ``runs/x/model.safetensors`` (the full ``state_dict``) and
``runs/x/model.json``::

    {"format": "chanprune-model", "version": 1,
     "name": "resnet20", "kwargs": {"num_classes": 10, "in_channels": 3, ...},
     "layers": {"conv1": {"type": "Conv2d", "in_channels": 3, "out_channels": 12, ...}, ...},
     "history": [...], "extra": {...},
     "weights": {"file": "model.safetensors", "sha256": "...", "bytes": 1234},
     "tensors": {"conv1.weight": {"shape": [12, 3, 3, 3], "dtype": "float32"}, ...},
     "chanprune_version": "0.1.0"}

A layer factorised by :mod:`chanprune.lowrank` is one ``layers`` entry of type ``LowRank`` that lists
its scheme, rank and its two parts (each a Conv2d or Linear entry); its parts get no entries of their own::

    "layer1.0.conv1": {"type": "LowRank", "scheme": "channel", "rank": 5,
                       "layers": [{"type": "Conv2d", ..., "out_channels": 5}, {"type": "Conv2d", "in_channels": 5, ...}]}

``load`` rebuilds the registered model from ``name`` and ``kwargs``, replaces every layer listed
in ``layers`` by a fresh one with the recorded (possibly pruned) shape (a ``LowRank``, ``BlockLinear`` or ``GroupedConv2d`` entry
replaces the builder's Conv2d or Linear of that name), checks the weights file
against the recorded size, SHA-256, tensor names, shapes and dtypes, and loads it with
``load_state_dict(strict=True)``. Nothing in either file is executed. The weights file is written
first and the JSON (which holds its hash) last, each through an atomic rename, so the JSON is
the commit point and a failed save never leaves a half-written file in place of a good one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch
from torch import nn

from . import models as _models  # registers the zoo
from ._atomic import atomic_path
from .errors import LoadError, ModelError
from .lowrank.modules import SCHEMES as _LOWRANK_SCHEMES, LowRank
from .partition.modules import BlockLinear, GroupedConv2d

__all__ = ["save", "load", "read_spec", "spec_from_model", "FORMAT", "VERSION", "CODECS", "LayerCodec"]

FORMAT = "chanprune-model"
VERSION = 1
_MAX_COUNT = 1_000_000  # channels, features, groups
_MAX_GEOM = 10_000  # kernel size, stride, padding, dilation
_MAX_JSON_BYTES = 64 * 1024 * 1024
_MAX_BUILD_VALUES = 256 * 1024 * 1024  # a rebuild may allocate this many values (1 GiB of float32) whatever the weights
_TOP_KEYS = ("format", "version", "name", "kwargs", "layers", "history", "extra", "weights", "tensors",
             "chanprune_version")
_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")


# --------------------------------------------------------------------------- layer specs

def _tuple_n(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    return [int(x) for x in v]


def _conv_spec(m: nn.Module, nd: int) -> dict:
    padding = m.padding if isinstance(m.padding, str) else _tuple_n(m.padding, nd)
    return {
        "in_channels": int(m.in_channels), "out_channels": int(m.out_channels),
        "kernel_size": _tuple_n(m.kernel_size, nd), "stride": _tuple_n(m.stride, nd), "padding": padding,
        "dilation": _tuple_n(m.dilation, nd), "groups": int(m.groups), "bias": m.bias is not None,
        "padding_mode": str(m.padding_mode),
    }


def _bn_spec(m: nn.Module) -> dict:
    return {"num_features": int(m.num_features), "eps": float(m.eps),
            "momentum": None if m.momentum is None else float(m.momentum),
            "affine": bool(m.affine), "track_running_stats": bool(m.track_running_stats)}


def _linear_spec(m: nn.Module) -> dict:
    return {"in_features": int(m.in_features), "out_features": int(m.out_features), "bias": m.bias is not None}


def _layernorm_spec(m: nn.Module) -> dict:
    return {"normalized_shape": [int(x) for x in m.normalized_shape], "eps": float(m.eps),
            "elementwise_affine": bool(m.elementwise_affine),
            "bias": getattr(m, "bias", None) is not None}


def _groupnorm_spec(m: nn.Module) -> dict:
    return {"num_groups": int(m.num_groups), "num_channels": int(m.num_channels), "eps": float(m.eps),
            "affine": bool(m.affine)}


def _build_conv(cls: type, s: dict, factory: dict) -> nn.Module:
    return cls(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]), stride=tuple(s["stride"]),
               padding=s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"]),
               dilation=tuple(s["dilation"]), groups=s["groups"], bias=s["bias"], padding_mode=s["padding_mode"],
               **factory)


def _build_bn(cls: type, s: dict, factory: dict) -> nn.Module:
    return cls(s["num_features"], eps=s["eps"], momentum=s["momentum"], affine=s["affine"],
               track_running_stats=s["track_running_stats"], **factory)


def _lowrank_spec(m: nn.Module) -> dict:
    return {"scheme": m.scheme, "rank": m.rank,
            "layers": [layer_spec(part) for part in m]}


def _build_lowrank(cls: type, s: dict, factory: dict) -> nn.Module:
    parts = [CODECS[p["type"]].build(CODECS[p["type"]].cls, p, factory) for p in s["layers"]]
    return cls(s["scheme"], *parts)


def _blocklinear_spec(m: nn.Module) -> dict:
    return {"in_sizes": list(m.in_sizes), "out_sizes": list(m.out_sizes), "pairs": [list(pq) for pq in m.pairs],
            "bias": m.blocks[m.pairs.index((0, 0))].bias is not None, "masked": m.masked,
            "in_index": m.in_index is not None, "out_index": m.out_index is not None}


def _build_blocklinear(cls: type, s: dict, factory: dict) -> nn.Module:
    return cls(s["in_sizes"], s["out_sizes"], s["pairs"], bias=s["bias"], masked=s["masked"],
               in_index=s["in_index"], out_index=s["out_index"], **factory)


def _groupedconv_spec(m: nn.Module) -> dict:
    return {"conv": {"type": "Conv2d", **_conv_spec(m.conv, 2)},
            "in_index": m.in_index is not None, "out_index": m.out_index is not None}


def _build_groupedconv(cls: type, s: dict, factory: dict) -> nn.Module:
    return cls(_build_conv(nn.Conv2d, s["conv"], factory), in_index=s["in_index"], out_index=s["out_index"])


def _build_linear(cls: type, s: dict, factory: dict) -> nn.Module:
    return cls(s["in_features"], s["out_features"], bias=s["bias"], **factory)


def _build_layernorm(cls: type, s: dict, factory: dict) -> nn.Module:
    return cls(tuple(s["normalized_shape"]), eps=s["eps"], elementwise_affine=s["elementwise_affine"], bias=s["bias"],
               **factory)


def _build_groupnorm(cls: type, s: dict, factory: dict) -> nn.Module:
    return cls(s["num_groups"], s["num_channels"], eps=s["eps"], affine=s["affine"], **factory)


def layer_spec(module: nn.Module) -> dict:
    """{"type": ..., **fields} of one layer of a recorded type, as it is now."""
    type_name = _CLASS_TO_TYPE[type(module)]
    return {"type": type_name, **CODECS[type_name].read(module)}


def spec_from_model(model: nn.Module) -> dict:
    """The ``layers`` part of the spec: the current shape of every Conv/BN/Linear/LayerNorm/GroupNorm.

    Attributes are read from the modules as they are now (after pruning), e.g. a depthwise conv
    pruned by torch-pruning reports its updated ``groups``. Modules shared under several names
    are recorded once, under the first name. A ``LowRank``, ``BlockLinear`` or ``GroupedConv2d``
    records its parts inside its own entry.
    """
    layers: dict[str, dict] = {}
    inside: list[str] = []  # prefixes of composite modules: their parts are in the composite's entry
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in inside):
            continue
        if type(module) not in _CLASS_TO_TYPE:
            continue
        layers[name] = layer_spec(module)
        if CODECS[layers[name]["type"]].composite:
            inside.append(f"{name}." if name else "")
    return layers


# --------------------------------------------------------------------------- paths

def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(json path, default safetensors path) for a stem or either file's path."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return Path(str(p) + ".json"), Path(str(p) + ".safetensors")


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


# --------------------------------------------------------------------------- save

def _dtype_name(dtype: torch.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        raise ModelError(f"tensor dtype {dtype} is not supported by chanprune save; cast the model to float32")
    return name


def save(model: nn.Module, path: str | os.PathLike, *, history: list[dict] | None = None,
         extra: dict | None = None) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json``; return the JSON path.

    ``path`` is a stem (a trailing ``.json`` or ``.safetensors`` is dropped). ``history`` (a list
    of dicts) and ``extra`` (a dict) must hold JSON values; they default to what the model carries
    (``model.chanprune_history``: the pruning record; ``model.chanprune_extra``: e.g. the data set name),
    so a pruned model keeps its record. :func:`load` attaches both again.
    Raises :class:`ModelError` if the model has no ``chanprune_spec`` (build it with
    ``create_model`` or register its class with ``register_model``) or cannot be serialised.
    """
    spec = getattr(model, "chanprune_spec", None)
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs"), dict):
        raise ModelError("model has no chanprune spec; create it with chanprune.create_model or register "
                         "your class with chanprune.register_model")
    if spec["name"] not in _models.list_models():
        raise ModelError(f"model name {spec['name']!r} in chanprune_spec is not registered, so the model could not "
                         "be loaded again; register its builder with chanprune.register_model")
    history = list(getattr(model, "chanprune_history", None) or []) if history is None else history
    extra = dict(getattr(model, "chanprune_extra", None) or {}) if extra is None else extra
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ModelError("history must be a list of dicts; pass e.g. [{'step': 1, ...}] or None")
    if not isinstance(extra, dict):
        raise ModelError("extra must be a dict; pass e.g. {'accuracy': 0.91} or None")
    try:  # fail before touching any file
        json.dumps({"kwargs": spec["kwargs"], "history": history, "extra": extra})
    except (TypeError, ValueError) as exc:
        raise ModelError(f"history, extra and the model kwargs must be JSON values ({exc}); "
                         "convert tensors and numpy numbers with float() or .tolist()") from None

    tensors: dict[str, torch.Tensor] = {}
    tensor_spec: dict[str, dict] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"state_dict entry {_short(key)} is a {type(value).__name__}, not a tensor; "
                             "remove get_extra_state from the model to save it")
        # clone: contiguous, on the CPU, and never sharing memory (safetensors refuses shared storage)
        t = value.detach().to("cpu").contiguous().clone()
        tensor_spec[key] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
        tensors[key] = t

    json_path, st_path = _paths(path)
    with atomic_path(st_path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        sha, nbytes = _sha256_file(tmp)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "name": spec["name"],
        "kwargs": spec["kwargs"],
        "layers": spec_from_model(model),
        "history": history,
        "extra": extra,
        "weights": {"file": st_path.name, "sha256": sha, "bytes": nbytes},
        "tensors": tensor_spec,
        "chanprune_version": _version(),
    }
    text = json.dumps(doc, indent=1) + "\n"
    with atomic_path(json_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return json_path


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("chanprune")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


# --------------------------------------------------------------------------- read + validate

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {_short(k)}")
        out[k] = v
    return out


def _short(v: Any, limit: int = 60) -> str:
    """``repr(v)``, cut to ``limit`` characters, for error messages about untrusted values."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    def __init__(self, where: Path) -> None:
        self.where = where

    def fail(self, what: str, fix: str = "re-save the model or restore the original file") -> LoadError:
        return LoadError(f"{self.where}: {what}; {fix}")

    def int_in(self, ctx: str, v: Any, lo: int, hi: int) -> int:
        if not _is_int(v) or not lo <= v <= hi:
            raise self.fail(f"{ctx} must be an integer from {lo} to {hi}, got {_short(v)}")
        return v

    def bool_(self, ctx: str, v: Any) -> bool:
        if not isinstance(v, bool):
            raise self.fail(f"{ctx} must be true or false, got {_short(v)}")
        return v

    def float_(self, ctx: str, v: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not (lo < v if lo_open else lo <= v) or not v <= hi:
            raise self.fail(f"{ctx} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {_short(v)}")
        return float(v)

    def int_list(self, ctx: str, v: Any, n: int | None, lo: int, hi: int) -> list[int]:
        if not isinstance(v, list) or (n is not None and len(v) != n) or (n is None and not 1 <= len(v) <= 8):
            raise self.fail(f"{ctx} must be a list of {n if n is not None else '1-8'} integers, got {_short(v)}")
        return [self.int_in(ctx, x, lo, hi) for x in v]

    def keys(self, ctx: str, d: Any, required: tuple[str, ...]) -> dict:
        if not isinstance(d, dict):
            raise self.fail(f"{ctx} must be a JSON object, got {type(d).__name__}")
        unknown = [k for k in d if k not in required]
        if unknown:
            raise self.fail(f"{ctx} has unknown field {_short(unknown[0])}")
        missing = [k for k in required if k not in d]
        if missing:
            raise self.fail(f"{ctx} is missing field {missing[0]!r}")
        return d


def _check_partitioned(c: _Checker, ctx: str, t: str, s: dict) -> None:
    """A BlockLinear (P part sizes each side, distinct in-range blocks with every diagonal one) or a
    GroupedConv2d (a Conv2d entry)."""
    for key in ("in_index", "out_index") + (("bias", "masked") if t == "BlockLinear" else ()):
        c.bool_(f"{ctx} {key}", s[key])
    if t == "GroupedConv2d":
        if not isinstance(s["conv"], dict) or s["conv"].get("type") != "Conv2d":
            raise c.fail(f"{ctx} conv must be a Conv2d entry, got {_short(s['conv'])}")
        _check_layer(c, f"{ctx} conv", s["conv"], nested=True)
        return
    sizes = []
    for key in ("in_sizes", "out_sizes"):
        v = s[key]
        if not isinstance(v, list) or not 1 <= len(v) <= 4096:
            raise c.fail(f"{ctx} {key} must be a list of 1-4096 part sizes, got {_short(v)}")
        sizes.append([c.int_in(f"{ctx} {key}", x, 1, _MAX_COUNT) for x in v])
    parts = len(sizes[0])
    if len(sizes[1]) != parts:
        raise c.fail(f"{ctx} has {parts} input parts but {len(sizes[1])} output parts")
    pairs = s["pairs"]
    if not isinstance(pairs, list) or not all(isinstance(pq, list) and len(pq) == 2 for pq in pairs) \
            or len(pairs) > parts * parts:
        raise c.fail(f"{ctx} pairs must be a list of [p, q] blocks, got {_short(pairs)}")
    seen = {(c.int_in(f"{ctx} pairs", p, 0, parts - 1), c.int_in(f"{ctx} pairs", q, 0, parts - 1)) for p, q in pairs}
    if len(seen) != len(pairs) or any((p, p) not in seen for p in range(parts)):
        raise c.fail(f"{ctx} pairs must be distinct and include every diagonal block")


def _check_lowrank(c: _Checker, ctx: str, s: dict) -> None:
    """A LowRank entry: a known scheme, exactly two parts of the scheme's layer type whose inner width is the rank."""
    if not isinstance(s["scheme"], str) or s["scheme"] not in _LOWRANK_SCHEMES:
        raise c.fail(f"{ctx} scheme must be one of {', '.join(_LOWRANK_SCHEMES)}, got {_short(s['scheme'])}")
    rank = c.int_in(f"{ctx} rank", s["rank"], 1, _MAX_COUNT)
    parts = s["layers"]
    if not isinstance(parts, list) or len(parts) != 2:
        raise c.fail(f"{ctx} layers must be a list of its 2 parts, got {_short(parts)}")
    want = "Linear" if s["scheme"] == "linear" else "Conv2d"
    for i, part in enumerate(parts):
        pctx = f"{ctx} part {i}"
        if not isinstance(part, dict) or part.get("type") != want:
            t = part.get("type") if isinstance(part, dict) else part
            raise c.fail(f"{pctx} must be a {want} entry for scheme {s['scheme']!r}, got type {_short(t)}")
        _check_layer(c, pctx, part, nested=True)
    first, second = parts
    if want == "Linear":
        widths = (first["out_features"], second["in_features"])
    else:
        widths = (first["out_channels"], second["in_channels"])
        if first["groups"] != 1 or second["groups"] != 1:
            raise c.fail(f"{ctx} parts must have groups=1, got {first['groups']} and {second['groups']}")
        k1, k2 = first["kernel_size"], second["kernel_size"]
        if s["scheme"] == "channel" and k2 != [1, 1]:
            raise c.fail(f"{ctx} second part of a channel factorisation must be a 1×1 conv, got kernel {k2}")
        if s["scheme"] == "spatial" and (k1[1] != 1 or k2[0] != 1):
            raise c.fail(f"{ctx} a spatial factorisation must be a k×1 conv then a 1×k conv, got kernels {k1} and {k2}")
    if widths != (rank, rank):
        raise c.fail(f"{ctx} rank is {rank} but its parts meet at widths {widths[0]} and {widths[1]}")


def _check_conv(c: _Checker, ctx: str, s: dict, nd: int) -> None:
    cin = c.int_in(f"{ctx} in_channels", s["in_channels"], 1, _MAX_COUNT)
    cout = c.int_in(f"{ctx} out_channels", s["out_channels"], 1, _MAX_COUNT)
    c.int_list(f"{ctx} kernel_size", s["kernel_size"], nd, 1, _MAX_GEOM)
    c.int_list(f"{ctx} stride", s["stride"], nd, 1, _MAX_GEOM)
    c.int_list(f"{ctx} dilation", s["dilation"], nd, 1, _MAX_GEOM)
    if isinstance(s["padding"], str):
        if s["padding"] not in ("same", "valid"):
            raise c.fail(f"{ctx} padding must be 'same', 'valid' or a list of integers, got {_short(s['padding'])}")
    else:
        c.int_list(f"{ctx} padding", s["padding"], nd, 0, _MAX_GEOM)
    g = c.int_in(f"{ctx} groups", s["groups"], 1, _MAX_COUNT)
    if cin % g or cout % g:
        raise c.fail(f"{ctx} groups={g} does not divide in_channels={cin} and out_channels={cout}")
    c.bool_(f"{ctx} bias", s["bias"])
    if s["padding_mode"] not in _PADDING_MODES:
        raise c.fail(f"{ctx} padding_mode must be one of {', '.join(_PADDING_MODES)}, "
                     f"got {_short(s['padding_mode'])}")


def _check_bn(c: _Checker, ctx: str, s: dict) -> None:
    c.int_in(f"{ctx} num_features", s["num_features"], 1, _MAX_COUNT)
    c.float_(f"{ctx} eps", s["eps"], 0.0, 1.0, lo_open=True)
    if s["momentum"] is not None:
        c.float_(f"{ctx} momentum", s["momentum"], 0.0, 1.0)
    c.bool_(f"{ctx} affine", s["affine"])
    c.bool_(f"{ctx} track_running_stats", s["track_running_stats"])


def _check_linear(c: _Checker, ctx: str, s: dict) -> None:
    c.int_in(f"{ctx} in_features", s["in_features"], 1, _MAX_COUNT)
    c.int_in(f"{ctx} out_features", s["out_features"], 1, _MAX_COUNT)
    c.bool_(f"{ctx} bias", s["bias"])


def _check_layernorm(c: _Checker, ctx: str, s: dict) -> None:
    c.int_list(f"{ctx} normalized_shape", s["normalized_shape"], None, 1, _MAX_COUNT)
    c.float_(f"{ctx} eps", s["eps"], 0.0, 1.0, lo_open=True)
    c.bool_(f"{ctx} elementwise_affine", s["elementwise_affine"])
    c.bool_(f"{ctx} bias", s["bias"])


def _check_groupnorm(c: _Checker, ctx: str, s: dict) -> None:
    g = c.int_in(f"{ctx} num_groups", s["num_groups"], 1, _MAX_COUNT)
    ch = c.int_in(f"{ctx} num_channels", s["num_channels"], 1, _MAX_COUNT)
    if ch % g:
        raise c.fail(f"{ctx} num_groups={g} does not divide num_channels={ch}")
    c.float_(f"{ctx} eps", s["eps"], 0.0, 1.0, lo_open=True)
    c.bool_(f"{ctx} affine", s["affine"])


@dataclass(frozen=True)
class LayerCodec:
    """How one layer type is recorded in the spec: its class, its fields, and how to read, build and check it.

    A *composite* layer (a factorised or partitioned one) holds its parts in its own entry and may stand in
    for the builder's layer of another class (``stands_for(spec)``); it is never nested in another entry.
    """

    cls: type
    fields: tuple[str, ...]
    read: Callable[[nn.Module], dict]                        # module → {field: value}
    build: Callable[[type, dict, dict], nn.Module]           # (cls, spec, factory kwargs) → module
    check: Callable[[_Checker, str, dict], None]             # raises c.fail(...) on a bad field
    composite: bool = False
    stands_for: Callable[[dict], tuple[type, ...]] = lambda s: ()


_CONV_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
                "padding_mode")
_BN_FIELDS = ("num_features", "eps", "momentum", "affine", "track_running_stats")

# Every recorded layer type, and all the per-type knowledge of the format. Exact classes only: a subclass
# is not recorded. A new layer type is one entry here (with its reader, builder and check).
CODECS: dict[str, LayerCodec] = {
    "Conv1d": LayerCodec(nn.Conv1d, _CONV_FIELDS, lambda m: _conv_spec(m, 1), _build_conv,
                         lambda c, ctx, s: _check_conv(c, ctx, s, 1)),
    "Conv2d": LayerCodec(nn.Conv2d, _CONV_FIELDS, lambda m: _conv_spec(m, 2), _build_conv,
                         lambda c, ctx, s: _check_conv(c, ctx, s, 2)),
    "BatchNorm1d": LayerCodec(nn.BatchNorm1d, _BN_FIELDS, _bn_spec, _build_bn, _check_bn),
    "BatchNorm2d": LayerCodec(nn.BatchNorm2d, _BN_FIELDS, _bn_spec, _build_bn, _check_bn),
    "Linear": LayerCodec(nn.Linear, ("in_features", "out_features", "bias"), _linear_spec, _build_linear, _check_linear),
    "LayerNorm": LayerCodec(nn.LayerNorm, ("normalized_shape", "eps", "elementwise_affine", "bias"), _layernorm_spec,
                            _build_layernorm, _check_layernorm),
    "GroupNorm": LayerCodec(nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine"), _groupnorm_spec,
                            _build_groupnorm, _check_groupnorm),
    "LowRank": LayerCodec(LowRank, ("scheme", "rank", "layers"), _lowrank_spec, _build_lowrank,
                          lambda c, ctx, s: _check_lowrank(c, ctx, s), composite=True,
                          stands_for=lambda s: (_LOWRANK_SCHEMES[s["scheme"]],)),
    "BlockLinear": LayerCodec(BlockLinear, ("in_sizes", "out_sizes", "pairs", "bias", "masked", "in_index", "out_index"),
                              _blocklinear_spec, _build_blocklinear,
                              lambda c, ctx, s: _check_partitioned(c, ctx, "BlockLinear", s), composite=True,
                              stands_for=lambda s: (nn.Linear,)),
    "GroupedConv2d": LayerCodec(GroupedConv2d, ("conv", "in_index", "out_index"), _groupedconv_spec, _build_groupedconv,
                                lambda c, ctx, s: _check_partitioned(c, ctx, "GroupedConv2d", s), composite=True,
                                stands_for=lambda s: (nn.Conv2d,)),
}
_CLASS_TO_TYPE = {codec.cls: name for name, codec in CODECS.items()}


def _check_layer(c: _Checker, name: str, s: Any, nested: bool = False) -> None:
    ctx = name if nested else f"layer {_short(name)}"
    if not isinstance(s, dict) or not isinstance(s.get("type"), str) or s["type"] not in CODECS \
            or (nested and CODECS[s["type"]].composite):
        t = s.get("type") if isinstance(s, dict) else s
        raise c.fail(f"{ctx} has unsupported type {_short(t)} (expected one of {', '.join(CODECS)})")
    codec = CODECS[s["type"]]
    c.keys(ctx, s, ("type",) + codec.fields)
    codec.check(c, ctx, s)


def _validate(doc: Any, c: _Checker) -> dict:
    if not isinstance(doc, dict):
        raise c.fail(f"the spec must be a JSON object, got {type(doc).__name__}")
    if "format" in doc and doc["format"] != FORMAT:
        raise c.fail(f"format is {_short(doc['format'])}, not {FORMAT!r}, so this is not a chanprune model file",
                     "pass the .json written by chanprune.io.save")
    if "version" in doc and _is_int(doc["version"]) and doc["version"] > VERSION:
        raise c.fail(f"spec version {doc['version']} is newer than this chanprune supports ({VERSION})",
                     "upgrade chanprune to load it")
    c.keys("the spec", doc, _TOP_KEYS)
    if not _is_int(doc["version"]) or doc["version"] != VERSION:
        raise c.fail(f"version must be {VERSION}, got {_short(doc['version'])}")
    if not isinstance(doc["name"], str) or not doc["name"]:
        raise c.fail(f"name must be a non-empty string, got {_short(doc['name'])}")
    if not isinstance(doc["kwargs"], dict):
        raise c.fail(f"kwargs must be a JSON object, got {type(doc['kwargs']).__name__}")
    for key in ("num_classes", "in_channels"):
        if key in doc["kwargs"]:
            c.int_in(f"kwargs {key}", doc["kwargs"][key], 1, _MAX_COUNT)
    if not isinstance(doc["layers"], dict):
        raise c.fail(f"layers must be a JSON object, got {type(doc['layers']).__name__}")
    for name, s in doc["layers"].items():
        _check_layer(c, name, s)
    if not isinstance(doc["history"], list) or not all(isinstance(h, dict) for h in doc["history"]):
        raise c.fail("history must be a list of JSON objects")
    if not isinstance(doc["extra"], dict):
        raise c.fail(f"extra must be a JSON object, got {type(doc['extra']).__name__}")
    w = c.keys("weights", doc["weights"], ("file", "sha256", "bytes"))
    if not isinstance(w["file"], str) or not _FILE_RE.match(w["file"]) or w["file"] in (".", ".."):
        raise c.fail(f"weights file must be a plain file name in the same folder, got {_short(w['file'])}")
    if not isinstance(w["sha256"], str) or not _SHA_RE.match(w["sha256"]):
        raise c.fail(f"weights sha256 must be 64 lowercase hex digits, got {_short(w['sha256'])}")
    c.int_in("weights bytes", w["bytes"], 8, 1 << 50)
    if not isinstance(doc["tensors"], dict):
        raise c.fail(f"tensors must be a JSON object, got {type(doc['tensors']).__name__}")
    for key, ts in doc["tensors"].items():
        c.keys(f"tensor {_short(key)}", ts, ("shape", "dtype"))
        if not isinstance(ts["shape"], list) or len(ts["shape"]) > 8 \
                or not all(_is_int(d) and 0 <= d <= 1 << 40 for d in ts["shape"]):
            raise c.fail(f"tensor {_short(key)} shape must be a list of at most 8 non-negative integers, "
                         f"got {_short(ts['shape'])}")
        if not isinstance(ts["dtype"], str) or ts["dtype"] not in _DTYPES:
            raise c.fail(f"tensor {_short(key)} dtype must be one of {', '.join(_DTYPES)}, got {_short(ts['dtype'])}")
    if not isinstance(doc["chanprune_version"], str):
        raise c.fail(f"chanprune_version must be a string, got {_short(doc['chanprune_version'])}")
    return doc


def _read(path: str | os.PathLike) -> tuple[dict, Path, _Checker]:
    json_path, _ = _paths(path)
    c = _Checker(json_path)
    if not json_path.is_file():
        raise LoadError(f"no saved model at {json_path}; pass the stem or the .json/.safetensors path "
                        "written by chanprune.io.save")
    size = json_path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise c.fail(f"the spec is {size} bytes, more than the {_MAX_JSON_BYTES} a chanprune spec can be")
    raw = json_path.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise c.fail(f"the spec is not valid JSON ({exc})") from None
    except RecursionError:
        raise c.fail("the spec is nested too deeply to be a chanprune spec") from None
    return _validate(doc, c), json_path, c


def read_spec(path: str | os.PathLike) -> dict:
    """Read and validate the JSON spec of a saved model (stem or either file's path).

    Only the structure is checked: the weights file, its hash and the model registry are not.
    """
    return _read(path)[0]


# --------------------------------------------------------------------------- load

def _shape(t: Any) -> list[int]:
    return list(t.shape)


def _replace(model: nn.Module, names: list[str], new: nn.Module) -> nn.Module:
    for name in names:
        if name == "":
            spec = getattr(model, "chanprune_spec", None)
            model = new
            if spec is not None:
                model.chanprune_spec = spec
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save` (stem or either file's path), in eval mode.

    The registered builder named in the spec is called with the recorded kwargs, every layer
    listed in ``layers`` is replaced by a fresh one of the recorded shape, the weights file is
    checked (size, SHA-256, names, shapes, dtypes) and loaded with ``strict=True``, and the model
    is moved to ``map_location``. Any mismatch raises :class:`LoadError`; files are only read.
    A model registered by user code needs that code imported first.
    """
    doc, json_path, c = _read(path)
    st_path = json_path.parent / doc["weights"]["file"]
    if not st_path.is_file():
        raise c.fail(f"the weights file {st_path} is missing", "restore it next to the JSON file or re-save the model")
    expected_bytes, expected_sha = doc["weights"]["bytes"], doc["weights"]["sha256"]
    nbytes = st_path.stat().st_size
    if nbytes != expected_bytes:
        raise LoadError(f"{st_path} was modified or truncated after saving (it has {nbytes} bytes, the spec "
                        f"records {expected_bytes}); re-save the model or restore the file")
    data = st_path.read_bytes()  # read once: the bytes that are hashed are the bytes that are loaded
    sha = hashlib.sha256(data).hexdigest()
    if len(data) != expected_bytes or sha != expected_sha:
        raise LoadError(f"{st_path} was modified or truncated after saving (its sha256 is {sha[:16]}..., the spec "
                        f"records {expected_sha[:16]}...); re-save the model or restore the file")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError and friends: the hash matched, so the JSON was forged too
        raise c.fail(f"the weights file {st_path.name} is not a valid safetensors file ({exc})") from None
    del data

    # 1. the JSON's tensor table against the file
    recorded = doc["tensors"]
    for key, t in tensors.items():
        if key not in recorded:
            raise c.fail(f"the weights file has tensor {_short(key)} that the spec's tensor table does not list")
    for key, ts in recorded.items():
        if key not in tensors:
            raise c.fail(f"tensor {_short(key)} listed in the spec is missing from the weights file")
        t = tensors[key]
        if ts["shape"] != _shape(t):
            raise c.fail(f"tensor {_short(key)} has shape {ts['shape']} in the spec but {_shape(t)} "
                         "in the weights file")
        if _DTYPES[ts["dtype"]] != t.dtype:
            raise c.fail(f"tensor {_short(key)} has dtype {ts['dtype']} in the spec but "
                         f"{_DTYPE_NAMES.get(t.dtype, t.dtype)} in the weights file")

    # 2. rebuild the architecture
    name = doc["name"]
    if name not in _models.list_models():
        raise c.fail(f"model {_short(name)} is not registered (known: {', '.join(_models.list_models())})",
                     "import the module that registers it with chanprune.register_model before loading")
    with torch.random.fork_rng(devices=[]):  # building draws random init; leave the caller's RNG alone
        model = _rebuild(doc, tensors, c)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    model.chanprune_history = doc["history"]
    model.chanprune_extra = doc["extra"]
    device = torch.device(map_location)
    if device.type != "cpu":
        model = model.to(device)
    return model


class _OverBudget(Exception):
    pass


class _AllocationBudget(torch.overrides.TorchFunctionMode):
    """Count the values that tensor factories are asked for while a model is built, and stop the build
    *before* the call that would pass ``limit`` (so an absurd spec never allocates its tensors)."""

    _FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.used = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._FACTORIES:
            size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
            if func is torch.full:
                size = args[0] if args else kwargs.get("size", ())
            try:
                self.used += math.prod(int(d) for d in size)
            except (TypeError, ValueError):
                pass
            if self.used > self.limit:
                raise _OverBudget(self.used)
        return func(*args, **kwargs)


def _rebuild(doc: dict, tensors: dict[str, torch.Tensor], c: _Checker) -> nn.Module:
    """Build the model with the recorded layer shapes and check its state_dict against ``tensors``."""
    name = doc["name"]
    # Absurd kwargs (in_channels=10**6, width=8, ...) would allocate tens of GB before any shape check:
    # the builder's model may be larger than the (possibly pruned) weights, but not absurdly so.
    stored = sum(t.numel() for t in tensors.values())
    try:
        with _AllocationBudget(max(_MAX_BUILD_VALUES, 64 * stored)):
            model = _models.create_model(name, **doc["kwargs"])
    except _OverBudget as exc:
        raise c.fail(f"kwargs {_short(doc['kwargs'])} make model {_short(name)} allocate over {exc.args[0]:,} values, "
                     f"but the weights file holds only {stored:,}") from None
    except ModelError as exc:
        raise c.fail(f"model {_short(name)} cannot be built from the recorded kwargs ({exc})") from None

    by_id: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(mod), []).append(mname)
    for lname, ls in doc["layers"].items():
        try:
            old = model.get_submodule(lname) if lname else model
        except AttributeError:
            raise c.fail(f"layer {_short(lname)} does not exist in model {_short(name)}") from None
        codec = CODECS[ls["type"]]
        cls = codec.cls
        # a factorised or partitioned layer stands in for the builder's Conv2d or Linear
        replaces = (cls,) + codec.stands_for(ls)
        if type(old) not in replaces:
            raise c.fail(f"layer {_short(lname)} is a {ls['type']} in the spec but a {type(old).__name__} "
                         f"in model {_short(name)}")
        if type(old) is cls and layer_spec(old) == ls:
            continue  # already the recorded shape (e.g. not pruned): keep the builder's module
        first = next(iter(old.parameters(recurse=False)), None)
        dtype = first.dtype if first is not None else torch.get_default_dtype()
        try:
            new = codec.build(cls, ls, {"device": "meta", "dtype": dtype})
        except (ValueError, TypeError, RuntimeError) as exc:
            raise c.fail(f"layer {_short(lname)} cannot be built from the spec ({exc})") from None
        prefix = f"{lname}." if lname else ""
        for key, value in new.state_dict().items():  # compare before allocating anything
            full = prefix + key
            if full not in tensors:
                raise c.fail(f"model expects tensor {full!r} that is missing from the weights file")
            if _shape(value) != _shape(tensors[full]):
                raise c.fail(f"tensor {full!r} has shape {_shape(tensors[full])} in the weights file but layer "
                             f"{_short(lname)} in the spec needs {_shape(value)}")
        new = codec.build(cls, ls, {"device": "cpu", "dtype": dtype})  # weights are overwritten below
        new.train(old.training)
        model = _replace(model, by_id.get(id(old), [lname]), new)

    # 3. a model saved after .half()/.double() is rebuilt in that dtype
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    model_floats = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    if len(floats) == 1 and len(model_floats) == 1 and floats != model_floats:
        model = model.to(next(iter(floats)))

    # 4. the model's state_dict against the file
    state = model.state_dict()
    for key, value in state.items():
        if key not in tensors:
            raise c.fail(f"model expects tensor {_short(key)} that is missing from the weights file")
        t = tensors[key]
        if _shape(value) != _shape(t):
            raise c.fail(f"tensor {_short(key)} has shape {_shape(t)} in the weights file but the model needs "
                         f"{_shape(value)}")
        if value.dtype != t.dtype:
            raise c.fail(f"tensor {_short(key)} has dtype {_DTYPE_NAMES.get(t.dtype, t.dtype)} in the weights file "
                         f"but the model needs {_DTYPE_NAMES.get(value.dtype, value.dtype)}")
    for key in tensors:
        if key not in state:
            raise c.fail(f"the weights file has tensor {_short(key)} that model {_short(name)} does not have")
    return model
