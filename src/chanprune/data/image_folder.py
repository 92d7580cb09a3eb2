"""A folder of images, one sub-folder per class: ``root/<class>/*.png|jpg``.

With ``root/train`` and ``root/test`` sub-folders those are the split; otherwise a stratified split
with seed 0 and ``test_fraction`` (default 0.2). All images are converted to one size
(``image_size=``, default the first image's) and mode (L if every image is grayscale, else RGB).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from chanprune.errors import DataError

from .base import DataBundle, make_bundle, stratified_split
from .registry import register_dataset

__all__ = ["IMAGE_SUFFIXES", "build_image_folder"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, label)]) of ``folder``; with ``classes`` given, sub-folders must be among them."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"{folder} has no class sub-folders; put the images in {folder}/<class name>/*.png.")
    names = [d.name for d in dirs] if classes is None else classes
    items: list[tuple[Path, int]] = []
    for d in dirs:
        if d.name not in names:
            raise DataError(f"class folder {d} does not exist in the training folder; use the same class names in train/ and test/.")
        files = _image_files(d)
        if not files:
            raise DataError(f"class folder {d} holds no .png/.jpg/.jpeg/.bmp images; add images or remove the folder.")
        label = names.index(d.name)
        items.extend((f, label) for f in files)
    return names, items


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); replace or remove the file.") from None


def _to_array(im, mode: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F") and mode == "L":
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 255.0)
        im = Image.fromarray(np.rint(arr * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    im = im.convert(mode)
    h, w = size
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _parse_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DataError(f"image_size must be an int or (height, width), got {image_size!r}.") from None
    if h < 1 or w < 1:
        raise DataError(f"image_size must be positive, got {image_size!r}.")
    return (h, w)


@register_dataset("image_folder")
def build_image_folder(
    root: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    hflip: bool = True,
    crop_padding: int | None = None,
) -> DataBundle:
    """Images from ``root/<class>/`` (or ``root/train/<class>/`` + ``root/test/<class>/``).

    ``crop_padding`` defaults to ``max(1, min(H, W) // 8)``.
    """
    if root is None:
        raise DataError("image_folder needs root=, a folder with one sub-folder of images per class.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass a folder with one sub-folder of images per class.")
    split_folders = (root / "train").is_dir() and (root / "test").is_dir()
    if split_folders:
        classes, train_items = _scan(root / "train", None)
        _, test_items = _scan(root / "test", classes)
        items = train_items + test_items
    else:
        classes, items = _scan(root, None)
    images = [_open(p) for p, _ in items]
    mode = "L" if all(im.mode in _GRAY_MODES for im in images) else "RGB"
    size = _parse_size(image_size) or (images[0].size[1], images[0].size[0])
    arrays = np.stack([_to_array(im, mode, size) for im in images])
    labels = np.array([lab for _, lab in items], dtype=np.int64)
    del images
    if split_folders:
        n = len(train_items)
        train_idx, test_idx = np.arange(n), np.arange(n, len(items))
        how = "train/ and test/ folders"
    else:
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        how = f"stratified split seed {seed}, test_fraction {test_fraction}"
    h, w = size
    pad = max(1, min(h, w) // 8) if crop_padding is None else int(crop_padding)
    source = f"image folder {root} ({len(items)} images, mode {mode}, {h}×{w}; {how})"
    return make_bundle("image_folder", arrays[train_idx], labels[train_idx], arrays[test_idx], labels[test_idx],
                       classes=classes, hflip=hflip, crop_padding=pad, source=source)
