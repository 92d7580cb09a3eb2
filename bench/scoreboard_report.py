"""The scoreboard's report: verdicts, tables, plots and closing note from ``bench/results/scoreboard_*.json``.

``python -m bench.make_readme results`` calls :func:`render_markdown` (and :func:`make_plots`) to write the README's
Results section; the rows themselves come from ``bench/scoreboard.py``. Nothing here measures anything: every
number is read from the committed JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import RESULTS, ROOT, binomial_se, compare, compare_no_ft
from bench.scoreboard import EXTENDED, FULL_MODEL, MODELS, OURS_FALLBACKS, ROUND_TO, TARGETS, all_methods, row_key

PARENT = {fid: parent for fid, _, _, parent in OURS_FALLBACKS}  # fallback row → the method it stands in for


MODEL_LABEL = {"resnet20": "ResNet-20", "resnet56": "ResNet-56", "vgg16_bn": "VGG-16-BN", "mobilenetv2": "MobileNetV2"}


def load_docs(results: Path = RESULTS) -> list[dict]:
    """The full-run JSON files, in the run order of MODELS (the quick file is left out)."""
    order = {folder: i for i, (_, _, folder) in enumerate(MODELS)}
    docs = []
    for f in results.glob("scoreboard_*.json"):
        if f.stem == "scoreboard_quick":
            continue
        doc = json.loads(f.read_text())
        doc["_file"] = f.name
        docs.append(doc)
    return sorted(docs, key=lambda d: order.get(Path(d["checkpoint"]).name, len(order)))


def label(doc: dict) -> str:
    kw = doc.get("model_kwargs") or {}
    width = {k: v for k, v in kw.items() if k in ("width", "width_mult")}
    extra = f" (width {next(iter(width.values()))})" if width else ""
    data = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}.get(doc["data"], doc["data"])
    return f"{MODEL_LABEL.get(doc['model'], doc['model'])}{extra}, {data}"


def _main_rows(doc: dict, target: float | None = None) -> list[dict]:
    return [r for r in doc["rows"] if r.get("round_to") is None
            and (target is None or abs(r["target_macs"] - target) < 1e-9)]


def _targets(doc: dict) -> list[float]:
    return sorted({r["target_macs"] for r in _main_rows(doc)}, reverse=True)


def _ft(r: dict) -> tuple[float, float] | None:
    a = r.get("accuracy_ft")
    return None if not a else (a["mean"], a["std"])


COMPENSATING = ("cp", "cap")  # methods whose planner refits consumer weights on the calibration data


def compensates(row: dict) -> bool:
    """True for chanprune rows that change the kept weights on calibration data (recover='compensate', CP, CaP)."""
    call = row.get("call", {})
    return call.get("recover") == "compensate" or call.get("method") in COMPENSATING


def verdicts(doc: dict, plain: bool = False) -> list[dict]:
    """Per target: the best chanprune row against the best Torch-Pruning row, fine-tuned and not.

    ``plain``: only chanprune rows that do not refit weights (see :func:`compensates`) take part.
    """
    out = []
    for t in _targets(doc):
        ok = [r for r in _main_rows(doc, t) if r["status"] == "ok"]
        fams = {f: [r for r in ok if r["family"] == f and not (plain and compensates(r))]
                for f in ("chanprune", "torch-pruning")}
        v: dict[str, Any] = {"target": t}
        ours_ft = [r for r in fams["chanprune"] if _ft(r)]
        tp_ft = [r for r in fams["torch-pruning"] if _ft(r)]
        if ours_ft and tp_ft:
            a = max(ours_ft, key=lambda r: _ft(r)[0])
            b = max(tp_ft, key=lambda r: _ft(r)[0])
            v["ft"] = {"ours": a["method"], "ours_acc": _ft(a), "tp": b["method"], "tp_acc": _ft(b),
                       "verdict": compare(_ft(a), _ft(b))}
        if fams["chanprune"] and fams["torch-pruning"]:
            a = max(fams["chanprune"], key=lambda r: r["accuracy_no_ft"])
            b = max(fams["torch-pruning"], key=lambda r: r["accuracy_no_ft"])
            n = a.get("test_images", 0)
            v["no_ft"] = {"ours": a["method"], "ours_acc": a["accuracy_no_ft"], "tp": b["method"],
                          "tp_acc": b["accuracy_no_ft"],
                          "se": binomial_se(a["accuracy_no_ft"], b["accuracy_no_ft"], n),
                          "verdict": compare_no_ft(a["accuracy_no_ft"], b["accuracy_no_ft"], n)}
        v["ours_count"] = len(fams["chanprune"])
        v["tp_count"] = len(fams["torch-pruning"])
        out.append(v)
    return out


def _fmt_ft(r: dict, best: tuple[float, float] | None) -> str:
    ft = _ft(r)
    if ft is None:
        return "–"
    s = f"{ft[0]:.2f} ± {ft[1]:.2f}"
    if best is not None:
        if ft == best:
            s = f"**{s}** best"
        elif compare(ft, best) == "tie":
            s += " (tie)"
    return s


def _speedup(r: dict, b: str) -> str:
    lat = r.get("latency", {}).get(b)
    return "–" if not lat else f"{lat['speedup']:.2f}×"


REFUSALS = ("OverPruneError", "PruneError")  # chanprune saying no to a target, as opposed to a crash


def _short_reason(reason: str) -> str:
    """A failed row's reason for a table cell: 'refused' or 'failed', then the first clause of the message."""
    kind, _, text = reason.partition(": ")
    head = text.split("; ")[0] if text else reason
    return f"{'refused' if kind in REFUSALS else 'failed'}: {head}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("s") else "s"))


