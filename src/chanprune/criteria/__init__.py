"""Channel-importance criteria, all with one signature: ``score(group, ctx) -> Tensor[channels]``.

Higher scores mean more important; the lowest are removed. Every score is computed per group on root
indices (see :mod:`chanprune.graph`), averaged over the group's members where a group has several.

| name     | score of channel f                                              | reference        |
|----------|-----------------------------------------------------------------|------------------|
| l1, l2   | ‖W_f‖₁ / ‖W_f‖₂ of the producing filters                        | arXiv 1608.08710 |
| bn_scale | |γ_f| of the group's BatchNorms (L1 where a group has none)     | arXiv 1708.06519 |
| taylor   | |(1/N) Σ_i G[i, f]|, G the gate-gradient matrix                  | arXiv 1611.06440 |
| fpgm     | Σ_f' ‖W_f − W_f'‖₂ (filters near the geometric median go first) | arXiv 1811.00250 |
| hrank    | mean rank of the feature map A_f(x) over calibration images     | arXiv 2002.10179 |
| random   | a seeded random permutation                                     |                  |
| mseb     | Σ over producers of the mean MSEB excitation I_f (UCP)          | arXiv 2010.01251 |
"""
from __future__ import annotations

from .base import CONFIGS, CRITERIA, CriterionConfig, ScoreContext, get_criterion, register_criterion  # noqa: F401
from . import magnitude, data_driven, attention  # noqa: F401  (registration)

# the config classes the registrations created: chanprune.criteria.L1Config, ...
globals().update({cls.__name__: cls for cls in CONFIGS.values()})

__all__ = ["CONFIGS", "CRITERIA", "CriterionConfig", "ScoreContext", "get_criterion", "register_criterion",
           *sorted(cls.__name__ for cls in CONFIGS.values())]
