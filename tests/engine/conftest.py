"""Fixtures for the engine tests: sklearn's 8x8 digits and a tiny conv net.

``digits`` prefers ``chanprune.data.load_data("digits")``; while that module is not available it
falls back to a minimal stand-in with the same loader contract (re-iterable, ``len`` = batches,
``iter_from(k)``, deterministic in (seed, epoch)).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn


class _Split:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)


class StandInLoader:
    def __init__(self, split: _Split, batch_size: int, shuffle: bool, seed: int, epoch: int) -> None:
        self.split, self.batch_size, self.shuffle, self.seed, self.epoch = split, batch_size, shuffle, seed, epoch

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def iter_from(self, k: int):
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for b in range(k, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.split.x[idx], self.split.y[idx]

    def __iter__(self):
        return self.iter_from(0)


class StandInDigits:
    """sklearn digits, 1x8x8, normalized; 80/20 split; no augmentation."""

    name = "digits-standin"
    num_classes = 10
    in_channels = 1

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = (x - x.mean()) / x.std()
        y = torch.tensor(d.target, dtype=torch.int64)
        perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
        x, y = x[perm], y[perm]
        cut = int(0.8 * len(y))
        self.train, self.test = _Split(x[:cut], y[:cut]), _Split(x[cut:], y[cut:])

    def loader(self, split="train", batch_size=128, shuffle=False, augment=False, seed=0, limit=None, epoch=0):
        s = self.train if split == "train" else self.test
        if limit is not None:
            s = _Split(s.x[:limit], s.y[:limit])
        return StandInLoader(s, batch_size, shuffle, seed, epoch)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 1, 8, 8)


@pytest.fixture(scope="session")
def digits():
    try:
        from chanprune.data import load_data

        return load_data("digits")
    except Exception:  # data module not there yet (or broken): the engine tests must not depend on it
        return StandInDigits()


class TinyNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.drop(self.features(x)))


@pytest.fixture(scope="session")
def make_net():
    def make(seed: int = 0, **kw) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(**kw)

    return make


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


@pytest.fixture(scope="session")
def same_weights():
    return assert_same_weights


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~50x faster than two
    oversubscribed ones, and keeps timings stable. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
