import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chanprune.data import ImageSet, Loader, load_data
from chanprune.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_deterministic_given_seed_and_epoch(digits):
    kw = dict(batch_size=100, shuffle=True, augment=True, seed=3)
    a = _batches(digits.loader(epoch=1, **kw))
    assert _equal(a, _batches(digits.loader(epoch=1, **kw)))
    assert not _equal(a, _batches(digits.loader(epoch=2, **kw)))
    assert not _equal(a, _batches(digits.loader(epoch=1, **{**kw, "seed": 4})))
    loader = digits.loader(epoch=1, **kw)
    assert _equal(_batches(loader), _batches(loader))  # re-iterable


@pytest.mark.parametrize("k", [0, 1, 5, 14, 15])
def test_iter_from_equals_dropping(digits, k):
    loader = digits.loader(batch_size=100, shuffle=True, augment=True, seed=7, epoch=3)
    full = _batches(loader)
    assert len(loader) == len(full) == 15
    assert _equal(_batches(loader.iter_from(k)), full[k:])
    skipped = digits.loader(batch_size=100, shuffle=True, augment=True, seed=7, epoch=3, skip=k)
    assert len(skipped) == 15 - k and _equal(_batches(skipped), full[k:])


def test_epoch_covers_all_samples_once(digits):
    ys = torch.cat([y for _, y in digits.loader(batch_size=128, shuffle=True, seed=1)])
    assert torch.equal(torch.sort(ys).values, torch.sort(digits.train.labels).values)
    assert not torch.equal(ys, digits.train.labels)
    plain = torch.cat([y for _, y in digits.loader(batch_size=128)])
    assert torch.equal(plain, digits.train.labels)


def test_augmentation_shape_dtype_and_effect(digits):
    plain = next(iter(digits.loader(batch_size=64)))[0]
    aug = next(iter(digits.loader(batch_size=64, augment=True, seed=0)))[0]
    assert aug.shape == plain.shape and aug.dtype == torch.float32
    assert not torch.equal(aug, plain)
    # values stay in the normalized image of 0..255
    lo = (0 - digits.mean[0]) / digits.std[0]
    hi = (1 - digits.mean[0]) / digits.std[0]
    assert aug.min() >= lo - 1e-5 and aug.max() <= hi + 1e-5


def test_crop_and_flip_are_exact_shifts():
    # a single bright pixel moves by at most `padding` and flips mirror it
    img = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    img[:, 0, 3, 2] = 255
    data = ImageSet(img, torch.zeros(64, dtype=torch.int64))
    loader = Loader(data, (0.0,), (1 / 255,), batch_size=64, augment=True, crop_padding=1, hflip=True)
    x, _ = next(iter(loader))
    assert torch.all(x.sum(dim=(1, 2, 3)) <= 255 * 255 + 1e-3)
    pos = [divmod(int(torch.argmax(v)), 8) for v in x[:, 0] if v.max() > 0]
    assert all(r in (2, 3, 4) and c in (1, 2, 3, 4, 5, 6) for r, c in pos)
    assert any(c >= 4 for _, c in pos)  # some flipped


def test_crop_is_a_window_of_the_zero_padded_image():
    torch.manual_seed(0)
    img = torch.randint(1, 256, (16, 2, 6, 7), dtype=torch.uint8)
    data = ImageSet(img, torch.zeros(16, dtype=torch.int64))
    loader = Loader(data, (0.0, 0.0), (1 / 255, 1 / 255), batch_size=16, augment=True, crop_padding=2)
    x, _ = next(iter(loader))
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2)).float()
    offsets = set()
    for i in range(16):
        hits = [(r, c) for r in range(5) for c in range(5) if torch.equal(padded[i, :, r:r + 6, c:c + 7], x[i])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets differ per sample


def test_normalize_zero_mean_unit_std(digits):
    x = digits.normalize(digits.train.images)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    ref = (digits.train.images.float() / 255 - digits.mean[0]) / digits.std[0]
    torch.testing.assert_close(x, ref)
    torch.testing.assert_close(digits.normalize(digits.train.images[0]), ref[0])
    xs = torch.cat([x for x, _ in digits.loader(batch_size=500)])
    torch.testing.assert_close(xs, x)


def test_limit_uses_stratified_subset(digits):
    loader = digits.loader(limit=100, batch_size=32)
    assert loader.num_samples == 100 and len(loader) == 4
    ys = torch.cat([y for _, y in loader])
    assert torch.bincount(ys, minlength=10).tolist() == [10] * 10
    assert torch.equal(ys, digits.train.subset(100, seed=0).labels)
    assert len(digits.loader(limit=10**9)) == len(digits.loader())


def test_drop_last(digits):
    assert len(digits.loader(batch_size=1000, drop_last=True)) == 1
    assert [len(y) for _, y in digits.loader(batch_size=1000, drop_last=True)] == [1000]


def test_calibration_and_example_input(digits):
    x, y = digits.calibration(50, seed=1)
    assert x.shape == (50, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [5] * 10
    x2, y2 = digits.calibration(50, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(digits.calibration(50, seed=2)[1], y) or not torch.equal(digits.calibration(50, seed=2)[0], x)
    e = digits.example_inputs(3)
    assert e.shape == (3, 1, 8, 8) and e.dtype == torch.float32 and not e.any()


def test_bad_arguments(digits):
    with pytest.raises(DataError, match="split"):
        digits.loader("val")
    with pytest.raises(ConfigError):
        digits.loader(batch_size=0)
    with pytest.raises(ConfigError):
        digits.train.subset(0)


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=6), n=st.integers(1, 120), seed=st.integers(0, 5))
def test_subset_properties(counts, n, seed):
    labels = torch.tensor(np.repeat(np.arange(len(counts)), counts), dtype=torch.int64)
    if len(labels) == 0:
        return
    data = ImageSet(torch.arange(len(labels), dtype=torch.uint8).reshape(-1, 1, 1, 1), labels)  # < 256 samples
    sub = data.subset(n, seed)
    if n >= len(data):
        assert sub is data
        return
    assert len(sub) == n
    got = np.bincount(sub.labels.numpy(), minlength=len(counts))
    present = np.array(counts) > 0
    # as even as possible: classes not exhausted differ by at most one, exhausted ones are full
    full = got == np.array(counts)
    not_full = got[~full & present]
    if not_full.size:
        assert not_full.max() - not_full.min() <= 1
        assert np.all(got[full & present] <= not_full.min() + 1)
    assert torch.equal(data.subset(n, seed).labels, sub.labels)
    if n > 1:  # nested
        smaller = set(data.subset(n - 1, seed).images.flatten().tolist())
        assert smaller <= set(sub.images.flatten().tolist())


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_batches_have_standard_strides(augment, channels):
    """Odd strides on size-1 dims (what a permute leaves on 1-channel images) made oneDNN's conv backward
    corrupt the heap; every batch, calibration set and example input must have the strides of a fresh tensor."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 9, 9, channels), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    data = ImageSet(images, torch.randint(0, 3, (40,), generator=g))
    loader = Loader(data, [0.5] * channels, [0.25] * channels, batch_size=16, augment=augment,
                    crop_padding=2 if augment else 0)
    for x, _ in loader:
        assert x.stride() == torch.empty(x.shape).stride()
