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


# a run of two convolutions each family can cut into P = 2 blocks (LeNet-5: its Linear layers, the default)
PARTITION_LAYERS = {"resnet20": ("layer1.0.conv1", "layer1.0.conv2"), "vgg16_bn": ("features.3", "features.7"),
                    "mobilenetv2": ("features.1.conv.3", "features.2.conv.0"),
                    "densenet40": ("features.0.0.conv1", "features.0.0.conv2"), "lenet5": ()}


def partitioned(name: str):
    """A run of layers cut into P = 2 independent blocks (partition pruning, block-diagonal)."""
    from chanprune.methods.partition import PartitionConfig, partition

    return partition(tiny(name), PartitionConfig(parts=2, layers=PARTITION_LAYERS[name]), data=calib(16),
                     example_inputs=calib(1)[0])


KINDS = {"pruned": pruned, "decomposed": decomposed, "partitioned": partitioned}
ZOO_FAMILIES = ("resnet20", "vgg16_bn", "mobilenetv2", "densenet40", "lenet5")
