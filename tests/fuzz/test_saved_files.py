"""Saved-model files, fuzzed: what tests/test_io.py's 41 hand-written corruptions do not cover.

* random mutations of the JSON spec at a random place (absurd numbers, NaN/Infinity, wrong types, huge or
  deeply nested values, code-looking strings, deleted or unknown keys) — including ``kwargs`` that would make
  the builder allocate tens of GB before any shape check (fixed in io.py: the build runs under a budget);
* the JSON text cut at a random byte;
* the weights file truncated, bit-flipped or overwritten at random, *with the spec's size and SHA-256 forged
  to match*, so the safetensors parser and the tensor checks are reached, not only the hash;
* a pickle (which would run code) posing as the weights file, hash forged.

Each case must give one :class:`LoadError` whose message is one sentence (cause; fix), execute nothing,
and leave the files as they were — or, for a harmless edit (e.g. ``history``), load the same weights.
The number of cases tried is printed (``-rP``) per test.
"""
from __future__ import annotations

import collections
import copy
import hashlib
import json
import math
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chanprune
from chanprune import io
from chanprune.errors import LoadError
from tests.fuzz._archs import one_sentence

COUNTS: collections.Counter = collections.Counter()
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MARKER = Path(tempfile.gettempdir()) / "chanprune_fuzz_executed_code"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = chanprune.create_model("resnet20", num_classes=10, in_channels=1, width=0.25)
    stem = tmp_path_factory.mktemp("saved") / "model"
    io.save(model, stem, history=[{"step": 1}], extra={"data": "digits"})
    return model, stem


def _copy(stem: Path, into: Path) -> Path:
    for suffix in (".json", ".safetensors"):
        shutil.copy(stem.with_suffix(suffix), into / ("model" + suffix))
    return into / "model"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _check_load(stem: Path, model, kind: str, same_weights: bool = True) -> str:
    """Load; return "refused" or "loaded" (with the same weights, unless the weights file was forged).
    Anything else fails the test."""
    before = _snapshot(stem.parent)
    MARKER.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        loaded = io.load(stem)
    except LoadError as exc:
        msg = str(exc)
        assert one_sentence(msg + ".") and ";" in msg, msg  # io's messages are "cause; fix" without the final stop
        outcome = "refused"
    else:
        sa, sb = model.state_dict(), loaded.state_dict()
        assert sa.keys() == sb.keys()
        if same_weights:
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        outcome = "loaded"
    assert time.perf_counter() - t0 < 20, "a damaged file must be refused quickly, not built"
    assert _snapshot(stem.parent) == before, "loading wrote to the folder"
    assert not MARKER.exists(), "loading executed code from the file"
    COUNTS[f"{kind}: {outcome}"] += 1
    return outcome


