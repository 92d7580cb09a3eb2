import gzip

import numpy as np
import pytest

from chanprune.data.idx import find_idx_file, read_idx, write_idx
from chanprune.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_roundtrip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 5) * 7 % 251).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


def test_header_layout(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 1]) and raw[4:8] == (3).to_bytes(4, "big") and raw[8:] == bytes([1, 2, 3])


def test_gzip_detected_by_content(tmp_path):
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 9, 8])))
    np.testing.assert_array_equal(read_idx(path), [9, 8])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_raises(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    write_idx(full, np.zeros((4, 28, 28), dtype=np.uint8))
    raw = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cut"):
        read_idx(cut)


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"PK\x03\x04junk", bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 0]),
                                     bytes([0, 0, 8, 2, 0, 0]), bytes([0, 0, 8, 1, 0, 0, 0, 1, 5, 6])])
def test_corrupt_raises(tmp_path, content):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad-idx1-ubyte"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_find_idx_file_variants(tmp_path):
    assert find_idx_file(tmp_path, "train-images-idx3-ubyte") is None
    (tmp_path / "train-images.idx3-ubyte").write_bytes(b"")
    assert find_idx_file(tmp_path, "train-images-idx3-ubyte").name == "train-images.idx3-ubyte"
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert find_idx_file(tmp_path, "train-images-idx3-ubyte").name == "train-images-idx3-ubyte.gz"
