"""The database: old state directories still open (migrated), bad ones are refused, and every
timestamp comes from the store's clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from p2p.content import FileInfo, build_manifest
from p2p.errors import StoreError
from p2p.identity import Identity
from p2p.store import DB_FILE, Store
from p2p.store.database import SCHEMA_VERSION

from .storeproc import CHUNK, Clock, make_bytes

ME = Identity.generate()


def tables(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def schema(db_path: Path) -> str:
    with sqlite3.connect(db_path) as db:
        return str(db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])


def as_schema_1(db_path: Path) -> None:
    """Turn a current database into what the first version wrote: schema 1, with its table of
    known peers (which nothing ever read)."""
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE peers (peer_id BLOB PRIMARY KEY, host TEXT NOT NULL, "
                   "port INTEGER NOT NULL, last_seen REAL NOT NULL)")
        db.execute("INSERT INTO peers VALUES (?, '127.0.0.1', 4001, 1.0)", (ME.peer_id.key,))
        db.execute("UPDATE meta SET value='1' WHERE key='schema'")


def test_a_schema_1_state_directory_opens_and_keeps_everything_but_the_peers_table(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(make_bytes(3 * CHUNK + 1, seed=1))
    manifest, files = build_manifest(src, ME)
    banned = Identity.generate().peer_id
    state = tmp_path / "state"
    with Store(state) as store:
        store.add_share(manifest, files, root=src)
        store.ban(banned, "bad chunk")
    as_schema_1(state / DB_FILE)
    assert "peers" in tables(state / DB_FILE) and schema(state / DB_FILE) == "1"
    with Store(state) as store:
        [share] = store.shares()
        assert share.content_id == manifest.content_id
        assert store.read_chunk(manifest.content_id.digest, 3) == src.read_bytes()[3 * CHUNK:]
        assert store.is_banned(banned)
    assert "peers" not in tables(state / DB_FILE)
    assert schema(state / DB_FILE) == str(SCHEMA_VERSION) == "5"
    Store(state).close()  # and it opens again, already migrated


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(state).close()
    with sqlite3.connect(state / DB_FILE) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"has schema {SCHEMA_VERSION + 1}"):
        Store(state)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_FILE).write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match="is unusable: file is not a database"):
        Store(state)


def test_timestamps_come_from_the_clock(tmp_path: Path) -> None:
    clock = Clock()
    first = tmp_path / "first.bin"
    second = tmp_path / "second.bin"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    with Store(tmp_path / "state", clock=clock) as store:
        built = [build_manifest(path, ME) for path in (second, first)]
        for (manifest, files), path in zip(built, (second, first), strict=True):
            store.add_share(manifest, files, root=path)
            clock.now -= 100  # shares are listed by when they were added, not in insertion order
        assert [(s.name, s.added) for s in store.shares()] == [
            ("first.bin", clock.now + 100), ("second.bin", clock.now + 200)]
        cid = built[0][0].content_id
        store.add_sources(cid, [("10.0.0.2", 4002)])
        clock.now -= 1
        store.add_sources(cid, [("10.0.0.1", 4001), ("10.0.0.2", 4002)])
        assert store.sources(cid) == [("10.0.0.1", 4001), ("10.0.0.2", 4002)]


def test_a_schema_2_share_is_served_with_every_chunk_hashed_until_shared_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Schema 2 recorded no ctime or inode: such a share cannot be trusted untouched, so each
    chunk served is re-hashed (as schema 2 did), and a changed byte still ends the share."""
    src = tmp_path / "a.bin"
    src.write_bytes(make_bytes(3 * CHUNK + 1, seed=2))
    manifest, files = build_manifest(src, ME)
    state = tmp_path / "state"
    with Store(state) as store:
        store.add_share(manifest, files, root=src)
    with sqlite3.connect(state / DB_FILE) as db:  # what schema 2 wrote
        db.execute("CREATE TABLE old AS SELECT content_id, entry, path, size, mtime_ns, file_id "
                   "FROM share_files")
        db.execute("DROP TABLE share_files")
        db.execute("ALTER TABLE old RENAME TO share_files")
        db.execute("UPDATE meta SET value='2' WHERE key='schema'")
    calls = []
    real = FileInfo.verify_chunk
    monkeypatch.setattr(FileInfo, "verify_chunk",
                        lambda info, i, data: calls.append(i) or real(info, i, data))
    with Store(state) as store:
        cid = manifest.content_id.digest
        assert store.read_chunk(cid, 1) == src.read_bytes()[CHUNK:2 * CHUNK]
        assert calls == [1]
    assert schema(state / DB_FILE) == str(SCHEMA_VERSION) == "5"


def test_a_newer_schema_is_refused_not_misread(tmp_path: Path) -> None:
    """Schema 4 marks databases whose downloads may be 'selected' (some files in place): a
    version that reads only schema 3 would resume them wrongly, so it must refuse them."""
    state = tmp_path / "state"
    Store(state).close()
    with sqlite3.connect(state / DB_FILE) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"has schema {SCHEMA_VERSION + 1}; this version reads "
                                         f"{SCHEMA_VERSION}"):
        Store(state)
