import pytest

from chanprune import data
from chanprune.data import cache_dir, list_datasets, load_data, register_dataset
from chanprune.errors import DataError


def test_names():
    assert {"fashion_mnist", "mnist", "digits", "cifar10", "image_folder"} <= set(list_datasets())
    assert data.DEFAULT_DATASET == "fashion_mnist"


def test_unknown_name_lists_available():
    with pytest.raises(DataError) as exc:
        load_data("imagenet")
    msg = str(exc.value)
    assert "imagenet" in msg and all(name in msg for name in ["fashion_mnist", "mnist", "digits", "cifar10", "image_folder"])


def test_unknown_option():
    with pytest.raises(DataError, match="bogus"):
        load_data("digits", bogus=1)


def test_name_aliases():
    assert load_data("Digits").name == "digits"


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CHANPRUNE_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "chanprune")


def test_register_custom(monkeypatch):
    from chanprune.data import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_dataset("tiny")
    def build(root=None, k=1):
        return load_data("digits")

    assert "tiny" in list_datasets() and load_data("tiny", k=2).name == "digits"
