"""Serving shared chunks: the file of an entry is looked up once, not per chunk, and
forgetting a share stops serving it at once."""

from __future__ import annotations

from pathlib import Path

import pytest

import p2p.store.store
from p2p.content import build_manifest
from p2p.errors import NotFound
from p2p.identity import Identity
from p2p.store import Store
from p2p.store.database import Database

from .storeproc import CHUNK, make_bytes

ME = Identity.generate()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    for i, size in enumerate([3 * CHUNK + 5, CHUNK, 2 * CHUNK]):
        path = root / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make_bytes(size, seed=30 + i))
    return root


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, int]]:
    """(share, first entry) of every block of share entries read from the database."""
    seen: list[tuple[bytes, int]] = []
    share_files_from = Database.share_files_from

    def counted(self: Database, cid: bytes, first: int, count: int):  # type: ignore[no-untyped-def]
        seen.append((cid, first))
        return share_files_from(self, cid, first, count)

    monkeypatch.setattr(Database, "share_files_from", counted)
    return seen


def test_every_chunk_of_a_folder_is_served_with_one_lookup_per_block_of_files(
        tmp_path: Path, folder: Path, lookups: list[tuple[bytes, int]]) -> None:
    manifest, files = build_manifest(folder, ME)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=folder)
        expected = b"".join((folder / e.path).read_bytes() for e in manifest.entries)
        for _ in range(3):  # served again and again
            got = b"".join(bytes(store.read_chunk(cid, i)) for i in range(manifest.chunk_count))
            assert got == expected
        assert lookups == [(cid, 0)]  # one block of entries, read once
        with pytest.raises(NotFound):
            store.read_chunk(cid, manifest.chunk_count)


def test_an_unshared_folder_is_not_served_even_after_its_files_were_looked_up(
        tmp_path: Path, folder: Path) -> None:
    manifest, files = build_manifest(folder, ME)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=folder)
        assert bytes(store.read_chunk(cid, 0)) == (folder / "f0.bin").read_bytes()[:CHUNK]
        assert store.remove_share(cid)
        with pytest.raises(NotFound):
            store.read_chunk(cid, 0)
        store.add_share(manifest, files, root=folder)  # and shared again: served again
        assert bytes(store.read_chunk(cid, 0)) == (folder / "f0.bin").read_bytes()[:CHUNK]


def test_entries_are_read_a_block_at_a_time_across_block_boundaries(
        tmp_path: Path, folder: Path, lookups: list[tuple[bytes, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p2p.store.store, "SHARE_FILE_BLOCK", 2)
    manifest, files = build_manifest(folder, ME)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=folder)
        expected = b"".join((folder / e.path).read_bytes() for e in manifest.entries)
        backwards = [bytes(store.read_chunk(cid, i)) for i in reversed(range(manifest.chunk_count))]
        assert b"".join(reversed(backwards)) == expected
    assert sorted(lookups) == [(cid, 0), (cid, 2)]  # entries 0-1 and 2 (of 3), one query each


def test_a_share_larger_than_the_cache_forgets_its_oldest_block_not_all(
        tmp_path: Path, lookups: list[tuple[bytes, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_CACHED_SHARE_FILES entries the oldest block is forgotten: the blocks read since
    are still remembered (emptying the whole cache made a share of more entries than it holds,
    served in random order, read a block of rows for most chunks)."""
    monkeypatch.setattr(p2p.store.store, "SHARE_FILE_BLOCK", 2)
    monkeypatch.setattr(p2p.store.store, "MAX_CACHED_SHARE_FILES", 6)  # three blocks
    root = tmp_path / "many"
    root.mkdir()
    for i in range(10):
        (root / f"f{i}.bin").write_bytes(make_bytes(100 + i, seed=i))
    manifest, files = build_manifest(root, ME)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=root)
        for i in (0, 2, 4, 6):  # four blocks into a cache of three: block 0 goes
            assert bytes(store.read_chunk(cid, i)) == (root / f"f{i}.bin").read_bytes()
            assert len(store._share_files) <= 6
        lookups.clear()
        for i in (5, 6, 7):  # blocks 4-5 and 6-7 are still there
            assert bytes(store.read_chunk(cid, i)) == (root / f"f{i}.bin").read_bytes()
        assert lookups == [(cid, 0)]  # only block 0 again (read_chunk's share check is entry 0)
