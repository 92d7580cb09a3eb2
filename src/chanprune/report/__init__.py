"""Reports: the HTML report of a compressed model (:mod:`.html`) and the figures it and the analysis draw
(:mod:`.plots`). The package init only names them, so the analysis can draw a figure without loading the
report, which itself runs the analysis."""
from chanprune._lazy import lazy_exports as _lazy_exports

_EXPORTS = {"render_report": "chanprune.report.html", "SECTIONS": "chanprune.report.html"}

__all__, __getattr__, __dir__ = _lazy_exports("chanprune.report", _EXPORTS)
