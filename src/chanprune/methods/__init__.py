"""Pruning methods: each a short planner composing the shared primitives in its paper's order."""
from . import cap, cp, hierarchical  # noqa: F401  (registration)
