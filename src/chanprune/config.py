"""One dataclass config per method; each validates itself on creation (torchao-style).

``target_macs=0.5`` means *keep* 50 % of the MACs. ``ratio=0.3`` instead removes 30 % of every group's
channels (uniform) or 30 % of all channels (global). With neither, ``target_macs=0.5``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from .errors import ConfigError


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
    refits_consumers: ClassVar[bool] = False  # the method refits the consumers of pruned channels itself
    target_macs: float | None = None
    target_params: float | None = None
    ratio: float | None = None
    allocation: str = "uniform"
    round_to: int | str | None = None  # "auto": latency-aware widths (chanprune.rounding)
    ignored_layers: tuple[str, ...] = ()
    calibration: int | tuple[int, ...] = 256  # a number of images, or indices into the training split
    batch_size: int = 64
    seed: int = 0
    recover: str = "none"
    recover_batches: int | None = None  # BN re-estimation: None = the calibration images, N = N shuffled training batches
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
        from .recovery import get_recovery  # late: the recoveries import torch and the engine

        if get_recovery(self.recover).refits_consumers and self.refits_consumers:
            raise ConfigError(f"{type(self).__name__} refits the consumers of the pruned channels itself, so "
                              f"recover={self.recover!r} would overwrite that refit; use recover='none' or recover='bn'.")
        if self.round_to is not None and self.round_to != "auto" and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigError(f"round_to must be a positive integer or 'auto' (widths from a measured latency table), "
                              f"not {self.round_to!r}.")
        if isinstance(self.calibration, (list, tuple, range)) or hasattr(self.calibration, "tolist"):
            indices = self.calibration.tolist() if hasattr(self.calibration, "tolist") else list(self.calibration)
            if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
                raise ConfigError("calibration indices must be a non-empty list of non-negative integers "
                                  "(training-split indices), or calibration=N for N images.")
            self.calibration = tuple(indices)
        elif not isinstance(self.calibration, int) or isinstance(self.calibration, bool) or self.calibration < 1:
            raise ConfigError(f"calibration must be a positive number of images or a list of image indices, "
                              f"not {self.calibration!r}.")
        if self.recover_batches is not None and (not isinstance(self.recover_batches, int) or self.recover_batches < 1):
            raise ConfigError(f"recover_batches must be None (the calibration images) or a positive number of batches, "
                              f"not {self.recover_batches!r}.")
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
