"""A share's files checked against what was recorded (real files, real SQLite): moved,
changed and vanished files are counted, nothing is hashed, and a folder larger than one
block of rows is checked whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2p.content import build_manifest
from p2p.identity import Identity
from p2p.library import Library
from p2p.store import ShareHealth, Store
from p2p.store import store as store_module
from p2p.store.serving import SharedFile

ME = Identity.generate()


def folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"f{i:03d}.txt").write_bytes(b"file %d\n" % i)
    return root


def touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_an_untouched_share_is_ok(tmp_path: Path) -> None:
    src = folder(tmp_path / "src", 5)
    manifest, _ = build_manifest(src, ME)
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, root=src)
        assert store.share_health(manifest.content_id) == ShareHealth(5)
        assert store.share_health(manifest.content_id).status == "ok"
        assert ShareHealth(5).describe() == ""


def test_changed_and_vanished_files_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SHARE_CHECK_BLOCK", 4)  # 10 files: three blocks
    src = folder(tmp_path / "src", 10)
    manifest, _ = build_manifest(src, ME)
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, root=src)
        touch_later(src / "f001.txt")  # same bytes, newer mtime: changed
        (src / "f007.txt").write_bytes(b"longer than it was\n")  # another size: changed
        health = store.share_health(manifest.content_id)
        assert (health.files, health.changed, health.missing, health.status) == (10, 2, 0, "changed")
        assert health.describe() == "2 of 10 files changed"
        (src / "f009.txt").unlink()
        health = store.share_health(manifest.content_id)
        assert (health.changed, health.missing, health.status) == (2, 1, "missing")
        assert health.describe() == "2 of 10 files changed, 1 missing"
        assert health.to_json() == {"status": "missing", "files": 10, "changed_files": 2,
                                    "missing_files": 1}
        src.rename(tmp_path / "moved")  # the whole folder moved away
        health = store.share_health(manifest.content_id)
        assert (health.missing, health.describe()) == (10, "10 of 10 files missing")
    with Library.open(tmp_path / "state") as library:  # the same through the read-only view
        assert library.share_health(manifest.content_id).missing == 10


def test_a_single_file_share_reads_as_the_file(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(b"hello\n")
    manifest, _ = build_manifest(src, ME)
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, root=src)
        touch_later(src)
        assert store.share_health(manifest.content_id).describe() == "the file changed since it was shared"
        src.unlink()
        assert store.share_health(manifest.content_id).describe() == "the file is gone"


def test_checking_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = folder(tmp_path / "src", 3)
    manifest, _ = build_manifest(src, ME)
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, root=src)

        def no_read(*args: object, **kwargs: object) -> None:
            raise AssertionError("the check opened a file")

        monkeypatch.setattr(SharedFile, "read_chunk", no_read)
        monkeypatch.setattr(os, "open", no_read)
        assert store.share_health(manifest.content_id).status == "ok"
