"""The recoveries ``recover=`` names: none, BatchNorm re-estimation, the closed-form consumer refit, both."""
from __future__ import annotations

from ..engine import recalibrate_bn
from .compensation import apply_compensation
from .registry import RecoveryContext, register_recovery


@register_recovery("none", summary="")
def no_recovery(ctx: RecoveryContext) -> dict:
    return {}


_SHUFFLED = "re-estimates BatchNorm statistics from shuffled training batches (recover_batches=N)"


@register_recovery("bn", summary="BN re-estimated", needs_training_data=_SHUFFLED)
def bn_recalibration(ctx: RecoveryContext) -> dict:
    """BatchNorm statistics re-estimated, exactly (cumulative average), from the calibration images by default,
    or from ``recover_batches`` shuffled training batches; the record says which."""
    cfg = ctx.config
    if cfg.recover_batches is None:
        seen = recalibrate_bn(ctx.pruned, ctx.batches, num_batches=len(ctx.batches))
        return {"bn_recalibration": {"images": seen, "source": "the calibration images"}}
    seen = recalibrate_bn(ctx.pruned, ctx.data, num_batches=cfg.recover_batches, batch_size=cfg.batch_size, seed=cfg.seed)
    return {"bn_recalibration": {"images": seen, "source": f"{cfg.recover_batches} shuffled training batches of "
                                                          f"{cfg.batch_size}, seed {cfg.seed}"}}


@register_recovery("compensate", summary="consumers refit", refits_consumers=True)
def compensation(ctx: RecoveryContext) -> dict:
    return {"compensation": apply_compensation(ctx.original, ctx.pruned, ctx.graph, ctx.plan, ctx.batches)}


@register_recovery("compensate+bn", summary="consumers refit, BN re-estimated", refits_consumers=True,
                   needs_training_data=_SHUFFLED)
def compensation_then_bn(ctx: RecoveryContext) -> dict:
    return {**compensation(ctx), **bn_recalibration(ctx)}
