import numpy as np
import pytest
import torch
from PIL import Image

from chanprune.data import load_data
from chanprune.errors import DataError


def _png(path, size=(6, 5), color=None, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if color:
        arr = np.full((h, w, 3), value, np.uint8)
        arr[..., 0] = 255
        Image.fromarray(arr, "RGB").save(path)
    else:
        Image.fromarray(np.full((h, w), value, np.uint8), "L").save(path)


def test_grayscale_folder_split(tmp_path):
    for cls, v in (("cat", 10), ("dog", 200)):
        for i in range(10):
            _png(tmp_path / cls / f"{i}.png", value=v)
    b = load_data("image_folder", root=tmp_path)
    assert b.classes == ["cat", "dog"] and b.in_channels == 1 and b.image_size == (5, 6)
    assert b.train.class_counts(2) == [8, 8] and b.test.class_counts(2) == [2, 2]
    # label k images have the value of class k
    vals = b.train.images[:, 0, 0, 0]
    assert torch.all(vals[b.train.labels == 0] == 10) and torch.all(vals[b.train.labels == 1] == 200)


def test_mixed_modes_resize_and_split_folders(tmp_path):
    _png(tmp_path / "train" / "a" / "0.png", size=(8, 8))
    _png(tmp_path / "train" / "a" / "1.jpg", size=(4, 4), color=True)
    _png(tmp_path / "train" / "b" / "0.png", size=(8, 8), value=50)
    _png(tmp_path / "test" / "b" / "0.png", size=(16, 16), value=50)
    b = load_data("image_folder", root=tmp_path, image_size=10)
    assert b.in_channels == 3 and b.image_size == (10, 10)
    assert (len(b.train), len(b.test)) == (3, 1) and b.test.labels.tolist() == [1]
    assert b.train.images.shape == (3, 3, 10, 10)


def test_empty_and_unreadable(tmp_path):
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DataError, match="empty_root"):
        load_data("image_folder", root=tmp_path / "empty_root")
    _png(tmp_path / "r" / "a" / "0.png")
    (tmp_path / "r" / "b").mkdir()
    with pytest.raises(DataError, match=r"r/b"):
        load_data("image_folder", root=tmp_path / "r")
    (tmp_path / "r" / "b" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_data("image_folder", root=tmp_path / "r")
    with pytest.raises(DataError, match="root"):
        load_data("image_folder")
