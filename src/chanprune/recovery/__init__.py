"""Accuracy recovery without retraining: closed-form consumer refits (methods.md §3 step ii, §4).

One refit primitive in two forms:

* :func:`compensate` — from float64 input moments (CaP): W′ = WΣ̃_{C,S}Σ̃_{SS}⁻¹, b′ = b + Wμ − W′μ_S;
* :func:`lstsq_refit` — from sampled rows (CP): least squares with an intercept.

On the same rows they agree. :func:`apply_compensation` refits every consumer of a pruned model from
the original model's statistics; it is the ``recover="compensate"`` step of every method.
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
from .stats import Moments, consumer_moments, consumer_rows, patches  # noqa: F401

__all__ = [
    "Compensation", "Moments", "apply_compensation", "closed_form_loss", "compensate", "compensate_model",
    "consumer_edits", "consumer_moments", "consumer_rows", "expected_loss", "lstsq_refit",
    "patches", "RECOVERIES", "Recovery", "RecoveryContext", "get_recovery", "register_recovery",
]
