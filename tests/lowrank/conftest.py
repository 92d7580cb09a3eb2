"""Fixtures for the low-rank tests."""
import warnings

import pytest
import torch


@pytest.fixture
def no_mkldnn():
    """Training on the digits loader: its batches have strides (64, 1, 8, 1) (a 1-channel tensor that also looks
    channels-last), and with them oneDNN's conv backward corrupts the heap on small CIFAR ResNets (torch 2.13 CPU,
    reproduced outside chanprune.lowrank with a plain SGD loop). The plain CPU kernels are unaffected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TF32 acceleration on top of oneDNN ..." on every toggle
        with torch.backends.mkldnn.flags(enabled=False):
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
