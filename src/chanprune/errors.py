"""Errors meant for people: one sentence that names the cause and what to do.

Every error chanprune raises on purpose is a :class:`ChanpruneError`; the CLI prints its message
(no stack trace) and exits with status 2.
"""


class ChanpruneError(Exception):
    """Base class. The message is a full sentence: the cause, then the fix."""


class ConfigError(ChanpruneError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DataError(ChanpruneError):
    """A data set is missing, corrupt, or in an unexpected format."""


class ModelError(ChanpruneError):
    """An unknown model name, or a model chanprune cannot trace or rebuild."""


class LoadError(ChanpruneError):
    """A saved model is truncated, mismatched or tampered with."""


class PruneError(ChanpruneError):
    """A pruning request cannot be carried out (target unreachable, empty group, ...)."""


class OverPruneError(PruneError):
    """The target asks for more compression than the effective-filter analysis allows."""


class AnalysisError(ChanpruneError):
    """The effective-filter analysis cannot be computed as asked (too few samples, NaN gradients, ...)."""


class VerificationError(PruneError):
    """A pruned model disagrees with the original model masked at the removed channels."""


class ExportError(ChanpruneError):
    """A model does not export to ONNX, or the exported graph disagrees with PyTorch."""
