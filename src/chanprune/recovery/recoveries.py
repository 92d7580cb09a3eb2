"""The recoveries ``recover=`` names: none, BatchNorm re-estimation, the closed-form consumer refit, both."""
from __future__ import annotations

from ..engine import recalibrate_bn
from .compensation import apply_compensation
from .registry import RecoveryContext, register_recovery


@register_recovery("none", summary="")
def no_recovery(ctx: RecoveryContext) -> dict:
    return {}


@register_recovery("bn", summary="BN re-estimated",
                   needs_training_data="re-estimates BatchNorm statistics from training images")
def bn_recalibration(ctx: RecoveryContext) -> dict:
    recalibrate_bn(ctx.pruned, ctx.data, num_batches=ctx.config.recover_batches, batch_size=ctx.config.batch_size)
    return {}


@register_recovery("compensate", summary="consumers refit", refits_consumers=True)
def compensation(ctx: RecoveryContext) -> dict:
    return {"compensation": apply_compensation(ctx.original, ctx.pruned, ctx.graph, ctx.plan, ctx.batches)}


@register_recovery("compensate+bn", summary="consumers refit, BN re-estimated", refits_consumers=True,
                   needs_training_data="re-estimates BatchNorm statistics from training images")
def compensation_then_bn(ctx: RecoveryContext) -> dict:
    notes = compensation(ctx)
    bn_recalibration(ctx)
    return notes
