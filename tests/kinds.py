"""Every kind of model chanprune produces, built tiny: the parametrisation shared by the export and report tests.

A new compression kind (partitioned, UCP, ...) joins every export round trip and report check by adding one
entry to ``KINDS``: a function ``(zoo name) -> compressed model``.
"""
from __future__ import annotations

import chanprune
from chanprune.lowrank import DecomposeConfig

from tests.conftest import calib, tiny


def pruned(name: str):
    """Channel-pruned to about half the MACs (L1, uniform), verified surgery."""
    return chanprune.prune(tiny(name), chanprune.L1Config(target_macs=0.5), data=calib(16),
                           example_inputs=calib(1)[0])


def decomposed(name: str):
    """Every conv with a MAC saving factorised by SVD (channel scheme, 50 % energy: low ranks)."""
    return chanprune.decompose(tiny(name), DecomposeConfig(scheme="channel", threshold=0.5), example_inputs=calib(1)[0])


KINDS = {"pruned": pruned, "decomposed": decomposed}
ZOO_FAMILIES = ("resnet20", "vgg16_bn", "mobilenetv2", "densenet40", "lenet5")
