"""UCP (Chang et al., arXiv 2010.01251): MSEB attention, stage-uniform pruning, retraining (docs/ucp.md).

``chanprune.ucp`` gathers what a user needs: the MSEB block and its insertion, scoring and removal
(:mod:`.mseb`), and the method's config and entry point (:mod:`chanprune.methods.ucp`).
"""
from __future__ import annotations

from chanprune._lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "MSEB": "chanprune.ucp.mseb",
    "ConvMSEB": "chanprune.ucp.mseb",
    "insert_mseb": "chanprune.ucp.mseb",
    "mseb_scores": "chanprune.ucp.mseb",
    "strip_mseb": "chanprune.ucp.mseb",
    "UCPConfig": "chanprune.methods.ucp",
    "ucp": "chanprune.methods.ucp",
}

__all__, __getattr__, __dir__ = _lazy_exports("chanprune.ucp", _EXPORTS)
