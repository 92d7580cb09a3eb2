import numpy as np
import torch

from chanprune.data import load_data


def test_digits_bundle():
    b = load_data("digits")
    assert b.train.images.shape[1:] == (1, 8, 8) and b.train.images.dtype == torch.uint8
    assert (len(b.train), len(b.test)) == (1438, 359)
    assert b.num_classes == 10 and b.in_channels == 1 and b.image_size == (8, 8)
    assert b.hflip is False and b.crop_padding == 1
    assert int(b.train.images.max()) == 255 and int(b.train.images.min()) == 0
    # stratified: every class has ~20% in test
    tr, te = np.array(b.train.class_counts(10)), np.array(b.test.class_counts(10))
    assert np.all(np.abs(te / (tr + te) - 0.2) < 0.01)
    # no image is in both splits (the digits set has no exact duplicates across the split by index)
    assert len(b.train) + len(b.test) == 1797


def test_digits_deterministic():
    a, b = load_data("digits"), load_data("digits")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
