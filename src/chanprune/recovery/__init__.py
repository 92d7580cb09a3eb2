"""Accuracy recovery without retraining, and the primitives the refitting methods share.

* consumer statistics (:mod:`.stats`): im2col views, float64 moments, sampled rows, all gathered by one
  stop-early forward pass (:class:`Replay`, which can also start at a cached cut);
* channel selection by LASSO (:mod:`.lasso`, CP's step i);
* one refit in two forms: :func:`compensate` from moments (CaP), W′ = WΣ̃_{C,S}Σ̃_{SS}⁻¹,
  b′ = b + Wμ − W′μ_S, and :func:`lstsq_refit` from sampled rows (CP), least squares with an intercept —
  on the same rows they agree; :func:`apply_compensation` refits every consumer of a pruned model;
* the ``recover=`` registry (:mod:`.registry`, :mod:`.recoveries`): none, bn, compensate, compensate+bn.
"""
from .compensation import (  # noqa: F401
    Compensation,
    apply_compensation,
    closed_form_loss,
    compensate,
    compensate_model,
    consumer_edits,
    expected_loss,
)
from .lstsq import lstsq_refit  # noqa: F401
from .registry import RECOVERIES, Recovery, RecoveryContext, get_recovery, register_recovery  # noqa: F401
from . import recoveries  # noqa: F401  (registration)
from .lasso import LassoStats, Selection, lasso_select  # noqa: F401
from .stats import Moments, Replay, call_order, consumer_moments, consumer_rows, patches  # noqa: F401

__all__ = [
    "Compensation", "Moments", "apply_compensation", "closed_form_loss", "compensate", "compensate_model",
    "consumer_edits", "consumer_moments", "consumer_rows", "expected_loss", "lstsq_refit",
    "patches", "LassoStats", "Selection", "lasso_select", "Replay", "call_order", "RECOVERIES", "Recovery", "RecoveryContext", "get_recovery", "register_recovery",
]
