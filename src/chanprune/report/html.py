"""One self-contained HTML page per run: what was removed, why it was safe, what it bought, and how it was checked.

``render_report(path, model=compressed, dense=original, data=bundle, record=cli_record)`` writes the page;
``chanprune report RUN_DIR`` does it for a saved run (``RUN_DIR/model`` + ``RUN_DIR/record.json``; the dense
model from ``--baseline`` or the record's ``source``). Sections: summary (accuracy, MACs, params), the model
before/after (per-layer widths or ranks, kept vs removed), the effective-filter analysis of the dense model
(singular-value spectra, maximum rate per group and for the network, the rate-vs-threshold curve), latency
(PyTorch eager and onnxruntime, dense and compressed interleaved, speed-up next to the MAC reduction), the
verification (the surgery's check against the masked original, and the ONNX export checked in onnxruntime),
and the config and versions. Every image is a PNG inlined as a ``data:`` URI: the page needs no network and
no other file. A section whose inputs are missing says what to pass instead of being left out.
"""
from __future__ import annotations

import base64
import html
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import write_text_atomic
from . import plots

__all__ = ["render_report", "SECTIONS"]

SECTIONS = ("Summary", "Model before / after", "Effective-filter analysis", "Latency", "Verification",
            "Config and versions")
THRESHOLDS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1050px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px} h2{font-size:1.2em;margin:0 0 10px;border-bottom:2px solid #e3e6ea;padding-bottom:4px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:16px 20px;margin:16px 0}
table{border-collapse:collapse;font-size:0.9em;margin:6px 0} td,th{padding:4px 10px;border-bottom:1px solid #eef0f2;text-align:right}
td:first-child,th:first-child{text-align:left} th{background:#f1f3f5}
img{max-width:100%;display:block;margin:8px 0} .muted{color:#5f6b7a;font-size:0.9em} .ok{color:#1a7f37;font-weight:600}
.bad{color:#cf222e;font-weight:600} pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:0.8em;max-height:420px}
"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def _m(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:.2f}M"


def _example(model: nn.Module, data: Any, record: dict) -> torch.Tensor | None:
    if data is not None and hasattr(data, "example_inputs"):
        return data.example_inputs(1)
    shape = record.get("input_shape")
    return torch.zeros(1, *shape) if shape else None


# ----------------------------------------------------------------------------------------------------- sections
def _summary(model, dense, data, record, example, facts) -> str:
    from ..measurement import count_macs_params

    macs, params = count_macs_params(model, example) if example is not None else (None, None)
    dmacs, dparams = count_macs_params(dense, example) if dense is not None and example is not None else (None, None)
    facts.update(macs=macs, dense_macs=dmacs)
    acc = record.get("pruned", {}).get("accuracy", record.get("accuracy"))
    dacc = record.get("dense", {}).get("accuracy")
    if isinstance(acc, dict):  # the low-rank commands record a dict of accuracies
        rows = [(k, "", f"{v:.2f}%") for k, v in acc.items() if v is not None]
        acc = None
    else:
        rows = []
    if acc is None and not rows and data is not None:
        from ..engine import evaluate

        limit = record.get("test_images") or 1000
        acc = evaluate(model, data, limit=limit)["accuracy"]
        dacc = evaluate(dense, data, limit=limit)["accuracy"] if dense is not None else None
    if acc is not None:
        rows.append(("accuracy", "–" if dacc is None else f"{dacc:.2f}%", f"{acc:.2f}%"))
    rows.append(("MACs", _m(dmacs), _m(macs) + (f" ({macs / dmacs:.1%})" if macs and dmacs else "")))
    rows.append(("params", _m(dparams), _m(params) + (f" ({params / dparams:.1%})" if params and dparams else "")))
    what = record.get("label") or record.get("method") or facts["history"].get("method", "compressed")
    out = _p(f"{what} on {record.get('data', getattr(data, 'name', '?'))}: before (dense) and after.")
    out += _table(("", "before", "after"), rows)
    if record.get("test_images"):
        out += _p(f"Accuracy on {record['test_images']:,} test images.", "muted")
    return out


def _layer_widths(model: nn.Module, dense: nn.Module | None, history: dict) -> tuple[list[str], list[int], list[int], str]:
    """(names, before, after, unit): channel groups for a pruned model, ranks for low-rank layers, else per-layer widths."""
    groups = history.get("groups")
    if groups and all("kept" in g for g in groups):
        return [g["name"] for g in groups], [g["channels"] for g in groups], [g["kept"] for g in groups], "channels"
    from ..lowrank import LowRank

    lowrank = [(n, m) for n, m in model.named_modules() if isinstance(m, LowRank)]
    if lowrank:
        full = {layer["name"]: layer["full_rank"] for layer in history.get("layers", []) if "full_rank" in layer}
        return ([n for n, _ in lowrank], [full.get(n, m.rank) for n, m in lowrank], [m.rank for _, m in lowrank],
                "rank (inner width of the factorised layer)")
    names, before, after = [], [], []
    if dense is not None:
        mine = dict(model.named_modules())
        for name, m in dense.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name in mine:
                width = _out_width(m)
                now = _out_width(mine[name])
                if width is not None and now is not None:
                    names.append(name), before.append(width), after.append(min(width, now))
    return names, before, after, "output channels" if names else ""


def _params_of(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _out_width(m: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    return None


def _model_section(model, dense, history) -> str:
    names, before, after, unit = _layer_widths(model, dense, history)
    if not names:
        return _p("No per-layer widths to compare: pass the dense model (--baseline) to compare the layers by name.")
    out = _img(plots.widths(names, before, after, unit), f"{unit} per layer before and after")
    rows = [(n, b, a, f"{1 - a / b:.0%}" if b else "–") for n, b, a in zip(names, before, after)]
    out += f"<details><summary>Table ({len(rows)} layers)</summary>{_table(('layer', 'before', 'after', 'removed'), rows)}</details>"
    if dense is not None:
        out += _p(f"Parameters: {_params_of(dense):,} → {_params_of(model):,}.", "muted")
    return out


def _analysis_section(dense, data, samples: int) -> str:
    if dense is None or data is None:
        return _p("Not computed: the analysis runs on the dense model with calibration images; pass the dense model "
                  "(--baseline, or a record with its source) and the data set.")
    from ..analysis import AnalysisConfig, analyze
    from ..errors import ChanpruneError

    try:
        result = analyze(dense.eval(), data, AnalysisConfig(calibration=samples))
    except ChanpruneError as exc:
        return _p(f"The effective-filter analysis could not be computed: {exc}")
    cfg = result.config
    curve = result.curve(THRESHOLDS, rule="energy")
    out = _p(f"{cfg.reading} reading, {cfg.rule} rule at {cfg.threshold}, N = {result.samples} calibration images: "
             f"about {result.max_compression_macs:.1%} of the MACs ({result.max_compression_params:.1%} of the parameters) "
             "can be removed before the effective filters are cut into.")
    out += _img(plots.spectra([g.eigenvalues for g in result.groups], result.matrix), "singular-value spectra")
    out += _img(plots.max_rates([g.name for g in result.groups], [g.max_rate for g in result.groups],
                                result.max_compression_macs), "maximum rate per group")
    out += _img(plots.rate_curve([r["threshold"] for r in curve], [r["max_compression_macs"] for r in curve],
                                 [r["max_compression_params"] for r in curve], cfg.threshold if cfg.rule == "energy" else None),
                "maximum compression vs threshold")
    rows = [(g.name, g.channels, g.effective, f"{g.max_rate:.0%}") for g in result.groups]
    out += f"<details><summary>Table ({len(rows)} groups)</summary>{_table(('group', 'channels', 'effective', 'max rate'), rows)}</details>"
    return out


def _latency_section(model, dense, example, facts, repeats: int, threads: int) -> str:
    if dense is None or example is None:
        return _p("Not measured: pass the dense model (--baseline) so both can be timed interleaved.")
    from ..errors import ExportError
    from ..measurement import latency

    shape = tuple(example.shape[1:])
    try:
        lat = latency({"dense": dense, "compressed": model}, shape, batch_sizes=(1, 32), repeats=repeats, warmup=2,
                      threads=threads, backend=("eager", "onnxruntime"))
        backends = ("eager", "onnxruntime")
    except ExportError as exc:
        lat = {"eager": latency({"dense": dense, "compressed": model}, shape, batch_sizes=(1, 32), repeats=repeats,
                                warmup=2, threads=threads)}
        backends = ("eager",)
        facts["latency_note"] = str(exc)
    mac_reduction = facts["dense_macs"] / facts["macs"] if facts.get("macs") and facts.get("dense_macs") else 1.0
    rows, labels, medians, p10s = [], [], [], []
    for b in backends:
        for bs in (1, 32):
            d, c = lat[b]["dense"][bs], lat[b]["compressed"][bs]
            x, x10 = lat[b]["speedup"]["compressed"][bs], d["p10_ms"] / c["p10_ms"]
            labels.append(f"{b}\nbatch {bs}")
            medians.append(x), p10s.append(x10)
            rows.append((b, bs, f"{d['median_ms']:.2f} ({d['p10_ms']:.2f}–{d['p90_ms']:.2f})",
                         f"{c['median_ms']:.2f} ({c['p10_ms']:.2f}–{c['p90_ms']:.2f})", f"{x:.2f}× / {x10:.2f}×",
                         f"{x / mac_reduction:.2f} / {x10 / mac_reduction:.2f}"))
    out = _img(plots.speedups(labels, medians, p10s, mac_reduction), "speed-up vs MAC reduction")
    out += _table(("runtime", "batch", "dense ms, median (p10–p90)", "compressed ms, median (p10–p90)",
                   "speed-up, medians / p10s", "speed-up / MAC reduction"), rows)
    out += _p(f"CPU, {threads} thread(s), {repeats} interleaved rounds (dense and compressed alternate, the order rotates); "
              f"MAC reduction {mac_reduction:.2f}×. Timings on a shared machine are noisy: read the ratios.", "muted")
    if facts.get("latency_note"):
        out += _p(f"onnxruntime not timed: {facts['latency_note']}", "muted")
    return out


def _verification_section(model, history, example, data) -> str:
    out = ""
    if "verified" in history:
        ok = history["verified"]
        err = history.get("verify_max_rel_error")
        out += (f'<p>Surgery check against the original model with the removed channels masked: '
                f'<span class="{"ok" if ok else "bad"}">{"passed" if ok else "not verified"}</span>'
                + (f", max relative error {err:.2e}" if isinstance(err, (int, float)) else "") + ".</p>")
        if history.get("excluded_groups"):
            out += _p(f"Groups excluded by the check: {', '.join(e.get('name', '?') for e in history['excluded_groups'])}.")
    elif history.get("method"):
        out += _p(f"{history['method']}: no masked-original check applies to this kind of model; the ONNX check below "
                  "compares the saved model with its exported graph.")
    if example is None:
        return out + _p("ONNX export not checked: no input shape is known (pass the data set).")
    from ..errors import ExportError
    from ..onnx_export import export

    with tempfile.TemporaryDirectory(prefix="chanprune-report-") as folder:
        try:
            res = export(model, Path(folder) / "model.onnx", example, data=data, real_images=64)
        except ExportError as exc:
            return out + f'<p>ONNX export: <span class="bad">refused</span> — {html.escape(str(exc))}</p>'
    real = f"; real test images ({res.real_images}): {res.max_abs_error_real:.2e}" if res.max_abs_error_real is not None else ""
    out += (f'<p>ONNX export ({res.exporter} exporter, opset {res.opset}, dynamic batch) run in onnxruntime: '
            f'<span class="ok">matches PyTorch</span> — max |onnx − torch| on random inputs (batches '
            f'{", ".join(map(str, res.checked_batches))}): {res.max_abs_error:.2e}{real}; tolerance {res.tolerance:.2e} '
            '(1e-4 × max(1, max |output|)).</p>')
    return out


def _config_section(record: dict, history: dict) -> str:
    from .. import __version__

    config = record.get("config") or history.get("config") or {}
    versions = record.get("versions") or {}
    if not versions:
        import onnxruntime
        import torch_pruning

        versions = {"chanprune": __version__, "torch": torch.__version__,
                    "torch_pruning": getattr(torch_pruning, "__version__", "?"), "onnxruntime": onnxruntime.__version__,
                    "python": platform.python_version(), "machine": platform.machine()}
    out = _table(("package", "version"), sorted(versions.items()))
    out += "<h3>Config</h3><pre>" + html.escape(json.dumps(config, indent=1, default=str)) + "</pre>"
    keep = {k: v for k, v in history.items() if k not in ("config", "groups", "layers")}
    out += "<details><summary>Full record of the compression step</summary><pre>" + html.escape(
        json.dumps(keep, indent=1, default=str)) + "</pre></details>"
    return out


# --------------------------------------------------------------------------------------------------------- page
def render_report(path: str | Path, *, model: nn.Module, dense: nn.Module | None = None, data: Any = None,
                  record: dict | None = None, title: str | None = None, analysis_samples: int = 256,
                  latency_repeats: int = 15, threads: int = 1) -> Path:
    """Write the HTML report of ``model`` (compressed) against ``dense`` to ``path`` (atomically); returns the path.

    ``record``: the command's JSON record (accuracy, label, config, versions), optional — without it accuracy is
    measured on ``data`` (its first 1,000 stratified test images). Latency: ``latency_repeats`` interleaved rounds at
    ``threads`` thread(s). The models are not changed.
    """
    t0 = time.perf_counter()
    record = dict(record or {})
    history = dict((getattr(model, "chanprune_history", None) or [{}])[-1])
    model = model.eval()
    dense = dense.eval() if dense is not None else None
    example = _example(model, data, record)
    facts: dict[str, Any] = {"history": history}
    bodies = {
        "Summary": _summary(model, dense, data, record, example, facts),
        "Model before / after": _model_section(model, dense, history),
        "Effective-filter analysis": _analysis_section(dense, data, analysis_samples),
        "Latency": _latency_section(model, dense, example, facts, latency_repeats, threads),
        "Verification": _verification_section(model, history, example, data),
        "Config and versions": _config_section(record, history),
    }
    name = title or f"chanprune report: {record.get('label') or history.get('method') or 'model'}"
    sections = "".join(f'<section id="s{i}"><h2>{html.escape(k)}</h2>{bodies[k]}</section>' for i, k in enumerate(SECTIONS))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(name)}</title>'
            f"<style>{_CSS}</style></head><body><main><h1>{html.escape(name)}</h1>"
            f'<p class="muted">Written {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} in '
            f"{time.perf_counter() - t0:.0f} s; self-contained (images inlined, no network).</p>{sections}</main></body></html>")
    path = Path(path)
    write_text_atomic(path, page)
    return path
