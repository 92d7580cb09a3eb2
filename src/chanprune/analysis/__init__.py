"""Effective-filter analysis (arXiv 2206.03596): gradient matrices, spectra, effective ranks, maximum rates."""
from .effective import AnalysisConfig, AnalysisResult, GroupAnalysis, analyze, effective_rank, spectrum  # noqa: F401
from .gradients import GramStats, collect_gate_gradients  # noqa: F401
from .readings import READINGS, collect  # noqa: F401
