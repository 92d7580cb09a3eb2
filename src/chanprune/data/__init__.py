"""Data sets for chanprune: ``load_data(name, root=None, **kw) -> DataBundle``.

Names: ``fashion_mnist`` (default), ``mnist``, ``digits``, ``cifar10`` (root required),
``image_folder`` (root required). Caches live in :func:`cache_dir`. Your own tensors or DataLoader:
:func:`from_tensors`, :func:`from_loader`.
"""
from .base import DataBundle, ImageSet, Loader
from .tensors import from_loader, from_tensors
from .idx import read_idx, write_idx
from .registry import DEFAULT_DATASET, cache_dir, list_datasets, load_data, register_dataset

__all__ = [
    "DataBundle",
    "ImageSet",
    "Loader",
    "from_tensors",
    "from_loader",
    "DEFAULT_DATASET",
    "cache_dir",
    "list_datasets",
    "load_data",
    "register_dataset",
    "read_idx",
    "write_idx",
]