def _tally(counts: dict[str, int]) -> str:
    return (f"{_plural(counts['win'], 'win')}, {_plural(counts['tie'], 'tie')}, "
            f"{_plural(counts['loss'], 'loss')}")


def test_images(doc: dict) -> int:
    """How many test images the rows were evaluated on (the recipe's number, or the whole split when smaller)."""
    return next((r["test_images"] for r in doc["rows"] if r.get("test_images")), doc["recipe"]["test_images"])


def model_tables(doc: dict) -> str:
    parts = []
    dense = doc["dense"]
    parts.append(f"#### {label(doc)}\n\nDense: {dense['accuracy']:.2f}% on {test_images(doc):,} test images, "
                 f"{dense['macs'] / 1e6:.2f}M MACs, {dense['params'] / 1e6:.3f}M params "
                 f"(`{doc['checkpoint']}`).")
    for t in _targets(doc):
        rows = _main_rows(doc, t)
        ok = [r for r in rows if r["status"] == "ok"]
        fts = [_ft(r) for r in ok if _ft(r)]
        best = max(fts, key=lambda x: x[0]) if fts else None
        nf_best = max((r["accuracy_no_ft"] for r in ok), default=None)
        lines = ["| method | MACs kept | params kept | acc. no FT (raw → BN re-est.) | acc. FT (mean ± std) | "
                 "speed-up b1 | speed-up b32 | prune s |", "|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["status"] != "ok", -(_ft(r) or (-1, 0))[0],
                                              -(r.get("accuracy_no_ft") or -1))):
            name = f"{r['method']}"
            if r["status"] != "ok":
                lines.append(f"| {name} | – | – | {_short_reason(r['reason'])} | – | – | – | – |")
                continue
            mark = "" if r.get("within_tolerance", True) else " †"
            if r.get("finetune_mkldnn") is False:
                name += " ‡"
            if r.get("finetune_device", "cpu") != "cpu":
                name += " ◊"
            nf = f"{r['accuracy_before_bn']:.2f} → {r['accuracy_no_ft']:.2f}"
            if r["accuracy_no_ft"] == nf_best:
                nf = f"{r['accuracy_before_bn']:.2f} → **{r['accuracy_no_ft']:.2f}**"
            prune_s = f"{r['prune_seconds']:.1f}"
            if r["search_seconds"] > r["prune_seconds"] * 1.05:
                prune_s += f" ({r['search_seconds']:.1f} with search)"
            lines.append(f"| {name} | {100 * r['macs_kept']:.1f}%{mark} | {100 * r['params_kept']:.1f}% | {nf} | "
                         f"{_fmt_ft(r, best)} | {_speedup(r, 'b1')} | {_speedup(r, 'b32')} | {prune_s} |")
        parts.append(f"**{label(doc)}, {100 * t:.0f}% of the MACs kept**\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _study_rows(doc: dict) -> list[dict]:
    """The finished rows of the round_to study (its methods at its target, every round_to value)."""
    study = doc.get("round_to_study") or {}
    target, methods = study.get("target"), study.get("methods", [])
    return [r for r in doc["rows"] if r["method"] in methods and target is not None
            and abs(r["target_macs"] - target) < 1e-9 and r["status"] == "ok"]


def _speedup_per_reduction(r: dict) -> tuple[float, float]:
    """Measured speed-up / MAC reduction at batch 1 and 32 (1.0: the speed-up equals the MAC reduction)."""
    return tuple(r["latency"][b]["speedup"] * r["macs_kept"] for b in ("b1", "b32"))


def round_to_table(docs: list[dict]) -> str:
    lines = ["| model | method | round_to | MACs kept | MAC reduction | speed-up b1 | speed-up b32 | "
             "b1 speed-up / MAC reduction | b32 speed-up / MAC reduction | acc. no FT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    summary = ["| model | round_to | rows | mean b1 ratio | mean b32 ratio |", "|---|---|---|---|---|"]
    any_rows = False
    for doc in docs:
        by_rt: dict = {}
        for r in sorted(_study_rows(doc), key=lambda r: (r["method"], r["round_to"] or 0)):
            any_rows = True
            s1, s32 = r["latency"]["b1"]["speedup"], r["latency"]["b32"]["speedup"]
            q1, q32 = _speedup_per_reduction(r)
            by_rt.setdefault(r["round_to"], []).append((q1, q32))
            lines.append(f"| {label(doc)} | {r['method']} | {r['round_to'] or 'none'} | {100 * r['macs_kept']:.1f}% | "
                         f"{1 / r['macs_kept']:.2f}× | {s1:.2f}× | {s32:.2f}× | {q1:.2f} | {q32:.2f} | "
                         f"{r['accuracy_no_ft']:.2f} |")
        for rt in sorted(by_rt, key=lambda x: x or 0):
            v = np.asarray(by_rt[rt])
            summary.append(f"| {label(doc)} | {rt or 'none'} | {len(v)} | {v[:, 0].mean():.2f} | {v[:, 1].mean():.2f} |")
    if not any_rows:
        return "_The round_to study has not run yet._"
    return "\n".join(summary) + "\n\n" + "\n".join(lines)


def missing(docs: list[dict]) -> list[str]:
    """What the planned full run has not produced yet (models, or model × target × method)."""
    have = {Path(d["checkpoint"]).name: d for d in docs}
    method_ids = [m.id for m in all_methods() if m.fallback_for is None]
    out = []
    for _, _, folder in MODELS:
        doc = have.get(folder)
        if doc is None:
            present = (ROOT / "checkpoints" / folder / "model.json").exists()
            out.append(f"`{folder}`: no rows yet" + ("" if present else " (checkpoint not present when the run reached it)"))
            continue
        keys = {r["key"] for r in doc["rows"]}
        for t in TARGETS:
            gone = [m for m in method_ids if row_key(t, m, None) not in keys]
            if gone:
                out.append(f"`{folder}` at {100 * t:.0f}%: " + ", ".join(gone))
        study = doc.get("round_to_study") or ROUND_TO
        gone = [f"{m} round_to={r}" for m in study["methods"] for r in study["values"] if r is not None
                and m in method_ids and row_key(study["target"], m, r) not in keys]
        if gone:
            out.append(f"`{folder}` round_to study: " + ", ".join(gone))
    return out


def make_plots(docs: list[dict], outdir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for doc in docs:
        rows = [r for r in _main_rows(doc) if r["status"] == "ok" and _ft(r)]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        line_of = lambda m: PARENT.get(m, m)  # noqa: E731  (a +exceed row continues its parent's line)
        for method in sorted({line_of(r["method"]) for r in rows}):
            pts = sorted((r["macs_kept"], *_ft(r), r["method"] != method) for r in rows if line_of(r["method"]) == method)
            x, y, e, beyond = (np.asarray(v) for v in zip(*pts))
            ours = method.startswith("ours.")
            bar = ax.errorbar(100 * x, y, yerr=e, marker="o" if ours else "s", linestyle="-" if ours else "--",
                              linewidth=2 if ours else 1, markersize=4, capsize=2,
                              label=method + (" (hollow: allow_exceed)" if beyond.any() else ""))
            if beyond.any():  # past the analysed maximum: the same line, hollow markers
                ax.scatter(100 * x[beyond], y[beyond], s=40, facecolors="white", edgecolors=bar[0].get_color(),
                           zorder=3)
        ax.axhline(doc["dense"]["accuracy"], color="k", linewidth=0.8, linestyle=":", label="dense")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel("test accuracy after the short fine-tune (%)")
        ax.set_title(f"{label(doc)}: accuracy vs MACs (mean ± std over seeds)")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = outdir / f"scoreboard_accuracy_{Path(doc['checkpoint']).name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    pts = [(doc, r) for doc in docs for r in doc["rows"] if r["status"] == "ok" and "latency" in r]
    if pts:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
        labels = [label(d) for d in docs]
        colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
        for ax, b in zip(axes, ("b1", "b32")):
            for lab in labels:
                for fam, marker in (("chanprune", "o"), ("torch-pruning", "s")):
                    sel = [(1 / r["macs_kept"], r["latency"][b]["speedup"]) for d, r in pts
                           if label(d) == lab and r["family"] == fam]
                    if sel:
                        x, y = zip(*sel)
                        ax.scatter(x, y, marker=marker, s=18, alpha=0.7, color=colors[lab],
                                   facecolors="none" if fam == "torch-pruning" else None,
                                   label=f"{lab} · {fam}")
            hi = max(max(1 / r["macs_kept"] for _, r in pts), 1.0) * 1.05
            ax.plot([1, hi], [1, hi], "k--", linewidth=1, label="y = x (speed-up = MAC reduction)")
            ax.set_xlabel("MAC reduction (dense MACs / pruned MACs)")
            ax.set_title(f"CPU latency speed-up, batch {b[1:]}, 1 thread")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("measured speed-up (dense / pruned median latency)")
        axes[1].legend(fontsize=6)
        fig.tight_layout()
        path = outdir / "scoreboard_speedup.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _where(items: list[tuple[str, float]]) -> str:
    """'ResNet-20 at 50/33%; VGG-16 at 25%' from (model label, target) pairs, in the order given."""
    by: dict[str, list[float]] = {}
    for lab, t in items:
        by.setdefault(lab, []).append(t)
    return "; ".join(f"{lab} at {'/'.join(f'{100 * t:.0f}' for t in ts)}%" for lab, ts in by.items())


def _best_of(rows: list[dict], methods: tuple[str, ...]) -> dict | None:
    cands = [r for r in rows if r["status"] == "ok" and r["method"] in methods and _ft(r)]
    return max(cands, key=lambda r: _ft(r)[0]) if cands else None


SAME_REFIT = (("ours.hierarchical+compensate", "ours.hierarchical+compensate+exceed"), ("ours.l1+compensate",))


def same_refit_verdicts(doc: dict) -> list[dict]:
    """Selection against selection under the same refit: hierarchical + compensate vs L1 + compensate.

    Both refit the kept weights the same way (``recover='compensate'``), so the difference is the choice of
    channels and per-layer budgets alone.
    """
    out = []
    for t in _targets(doc):
        rows = _main_rows(doc, t)
        a, b = _best_of(rows, SAME_REFIT[0]), _best_of(rows, SAME_REFIT[1])
        if a and b:
            out.append({"target": t, "ours": a["method"], "l1": b["method"], "verdict": compare(_ft(a), _ft(b)),
                        "ours_ft": _ft(a)[0], "diff": _ft(a)[0] - _ft(b)[0]})
    return out


def hierarchical_standing(doc: dict, t: float) -> tuple[str | None, str | None, float]:
    """Hierarchical + compensate against the best other chanprune row at target t: (verdict, best other, its lead)."""
    rows = [r for r in _main_rows(doc, t) if r["family"] == "chanprune"]
    ours = _best_of(rows, SAME_REFIT[0])
    others = [r for r in rows if r["status"] == "ok" and _ft(r) and r["method"] not in SAME_REFIT[0]]
    if ours is None or not others:
        return None, None, 0.0
    best = max(others, key=lambda r: _ft(r)[0])
    return compare(_ft(ours), _ft(best)), best["method"], _ft(best)[0] - _ft(ours)[0]


def round_to_finding(docs: list[dict]) -> str:
    """Per round_to value: on how many models the mean speed-up / MAC-reduction ratio rose over no rounding."""
    ratios: dict = {}
    for doc in docs:
        for r in _study_rows(doc):
            ratios.setdefault(label(doc), {}).setdefault(r["round_to"], []).append(_speedup_per_reduction(r))
    said = []
    for rt in sorted({rt for m in ratios.values() for rt in m if rt is not None}):
        both = [(np.mean(m[None], axis=0), np.mean(m[rt], axis=0)) for m in ratios.values() if None in m and rt in m]
        if not both:
            continue
        up = [sum(after[i] > before[i] for before, after in both) for i in (0, 1)]
        gain = [float(np.mean([after[i] - before[i] for before, after in both])) for i in (0, 1)]
        said.append(f"round_to={rt} raised the batch-32 ratio on {up[1]} of {len(both)} models (mean change "
                    f"{gain[1]:+.2f}) and the batch-1 ratio on {up[0]} of {len(both)} ({gain[0]:+.2f})")
    if not said:
        return ""
    return ("Rounding, measured: " + "; ".join(said) + ". Each cell is two rows measured once on a shared machine, "
            "so single differences are noise-level; the accuracy column shows what the coarser counts cost before "
            "any fine-tune.")


def closing_note(docs: list[dict]) -> str:
    """Plain statement of where chanprune wins, ties and loses, plus facts the JSON shows about the peers."""
    buckets: dict[str, dict[str, list[tuple[str, float]]]] = {"ft": {}, "no_ft": {}, "ft_plain": {}, "no_ft_plain": {}}
    for doc in docs:
        for plain in (False, True):
            for v in verdicts(doc, plain):
                for kind in ("ft", "no_ft"):
                    if kind in v:
                        buckets[kind + ("_plain" if plain else "")].setdefault(v[kind]["verdict"], []).append(
                            (label(doc), v["target"]))
    lines = []
    for kind, title in (("ft", "After the short fine-tune"), ("no_ft", "Without fine-tuning (BN re-estimated)"),
                        ("ft_plain", "Without weight compensation, after the fine-tune"),
                        ("no_ft_plain", "Without weight compensation and without fine-tuning")):
        b = buckets[kind]
        if not b:
            continue
        said = [f"chanprune **{'loses' if w == 'loss' else w + 's'}** at {_where(b[w])}"
                for w in ("win", "tie", "loss") if b.get(w)]
        lines.append(f"{title}: " + ". ".join(said) + ".")
    same = {w: [] for w in ("win", "tie", "loss")}
    parts = []  # (margin over Torch-Pruning's best, of which from the selection), fine-tuned points
    for doc in docs:
        tp_best = {v["target"]: v["ft"]["tp_acc"][0] for v in verdicts(doc) if "ft" in v}
        for v in same_refit_verdicts(doc):
            same[v["verdict"]].append((label(doc), v["target"]))
            if v["target"] in tp_best:
                parts.append((v["ours_ft"] - tp_best[v["target"]], v["diff"]))
    if parts:
        margin, selection = np.mean(parts, axis=0)
        lines.append("Same refit, different selection (hierarchical + compensate against uniform L1 + compensate, "
                     "both `recover='compensate'`), fine-tuned: "
                     + "; ".join(f"{_plural(len(same[w]), w)}" + (f" ({_where(same[w])})" if same[w] else "")
                                 for w in ("win", "tie", "loss"))
                     + f". Over these {len(parts)} rows hierarchical + compensate leads Torch-Pruning's best by "
                       f"{margin:+.2f} points on average, of which {selection:+.2f} come from its selection and "
                       f"{margin - selection:+.2f} from the refit, which any selection can use.")
    standing = [(doc, t, *hierarchical_standing(doc, t)) for doc in docs for t in _targets(doc)]
    standing = [x for x in standing if x[2] is not None]
    if standing:
        behind = [f"{label(doc)} at {100 * t:.0f}% ({best} leads by {lead:.2f})" for doc, t, verdict, best, lead
                  in standing if verdict == "loss"]
        lines.append(f"Among chanprune's own rows, fine-tuned, hierarchical + compensate is the best or within the "
                     f"seed spread of the best at {len(standing) - len(behind)} of {len(standing)} model × target "
                     "cells" + (f"; behind at {'; '.join(behind)}." if behind else "."))
    rt = round_to_finding(docs)
    if rt:
        lines.append(rt)
    hess = [r for d in docs for r in d["rows"] if r["method"] == "tp.hessian" and r["status"] == "ok"
            and r.get("info", {}).get("hessian_samples_accumulated") is not None]
    if hess:
        kept = sorted({r["info"]["hessian_samples_accumulated"] for r in hess})
        fed = sorted({r["info"]["hessian_samples_fed"] for r in hess})
        lines.append(f"Note on `tp.hessian`: Torch-Pruning's `HessianImportance.accumulate_grad` was fed "
                     f"{', '.join(map(str, fed))} per-sample gradients but its counter reports "
                     f"{', '.join(map(str, kept))} accumulated (in 1.6.1 it tests the parameter's *name* against a "
                     "dict keyed by parameters, so every call overwrites the previous sample); its scores are run "
                     "as shipped.")
    if not lines:
        return ""
    return "**Closing note: where chanprune wins, ties and loses, as measured.**\n\n" + "\n\n".join(lines)


def protocol_table(a_docs: list[dict], b_docs: list[dict], plain: bool = False) -> str:
    """Best chanprune row against best Torch-Pruning row per model × target under the recovery protocol:
    (a) without a fine-tune (BatchNorm re-estimated; a tie within one binomial SE) and (b) after the one-epoch
    fine-tune of the rows (a) selected (a tie within the larger seed std). Empty without (a) rows.

    ``plain``: selection against selection, only chanprune rows that keep the surviving weights (see
    :func:`verdicts`)."""
    b_by = {Path(d["checkpoint"]).name: d for d in b_docs}
    lines = []
    for a in a_docs:
        b = b_by.get(Path(a["checkpoint"]).name)
        after = {v["target"]: v.get("ft") for v in verdicts(b, plain)} if b else {}
        for v in verdicts(a, plain):
            x, y = v.get("no_ft"), after.get(v["target"])
            cells = (["–"] * 3 if not x else [f"{x['ours']} {x['ours_acc']:.2f}", f"{x['tp']} {x['tp_acc']:.2f}",
                                               f"**{x['verdict']}** (±{x['se']:.2f})"])
            cells += (["–"] * 3 if not y else [f"{y['ours']} {y['ours_acc'][0]:.2f} ± {y['ours_acc'][1]:.2f}",
                                               f"{y['tp']} {y['tp_acc'][0]:.2f} ± {y['tp_acc'][1]:.2f}",
                                               f"**{y['verdict']}**"])
            lines.append(f"| {label(a)} | {a['dense']['accuracy']:.2f} | {100 * v['target']:.0f}% | "
                         + " | ".join(cells) + " |")
    if not lines:
        return ""
    return ("| model | dense | MACs kept | (a) best chanprune | (a) best Torch-Pruning | (a) verdict | "
            "(b) best chanprune | (b) best Torch-Pruning | (b) verdict |\n|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(lines))


def render_markdown(docs: list[dict], plots: list[Path] | None = None, root: Path = ROOT) -> str:
    """The README's Results/scoreboard section, from the full-run JSON (see make_readme.py)."""
    if not docs:
        return "_Not run yet: `python -m bench.scoreboard --supervise`._"
    rec = docs[0]["recipe"]
    ft = rec["finetune"]
    ver = docs[0]["versions"]
    ft_rows = [r for d in docs for r in d["rows"] if _ft(r)]
    gpu = sorted({r["finetune_device"] for r in ft_rows if r.get("finetune_device", "cpu") != "cpu"})
    where = (f"Fine-tunes ran on the CPU except those marked ◊ ({sum(r.get('finetune_device', 'cpu') != 'cpu' for r in ft_rows)} "
             f"of {len(ft_rows)} rows, on {', '.join(gpu)}); pruning, accuracy and latency always on the CPU"
             if gpu else "Everything, fine-tunes included, ran on the CPU (no GPU was used)")
    parts = [
        f"Protocol (the same for every method; from `{docs[0]['_file']}` and its siblings): "
        f"{rec['calibration_images']} calibration images (stratified seed-{rec['calibration_seed']} subset of the "
        f"training split) for every method, BatchNorm re-estimated on exactly those images before the no-fine-tune "
        f"accuracy; fine-tune: {ft['epochs']} epoch over {ft['train_images']:,} training images, lr {ft['lr']} "
        f"{ft['schedule']}, batch {ft['batch_size']}, SGD momentum {ft['momentum']}"
        f"{' Nesterov' if ft['nesterov'] else ''}, weight decay {ft['weight_decay']}, augmentation "
        f"{'on' if ft['augment'] else 'off'}, seeds {', '.join(map(str, rec['seeds']))} (mean ± sample std); accuracy on "
        f"a fixed stratified {rec['test_images']:,}-image test subset; MACs within {rec['tolerance']:.0%} of the "
        f"target (Torch-Pruning's `pruning_ratio` bisected; chanprune's own search) or, where the channel counts are "
        f"too coarse for that, the closest within {rec.get('accept_tolerance', 0.03):.0%} (marked †); CPU latency with "
        f"{rec['latency']['threads']} thread, dense and pruned interleaved, {rec['latency']['repeats']} rounds, medians. "
        f"*prune s* is the pruning step itself (Torch-Pruning: gradients + pruner + step at the found ratio; "
        f"in brackets with the bisection), chanprune: the whole `prune()` call, verification included. "
        f"Best fine-tuned accuracy in bold; *(tie)*: within the larger of the two standard deviations. "
        f"‡: the process aborted with a heap corruption while running this row (the one seen in oneDNN's convolution "
        f"backward, torch 2.13 CPU), so the row was re-run with its fine-tune under "
        f"`torch.backends.mkldnn.enabled = False`. "
        f"Versions: torch {ver['torch']}, torch-pruning {ver['torch_pruning']}, chanprune {ver['chanprune']}, "
        f"CPU {ver['cpu']}. {where}; latencies are from a shared 2-core machine and are noisy.",
        f"Compute: {sum(r.get('row_seconds') or 0 for d in docs for r in d['rows']) / 3600:.1f} hours over "
        f"{sum(len(d['rows']) for d in docs)} rows (the sum of their wall times, one CPU core per process). "
        f"Priority while compute was short, most informative rows first: every method at "
        f"every target on `{FULL_MODEL}` and, on the other models in the order "
        f"{', '.join(f'`{m[2]}`' for m in MODELS if m[2] != FULL_MODEL)}, the core methods at "
        f"{100 * ROUND_TO['target']:.0f}% of the MACs plus the round_to study; then the core methods at the other "
        f"targets; then the remaining methods ({', '.join(f'`{m}`' for m in EXTENDED)}). Rows that had not run when "
        f"this section was generated are listed at its end."]
    quick = RESULTS / "scoreboard_quick.json"
    if quick.exists():
        q = json.loads(quick.read_text())
        full = [i for i in q.get("invocations", []) if i.get("rows_computed") == len(q["rows"])]
        if full:
            parts.append(f"Smoke check: `python -m bench.scoreboard --quick` ({len(q['rows'])} rows: one model, one "
                         f"target, {len({r['method'] for r in q['rows']})} methods, {q['recipe']['test_images']} test "
                         f"images, {len(q['recipe']['seeds'])} fine-tune seed on {q['recipe']['finetune']['train_images']} "
                         f"images) took {full[-1]['wall_seconds']:.0f} s on one thread "
                         f"(`bench/results/scoreboard_quick.json`).")
    for plain in (False, True):
        vlines = ["| model | MACs kept | best chanprune (FT) | best Torch-Pruning (FT) | FT verdict | "
                  "best chanprune (no FT) | best Torch-Pruning (no FT) | no-FT verdict |", "|---|---|---|---|---|---|---|---|"]
        tally = {"ft": {"win": 0, "tie": 0, "loss": 0}, "no_ft": {"win": 0, "tie": 0, "loss": 0}}
        for doc in docs:
            for v in verdicts(doc, plain):
                cells = []
                for kind in ("ft", "no_ft"):
                    x = v.get(kind)
                    if not x:
                        cells += ["–", "–", "–"]
                        continue
                    tally[kind][x["verdict"]] += 1
                    if kind == "ft":
                        cells += [f"{x['ours']} {x['ours_acc'][0]:.2f} ± {x['ours_acc'][1]:.2f}",
                                  f"{x['tp']} {x['tp_acc'][0]:.2f} ± {x['tp_acc'][1]:.2f}", f"**{x['verdict']}**"]
                    else:
                        cells += [f"{x['ours']} {x['ours_acc']:.2f}", f"{x['tp']} {x['tp_acc']:.2f}",
                                  f"**{x['verdict']}** (±{x['se']:.1f})"]
                vlines.append(f"| {label(doc)} | {100 * v['target']:.0f}% | " + " | ".join(cells) + " |")
        title = ("**Where chanprune wins, ties and loses** (best chanprune row vs best Torch-Pruning row at each "
                 "target; fine-tuned: a tie when the difference is within the larger seed std; no fine-tune: a tie "
                 "when within one binomial standard error of the difference on the test subset, shown in brackets):"
                 if not plain else
                 "**The same without weight compensation**: only chanprune rows that keep the surviving weights as "
                 f"they are (no `recover='compensate'`, not {', '.join(COMPENSATING)}), i.e. channel *selection* against "
                 "channel selection:")
        parts.append(title + "\n\n" + "\n".join(vlines) + "\n\n"
                     f"Tally, fine-tuned: {_tally(tally['ft'])}; no fine-tune: {_tally(tally['no_ft'])}.")
    for doc in docs:
        parts.append(model_tables(doc))
    parts.append("**Hardware-aware channel counts** (`round_to`, at "
                 f"{100 * (docs[0].get('round_to_study') or ROUND_TO)['target']:.0f}% of the MACs, no fine-tune): "
                 "does rounding every kept channel count to a multiple bring the measured speed-up closer to the MAC "
                 "reduction? A ratio of 1.00 means the speed-up equals the MAC reduction.\n\n" + round_to_table(docs))
    if plots:
        parts.append("\n".join(f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in plots))
    notes = closing_note(docs)
    if notes:
        parts.append(notes)
    gone = missing(docs)
    if gone:
        parts.append("**Not measured yet** (the run is resumable; these rows are what it still lacks):\n\n"
                     + "\n".join(f"- {g}" for g in gone))
    return "\n\n".join(parts)
