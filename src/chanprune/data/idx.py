"""The IDX file format of MNIST / Fashion-MNIST (plain or gzip).

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per dimension,
then the data in big-endian C order.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from chanprune._atomic import write_bytes_atomic
from chanprune.errors import DataError

__all__ = ["read_idx", "write_idx", "find_idx_file"]

_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE = {("u", 1): 0x08, ("i", 1): 0x09, ("i", 2): 0x0B, ("i", 4): 0x0C, ("f", 4): 0x0D, ("f", 8): 0x0E}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist; check the path or download the file again.") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path} ({exc.strerror or exc}); check its permissions.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"IDX file {path} is a corrupt or truncated gzip file ({exc}); delete it and download it again."
            ) from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip detected from its content) into a native-endian numpy array."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number); pass the official *-ubyte files.")
    code, ndim = raw[2], raw[3]
    if code not in _CODE_TO_DTYPE:
        raise DataError(f"{path} has unknown IDX type code 0x{code:02x}; the file is corrupt or not an IDX file.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header; delete it and download it again.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _CODE_TO_DTYPE[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual < expected:
        raise DataError(
            f"IDX file {path} is truncated ({actual} of {expected} data bytes for shape {dims}); "
            "delete it and download it again."
        )
    if actual > expected:
        raise DataError(
            f"IDX file {path} has {actual - expected} bytes more than its header's shape {dims} allows; "
            "the file is corrupt, download it again."
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as IDX (gzip when ``path`` ends in ``.gz``), atomically."""
    arr = np.asarray(array)
    key = (arr.dtype.kind, arr.dtype.itemsize)
    if key not in _KIND_TO_CODE:
        raise DataError(f"IDX cannot store dtype {arr.dtype}; use uint8, int8, int16, int32, float32 or float64.")
    if arr.ndim > 255:
        raise DataError(f"IDX cannot store {arr.ndim} dimensions (at most 255).")
    code = _KIND_TO_CODE[key]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=_CODE_TO_DTYPE[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    write_bytes_atomic(path, payload)


def find_idx_file(root: Path, stem: str) -> Path | None:
    """``root/stem`` or ``root/stem.gz``, also accepting ``.`` for the last ``-`` (``train-images.idx3-ubyte``)."""
    head, _, tail = stem.rpartition("-idx")
    names = [stem, f"{head}.idx{tail}"] if head else [stem]
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


IDX_SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx_split(root: str | os.PathLike, how_to_get: str) -> dict[str, np.ndarray]:
    """The four official MNIST-style IDX files in ``root`` as arrays (images N×1×H×W uint8, labels int64)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {how_to_get}.")
    out: dict[str, np.ndarray] = {}
    for key, stem in IDX_SPLIT_FILES.items():
        path = find_idx_file(root, stem)
        if path is None:
            raise DataError(f"{root / stem} (or {stem}.gz) is missing; {how_to_get}.")
        arr = read_idx(path)
        if key.endswith("images"):
            if arr.ndim != 3 or arr.dtype != np.uint8:
                raise DataError(f"{path} holds {arr.dtype} data of shape {arr.shape}, not uint8 N×H×W images; {how_to_get}.")
            out[key] = arr[:, None]
        else:
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise DataError(f"{path} holds {arr.dtype} data of shape {arr.shape}, not a vector of labels; {how_to_get}.")
            out[key] = arr.astype(np.int64)
    for split in ("train", "test"):
        n_img, n_lab = len(out[f"{split}_images"]), len(out[f"{split}_labels"])
        if n_img != n_lab:
            raise DataError(f"{root}: the {split} files hold {n_img} images but {n_lab} labels; {how_to_get}.")
    return out
