"""Fuzz the verified surgery, and every pruning method, on many Hypothesis-generated architectures; counts as JSON.

    python -m bench.fuzz_surgery [--examples 300] [--seed 0] [--out bench/results/fuzz_summary.json]
    python -m bench.fuzz_surgery --methods [--minutes 10] [--examples 10000] [--out bench/results/fuzz_methods.json]

``--methods`` (see :func:`methods_main`): every registered method prunes every drawn architecture to 50 % of
its MACs (``tests/fuzz/_archs.py:run_method``), and Torch-Pruning's own L1 pruner prunes it too, checked
against the original masked at the channels it removed. Per method: architectures, verified, refused (by
cause), crashed (must be 0), seconds; per pattern × method the same; and the architectures Torch-Pruning
prunes correctly where a chanprune method refuses (the README's refusal table).

Without ``--methods``, the surgery alone:

The same trial as ``tests/fuzz/test_architectures.py`` (which runs a few dozen derandomized examples in
``make test``), on many more random examples: build a drawn architecture, draw a random plan (random
channel subsets per group, at least one channel left), ``prune_copy`` it, and classify the outcome:

* ``passed``   verification accepted the pruned model, and an independent float64 check on a different probe
               batch agrees (pruned == original masked at its producers, relative error < 1e-9);
* ``refused``  a ChanpruneError with a one-sentence message (by type, and by cause);
* ``failed``   anything else: another exception, a message that is not one sentence, a verified model the
               independent check rejects, or a modified caller model. The script exits 1 if any.

Also counts which building blocks and heads the examples used, and cross-checks the probe size: every
plan the default 1-image probe accepts is verified again with an 8-image probe (``probe_disagreements``
must be 0). Recorded: counts, refusal causes with one example architecture each, wall time, versions.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from chanprune._atomic import write_text_atomic
from chanprune.errors import ChanpruneError, PruneError
from chanprune.graph import PruningGraph
from chanprune.surgery import TOLERANCE, apply_plan, prune_copy
from tests.fuzz._archs import FuzzNet, arch_specs, example_inputs, known_gaps, one_sentence, plans
from tests.fuzz._archs import cause as _cause
from tests.fuzz._archs import method_configs, patterns, run_method
from tests.fuzz.test_architectures import _same, _snapshot
from tests.fuzz._archs import independent_check as _independent_check

ROOT = Path(__file__).resolve().parents[1]


def _features(spec: dict) -> list[str]:
    out = []
    for b in spec["body"]:
        out.append(b["kind"] + (f" groups={b['groups']}" if b["kind"] == "conv" and b["groups"] > 1 else "")
                   + (" with input" if b["kind"] == "cat" and b["with_input"] else "")
                   + (" projection" if b["kind"] == "res" and b["proj"] else ""))
    head = spec["head"]
    out.append(f"head {head['kind']}" + (" (side conv)" if head.get("side") else "")
               + (" + hidden Linear" if head.get("hidden") else ""))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-blocks", type=int, default=5)
    p.add_argument("--out", default=None, help="default: bench/results/fuzz_summary.json, or fuzz_methods.json with --methods")
    p.add_argument("--methods", action="store_true", help="run every registered method (and Torch-Pruning's pruner)")
    p.add_argument("--minutes", type=float, default=10.0, help="--methods: stop drawing new architectures after this long")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.methods:
        return methods_main(args)
    args.out = args.out or str(ROOT / "bench" / "results" / "fuzz_summary.json")

    counts: collections.Counter = collections.Counter()
    features: collections.Counter = collections.Counter()
    causes: dict[str, dict] = {}
    failures: list[dict] = []
    unexplained: list[dict] = []  # refusals on architectures without any known Torch-Pruning gap
    t0 = time.perf_counter()

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(spec=arch_specs(max_blocks=args.max_blocks), train_mode=st.booleans(), data=st.data())
    def trial(spec, train_mode, data):
        model = FuzzNet(spec).train(train_mode)
        x = example_inputs(spec)
        snap = _snapshot(model)
        try:
            graph = PruningGraph(copy.deepcopy(model), x)
        except ChanpruneError as exc:
            counts["architectures"] += 1
            features.update(_features(spec))
            counts["architectures refused"] += 1
            causes.setdefault(_cause(str(exc)), {"count": 0, "example": spec, "message": str(exc)})["count"] += 1
            return
        plan = plans(data.draw, graph.widths())
        counts["architectures"] += 1
        features.update(_features(spec))
        counts["plans"] += 1
        counts["groups"] += len(graph.groups)
        counts["groups pruned"] += len(plan)
        problem = None
        try:
            pruned, report = prune_copy(model, plan, x)
        except ChanpruneError as exc:
            if not one_sentence(str(exc)):
                problem = f"not one sentence: {exc}"
            else:
                counts["refused"] += 1
                counts[f"refused ({type(exc).__name__})"] += 1
                gaps = known_gaps(spec)
                counts["refused, with a known Torch-Pruning gap" if gaps else "refused, no known gap"] += 1
                if not gaps:
                    unexplained.append({"spec": spec, "plan": plan, "message": str(exc)})
                if isinstance(exc, PruneError):  # the fallback must drop the offending groups, verify the rest
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            pruned, report = prune_copy(model, plan, x, on_mismatch="exclude")
                        ok = bool(report.excluded) and (not report.removed or (
                            report.verified and _independent_check(model, graph, report.removed, pruned, spec) < 1e-9))
                    except Exception as exc2:  # noqa: BLE001
                        ok, problem = False, f"on_mismatch='exclude' raised {type(exc2).__name__}: {exc2}"
                    counts["exclude fallback recovered" if ok else "exclude fallback failed"] += 1
                    if ok:
                        counts["exclude: groups excluded"] += len(report.excluded)
                        counts["exclude: groups kept pruned"] += len(report.removed)
                    elif problem is None:
                        problem = f"on_mismatch='exclude' did not give a verified model: {report}"
                c = causes.setdefault(_cause(str(exc)), {"count": 0, "type": type(exc).__name__, "example": spec,
                                                         "plan": plan, "message": str(exc)})
                c["count"] += 1
        except Exception as exc:  # noqa: BLE001 - the point is to catch anything else
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if plan and not (report.verified and report.max_rel_error <= TOLERANCE):
                problem = f"not verified: {report}"
            elif plan and _independent_check(model, graph, plan, pruned, spec) >= 1e-9:
                problem = "verified, but the independent float64 check disagrees"
            else:
                counts["passed"] += 1
                if plan:  # the 1-image probe accepted it: an 8-image probe must agree
                    g8 = PruningGraph(copy.deepcopy(model), x)
                    try:
                        apply_plan(g8, plan, model, probe=example_inputs(spec, batch=8, seed=7))
                    except ChanpruneError:
                        counts["probe_disagreements"] += 1
        if not _same(model, snap):
            problem = (problem or "") + " the caller's model was modified"
        if problem:
            counts["failed"] += 1
            failures.append({"spec": spec, "plan": plan, "problem": problem})

    trial()
    seconds = time.perf_counter() - t0
    counts.setdefault("probe_disagreements", 0)
    counts.setdefault("failed", 0)
    record = {
        "what": "verified surgery on Hypothesis-generated architectures (tests/fuzz/_archs.py): pruned == masked "
                "original (independently re-checked in float64 on another probe), or a clean one-sentence refusal",
        "examples": args.examples, "seed": args.seed, "max_blocks": args.max_blocks,
        "counts": dict(sorted(counts.items())),
        "features": dict(sorted(features.items())),
        "refusal_causes": dict(sorted(causes.items(), key=lambda kv: -kv[1]["count"])),
        "failures": failures,
        "refusals_without_known_gap": unexplained,
        "known_gaps": "tests/fuzz/_archs.py:known_gaps: concatenated flattened pools before a Linear, grouped (non-depthwise) "
                      "convs, a reshape round trip; reproducers in tests/fuzz/test_architectures.py",
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "torch_pruning": __import__("torch_pruning").__version__,
                     "hypothesis": __import__("hypothesis").__version__, "python": platform.python_version()},
    }
    write_text_atomic(Path(args.out), json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps(record["counts"]), f"{seconds:.0f} s; wrote {args.out}")
    return 1 if failures else 0


def torch_pruning_outcome(spec: dict, ratio: float = 0.3) -> str:
    """Torch-Pruning's own L1 pruner (its MetaPruner, uniform ``ratio``, the classifier ignored) on the
    architecture: "correct" (the pruned model equals the original masked at the channels each of its groups
    removed, float64, relative error < 1e-6), "wrong" (it differs or no longer runs), "crashed" (the pruner
    raised) or "nothing removed"."""
    import torch_pruning as tp

    from chanprune.graph import default_ignored
    from chanprune.surgery import mask_hooks

    model = FuzzNet(spec).eval()
    x = example_inputs(spec)
    work = copy.deepcopy(model)
    names = {m: n for n, m in work.named_modules()}
    sites: dict[str, set[int]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(work, x, importance=tp.importance.MagnitudeImportance(p=1),
                                          pruning_ratio=ratio, ignored_layers=default_ignored(work))
            for group in pruner.step(interactive=True):
                for item in group:
                    module = item.dep.target.module
                    if isinstance(module, torch.nn.Module) and module in names and \
                            pruner.DG.is_out_channel_pruning_fn(item.dep.handler):
                        sites.setdefault(names[module], set()).update(int(i) for i in item.idxs)
                group.prune()
    except Exception:  # noqa: BLE001 - Torch-Pruning failing is an outcome here
        return "crashed"
    if not sites:
        return "nothing removed"
    witness = copy.deepcopy(model).double()
    handles = mask_hooks(witness, {n: sorted(c) for n, c in sites.items()})
    probe = example_inputs(spec, batch=3, seed=12345).double()
    try:
        with torch.no_grad():
            want = witness(probe)
            got = work.double().eval()(probe)
        error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    except Exception:  # noqa: BLE001 - a pruned model that no longer runs
        return "wrong"
    finally:
        for h in handles:
            h.remove()
    return "correct" if error < 1e-6 else "wrong"


def methods_main(args) -> int:
    """Every registered method on every drawn architecture, until ``--examples`` or ``--minutes`` run out."""
    out = Path(args.out or ROOT / "bench" / "results" / "fuzz_methods.json")
    configs = method_configs()
    per_method = {m: collections.Counter() for m in configs}
    seconds = collections.Counter()
    by_pattern: dict[str, dict[str, collections.Counter]] = {}
    refusals: dict[str, collections.Counter] = {m: collections.Counter() for m in configs}
    crashes: list[dict] = []
    tp_counts: collections.Counter = collections.Counter()
    gaps: dict[str, dict] = {}  # Torch-Pruning correct, chanprune refused: method → cause → count, example
    t0 = time.perf_counter()
    deadline = t0 + 60 * args.minutes
    drawn = [0]

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(spec=arch_specs(max_blocks=args.max_blocks))
    def trial(spec):
        if time.perf_counter() > deadline:
            return
        drawn[0] += 1
        kinds = patterns(spec)
        tp_outcome = torch_pruning_outcome(spec)
        tp_counts[tp_outcome] += 1
        for k in kinds:
            by_pattern.setdefault(k, {}).setdefault("Torch-Pruning L1", collections.Counter())[tp_outcome] += 1
        for method in configs:
            t = time.perf_counter()
            outcome, reason, detail = run_method(spec, method)
            seconds[method] += time.perf_counter() - t
            per_method[method]["architectures"] += 1
            per_method[method][outcome] += 1
            for k in kinds:
                by_pattern.setdefault(k, {}).setdefault(method, collections.Counter())[outcome] += 1
            if outcome == "refused":
                refusals[method][reason] += 1
                if tp_outcome == "correct":
                    entry = gaps.setdefault(method, {}).setdefault(reason, {"count": 0, "patterns": collections.Counter(),
                                                                             "example": spec, "message": detail})
                    entry["count"] += 1
                    entry["patterns"].update(kinds)
            elif outcome == "crashed":
                crashes.append({"method": method, "reason": reason, "detail": detail, "spec": spec})

    trial()
    total = time.perf_counter() - t0
    record = {
        "what": "every registered method prunes each Hypothesis-drawn architecture (tests/fuzz/_archs.py) to 50% of its "
                "MACs: verified (surgery verified and independently re-checked; refit methods by refit_check), refused "
                "in one sentence, or crashed; Torch-Pruning's own L1 pruner (ratio 0.3) on the same architectures, "
                "checked against the original masked at the channels it removed",
        "architectures": drawn[0], "seed": args.seed, "max_blocks": args.max_blocks, "minutes_budget": args.minutes,
        "seconds": total, "architectures_per_minute": 60 * drawn[0] / total if total else None,
        "per_method": {m: {**dict(c), "seconds": seconds[m], "refused_by_cause": dict(refusals[m].most_common())}
                       for m, c in per_method.items()},
        "per_pattern": {k: {m: dict(c) for m, c in v.items()} for k, v in sorted(by_pattern.items())},
        "torch_pruning": dict(tp_counts),
        "refused_where_torch_pruning_is_correct": {
            m: {r: {**e, "patterns": dict(e["patterns"])} for r, e in v.items()} for m, v in gaps.items()},
        "crashes": crashes,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "torch_pruning": __import__("torch_pruning").__version__,
                     "hypothesis": __import__("hypothesis").__version__, "python": platform.python_version()},
    }
    write_text_atomic(out, json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps({m: dict(c) for m, c in per_method.items()}), f"{drawn[0]} architectures, {total:.0f} s; wrote {out}")
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