def _forge_hash(stem: Path) -> None:
    """Make the spec's recorded size and SHA-256 match whatever the weights file holds now."""
    doc = json.loads(stem.with_suffix(".json").read_text())
    data = stem.with_suffix(".safetensors").read_bytes()
    doc["weights"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    stem.with_suffix(".json").write_text(json.dumps(doc))


# ------------------------------------------------------------------------------ JSON mutations

ABSURD = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, 10 ** 100, -10 ** 12, 1e308, -0.0,
                     math.nan, math.inf, -math.inf, "", "float32", "__import__('os').system('touch x')",
                     "../../etc/passwd", [], {}, [1] * 9, [[[[[[[[1]]]]]]]], {"type": "Lambda"}, "x" * 10_000]),
    st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.lists(st.integers(-3, 10 ** 6), max_size=4), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(doc, prefix=()):
    """Every (container path, key) in the JSON document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        yield prefix, k
        yield from _paths(v, prefix + (k,))


def _at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def json_mutations(draw, doc):
    doc = copy.deepcopy(doc)
    places = sorted(_paths(doc), key=repr)
    path, key = draw(st.sampled_from(places))
    parent = _at(doc, path)
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
    if how == "delete" and isinstance(parent, dict):
        del parent[key]
    elif how == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(ABSURD)
    else:
        parent[key] = draw(ABSURD)
    return doc, f"{how} {'/'.join(map(str, path + (key,)))}"


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_random_json_mutations(saved, data):
    model, stem = saved
    doc = json.loads(stem.with_suffix(".json").read_text())
    mutated, _ = data.draw(json_mutations(doc))
    with tempfile.TemporaryDirectory() as d:
        target = _copy(stem, Path(d))
        target.with_suffix(".json").write_text(json.dumps(mutated, allow_nan=True))
        _check_load(target, model, "JSON mutation")


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_json_cut_at_random_byte(saved, data):
    model, stem = saved
    text = stem.with_suffix(".json").read_bytes()
    cut = data.draw(st.integers(0, len(text) - 2))
    with tempfile.TemporaryDirectory() as d:
        target = _copy(stem, Path(d))
        target.with_suffix(".json").write_bytes(text[:cut])
        assert _check_load(target, model, "JSON truncated") == "refused"


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet20"])
def test_absurd_kwargs_are_refused_before_allocating(tmp_path, name):
    """in_channels=num_classes=10**6 with width 8 would make the builder allocate 4.6e9 (VGG) or 1.2e9 values."""
    torch.manual_seed(0)
    kwargs = {"width": 0.125} if name == "vgg16_bn" else {"width": 0.25}
    model = chanprune.create_model(name, num_classes=10, in_channels=1, **kwargs)
    stem = tmp_path / "model"
    io.save(model, stem)
    doc = json.loads(stem.with_suffix(".json").read_text())
    doc["kwargs"].update(in_channels=10 ** 6, num_classes=10 ** 6, width=8)
    stem.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(LoadError, match="allocate over"):
        io.load(stem)
    COUNTS["absurd kwargs: refused"] += 1


# ------------------------------------------------------------------------------ weights file, hash forged

@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_forged_weights_damage(saved, data):
    model, stem = saved
    blob = bytearray(stem.with_suffix(".safetensors").read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "header"]))

    def anywhere():  # spread over the whole file (drawn integers favour small values, i.e. the header)
        return min(len(blob) - 1, int(data.draw(st.floats(0, 1)) * len(blob)))

    if how == "truncate":
        blob = blob[: anywhere()]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = anywhere()
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "overwrite":
        i = anywhere()
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        blob[i:i + len(chunk)] = chunk
    else:  # damage inside the JSON header of the safetensors file (dtype names, offsets, shapes)
        n = int.from_bytes(blob[:8], "little")
        i = data.draw(st.integers(8, 8 + n - 1))
        blob[i] = data.draw(st.sampled_from(list(b'0123456789"{}[],:FIBU')))
    with tempfile.TemporaryDirectory() as d:
        target = _copy(stem, Path(d))
        target.with_suffix(".safetensors").write_bytes(bytes(blob))
        _forge_hash(target)
        # a forged hash makes changed tensor *values* indistinguishable from another model: they may load
        outcome = _check_load(target, model, f"weights {how}, hash forged", same_weights=False)
        if how in ("truncate", "header"):
            assert outcome == "refused" or bytes(blob) == stem.with_suffix(".safetensors").read_bytes()


class _Payload:
    def __reduce__(self):
        return (Path.touch, (MARKER,))


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_posing_as_weights_runs_nothing(saved, tmp_path, kind):
    model, stem = saved
    target = _copy(stem, tmp_path)
    path = target.with_suffix(".safetensors")
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload()))
    else:
        torch.save({"fc.weight": torch.zeros(2), "payload": _Payload()}, path)
    MARKER.unlink(missing_ok=True)
    _forge_hash(target)
    assert _check_load(target, model, "pickle as weights, hash forged") == "refused"


def test_zz_report_counts():
    """Runs after the others in the same worker when the file is not split; prints what was tried."""
    total = sum(COUNTS.values())
    print(f"\nsaved-file fuzz: {total} cases in this worker: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))
