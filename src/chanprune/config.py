"""One dataclass config per method; each validates itself on creation (torchao-style).

``target_macs=0.5`` means *keep* 50 % of the MACs. ``ratio=0.3`` instead removes 30 % of every group's
channels (uniform) or 30 % of all channels (global). With neither, ``target_macs=0.5``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from .errors import ConfigError

_RECOVERIES = ("none", "bn", "compensate", "compensate+bn")  # compensate+bn: the refit, then BN re-estimation


def _fraction(name: str, value, *, closed_low: bool, closed_high: bool) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{name} must be a number, not {value!r}.")
    low_ok = value >= 0 if closed_low else value > 0
    high_ok = value <= 1 if closed_high else value < 1
    if not (low_ok and high_ok):
        lo = "[0" if closed_low else "(0"
        hi = "1]" if closed_high else "1)"
        raise ConfigError(f"{name} must lie in {lo}, {hi}, got {value}; e.g. {name}=0.5.")


@dataclass
class PruneConfig:
    """Settings every pruning method shares."""

    method: ClassVar[str] = ""
    allocations: ClassVar[tuple[str, ...]] = ("uniform", "global")
    target_macs: float | None = None
    target_params: float | None = None
    ratio: float | None = None
    allocation: str = "uniform"
    round_to: int | None = None
    ignored_layers: tuple[str, ...] = ()
    calibration: int = 256
    batch_size: int = 64
    seed: int = 0
    recover: str = "none"
    recover_batches: int = 20
    verify: bool = True
    on_mismatch: str = "raise"  # "exclude": drop groups whose verified surgery fails, with a warning
    tolerance: float = 0.01

    def __post_init__(self):
        _fraction("ratio", self.ratio, closed_low=True, closed_high=False)
        _fraction("target_macs", self.target_macs, closed_low=False, closed_high=True)
        _fraction("target_params", self.target_params, closed_low=False, closed_high=True)
        given = [n for n in ("target_macs", "target_params", "ratio") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"give only one of target_macs, target_params and ratio (got {', '.join(given)}).")
        if not given:
            self.target_macs = 0.5
        if self.allocation not in self.allocations:
            raise ConfigError(f"allocation must be one of {', '.join(self.allocations)}, not {self.allocation!r}.")
        if self.recover not in _RECOVERIES:
            raise ConfigError(f"recover must be one of {', '.join(_RECOVERIES)}, not {self.recover!r}.")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigError(f"round_to must be a positive integer, not {self.round_to!r}.")
        if not isinstance(self.calibration, int) or self.calibration < 1:
            raise ConfigError(f"calibration must be a positive number of images, not {self.calibration!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, not {self.batch_size!r}.")
        if self.on_mismatch not in ("raise", "exclude"):
            raise ConfigError(f"on_mismatch must be 'raise' or 'exclude', not {self.on_mismatch!r}.")
        if not (0 < self.tolerance < 0.5):
            raise ConfigError(f"tolerance must lie in (0, 0.5), not {self.tolerance!r}.")
        self.ignored_layers = tuple(self.ignored_layers)

    @property
    def target(self) -> tuple[str, float] | None:
        """("macs"|"params", fraction kept), or None when a plain ratio was given."""
        if self.target_macs is not None:
            return "macs", float(self.target_macs)
        if self.target_params is not None:
            return "params", float(self.target_params)
        return None

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}


@dataclass
class CriterionConfig(PruneConfig):
    """Score channels with a criterion, remove the lowest under the chosen allocation."""

    method: ClassVar[str] = "criterion"
    generic: ClassVar[bool] = True  # not listed by name in chanprune.methods.METHODS: the criterion names it
    criterion: str = "l1"

    def __post_init__(self):
        super().__post_init__()
        from .criteria import CRITERIA  # late import: criteria import the graph

        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(sorted(CRITERIA))}.")


def _criterion_config(name: str, criterion: str, doc: str):
    cls = dataclass(type(name, (CriterionConfig,), {"__annotations__": {"criterion": str}, "criterion": criterion, "__doc__": doc}))
    cls.method = criterion
    return cls


L1Config = _criterion_config("L1Config", "l1", "Remove the filters of smallest L1 norm (Li et al., arXiv 1608.08710).")
L2Config = _criterion_config("L2Config", "l2", "Remove the filters of smallest L2 norm.")
BNScaleConfig = _criterion_config("BNScaleConfig", "bn_scale", "Remove the channels of smallest |BN γ| (Liu et al., arXiv 1708.06519).")
TaylorConfig = _criterion_config("TaylorConfig", "taylor", "First-order Taylor score |mean gate gradient| (Molchanov et al., arXiv 1611.06440).")
FPGMConfig = _criterion_config("FPGMConfig", "fpgm", "Remove filters nearest the geometric median (He et al., arXiv 1811.00250).")
HRankConfig = _criterion_config("HRankConfig", "hrank", "Remove channels whose feature maps have the lowest mean rank (Lin et al., arXiv 2002.10179).")
RandomConfig = _criterion_config("RandomConfig", "random", "Remove a seeded random subset (a control).")
