"""Serving shared chunks: the file of an entry is looked up once, not per chunk, and
forgetting a share stops serving it at once."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_every_chunk_of_a_folder_is_served_with_one_lookup_per_file(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, files = build_manifest(folder, ME)
    lookups: list[tuple[bytes, int]] = []
    share_file = Database.share_file

    def counted(self: Database, cid: bytes, entry: int):  # type: ignore[no-untyped-def]
        lookups.append((cid, entry))
        return share_file(self, cid, entry)

    monkeypatch.setattr(Database, "share_file", counted)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=folder)
        expected = b"".join((folder / e.path).read_bytes() for e in manifest.entries)
        for _ in range(3):  # served again and again
            got = b"".join(bytes(store.read_chunk(cid, i)) for i in range(manifest.chunk_count))
            assert got == expected
        assert sorted(set(lookups)) == sorted(lookups)  # each (share, entry) looked up once
        assert len(lookups) == len(manifest.entries)
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
