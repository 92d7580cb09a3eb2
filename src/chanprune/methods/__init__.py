"""Pruning methods: each a short module composing the shared primitives in its paper's order.

Importing this package registers every method (:mod:`.registry`); a new method is one module here
plus its line below.
"""
from .registry import METHODS, handler_for, register_method  # noqa: F401
from .pipeline import PruneSession, register_planner, run_pipeline  # noqa: F401
from . import criterion, hierarchical, cp, cap, cacp, ucp, partition  # noqa: F401  (registration)
