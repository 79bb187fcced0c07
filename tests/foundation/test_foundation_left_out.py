"""What a folder share leaves out: counted by kind, never silently."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from p2p.content import LeftOut, build_manifest, build_share_manifest
from p2p.content.manifest import scan_directory
from p2p.identity import Identity

ME = Identity.generate()


def tree(root: Path) -> Path:
    (root / "keep" / "deeper").mkdir(parents=True)
    (root / "keep" / "deeper" / "a.txt").write_text("a")
    (root / "b.txt").write_text("b" * 3_000_000)  # a large file too (hashed in ranges)
    (root / "empty").mkdir()
    (root / "only-empty" / "inner").mkdir(parents=True)  # two folders with no file below
    (root / "only-link").mkdir()
    (root / "only-link" / "to-a").symlink_to(root / "keep" / "deeper" / "a.txt")
    (root / "dir-link").symlink_to(root / "keep")
    os.mkfifo(root / "pipe")
    return root


def test_scan_counts_links_empty_folders_and_special_files(tmp_path: Path) -> None:
    files, left_out = scan_directory(tree(tmp_path / "t"))
    assert [rel for rel, _ in files] == ["b.txt", "keep/deeper/a.txt"]
    assert left_out == LeftOut(symlinks=2, empty_folders=4, unreadable=0, special=1)
    assert left_out.describe() == ("2 symlinks, 4 empty folders and 1 special file "
                                   "(socket, FIFO or device)")
    assert scan_directory(tmp_path / "t" / "keep")[1] == LeftOut()
    assert LeftOut().describe() == "" and LeftOut(unreadable=1).describe() == (
        "1 unreadable file or folder")


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """As root (who reads every file whatever its mode), act as an unprivileged user for a
    moment: the effective ids change for every thread (the hashing pool too) and return."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_files_and_folders_are_left_out_and_counted(tmp_path: Path) -> None:
    """Files (a small one, a large one hashed in ranges) and a folder with mode 0 are left
    out and counted; the same folder through build_manifest gives the same entries."""
    base = Path(tempfile.mkdtemp(prefix="p2p-left-out-")) if os.geteuid() == 0 else tmp_path
    try:
        base.chmod(0o755)  # the unprivileged user may enter it
        root = tree(base / "t")
        (root / "secret.txt").write_text("s")
        (root / "secret.txt").chmod(0)
        (root / "b.txt").chmod(0)
        (root / "closed").mkdir()
        (root / "closed" / "x").write_text("x")
        (root / "closed").chmod(0)
        with unprivileged():
            manifest, files, left_out = build_share_manifest(root, ME)
            again = build_manifest(root, ME)[0]
        assert [e.path for e in manifest.entries] == ["keep/deeper/a.txt"]
        assert [p.name for _, p in files] == ["a.txt"]
        assert left_out.unreadable == 3 and left_out.symlinks == 2
        assert again.entries == manifest.entries
    finally:
        if (base / "t" / "closed").exists():
            (base / "t" / "closed").chmod(0o755)
        if base != tmp_path:
            shutil.rmtree(base)
