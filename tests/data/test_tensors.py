"""Own data as tensors or a DataLoader: from_tensors / from_loader build bundles that keep the values given."""
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import chanprune
from chanprune.data import DataBundle, ImageSet, from_loader, from_tensors
from chanprune.errors import DataError


def _float_images(n=40, c=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), torch.arange(n) % 4


def test_float_images_pass_through_unchanged():
    """Already-normalised float images are what the model sees, bit for bit (no uint8 round trip)."""
    x, y = _float_images()
    data = from_tensors(train=(x, y), test=(x[:8], y[:8]))
    assert isinstance(data, DataBundle) and data.num_classes == 4 and data.in_channels == 1
    xb, yb = next(iter(data.loader("train", batch_size=40)))
    assert torch.equal(xb, x) and torch.equal(yb, y)
    xc, _ = data.calibration([3, 5])
    assert torch.equal(xc, x[[3, 5]])


def test_float_images_with_mean_std_are_normalised_in_their_own_units():
    x, y = _float_images(c=3)
    data = from_tensors(train=(x, y), mean=[0.5, 0.0, -1.0], std=2.0)
    xb, _ = next(iter(data.loader("train", batch_size=40)))
    want = (x - torch.tensor([0.5, 0.0, -1.0]).view(1, 3, 1, 1)) / 2.0
    assert torch.allclose(xb, want, atol=1e-6)


def test_uint8_images_get_their_own_statistics():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (30, 1, 6, 6), generator=g, dtype=torch.uint8)
    y = torch.arange(30) % 3
    data = from_tensors(train=(x, y), test=(x, y))
    xb, _ = next(iter(data.loader("test", batch_size=30)))
    assert abs(float(xb.mean())) < 1e-4 and abs(float(xb.std(unbiased=False)) - 1) < 1e-3


def test_channel_axis_and_numpy_accepted():
    x = np.random.default_rng(0).random((10, 5, 5)).astype(np.float64)
    data = from_tensors(train=(x, np.arange(10) % 2))
    assert data.in_channels == 1 and data.train.images.dtype == torch.float32


def test_from_loader_equals_from_tensors():
    x, y = _float_images()
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    a, b = from_loader(loader, test=loader), from_tensors((x, y), (x, y))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.num_classes == b.num_classes and a.mean == b.mean


def test_top_level_exports():
    assert chanprune.from_tensors is from_tensors and chanprune.from_loader is from_loader


def test_float_imageset_no_longer_told_to_become_uint8():
    """The old advice ('.to(torch.uint8)') turned normalised images into 0..2; floats are stored as floats."""
    x, y = _float_images()
    s = ImageSet(x, y)
    assert s.images.dtype == torch.float32 and torch.equal(s.images, x)


@pytest.mark.parametrize("images, fix", [
    (torch.randint(0, 256, (4, 1, 3, 3), dtype=torch.int32), "images.to(torch.uint8)"),
    (torch.randint(-500, 500, (4, 1, 3, 3), dtype=torch.int32), "images.float()"),
    (torch.zeros(4, 3, 3), "unsqueeze(1)"),
])
def test_bad_images_get_the_fix_for_what_was_passed(images, fix):
    with pytest.raises(DataError, match=fix.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ImageSet(images, torch.zeros(4, dtype=torch.int64))


def test_one_class_training_data_warns_and_training_refuses():
    x, _ = _float_images(n=12)
    with pytest.warns(UserWarning, match="1 class"):
        data = from_tensors(train=(x, torch.zeros(12, dtype=torch.int64)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    with pytest.raises(DataError, match="cannot train"):
        chanprune.train(model, data, chanprune.TrainConfig(epochs=1))


def test_two_classes_do_not_warn():
    x, _ = _float_images(n=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_tensors(train=(x, torch.arange(12) % 2))
