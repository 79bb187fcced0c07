"""The state directory's SQLite database: schema, migrations, every query, and error mapping.

``store.sqlite3`` (WAL mode) holds manifests, shares and their files, downloads and their
verified-chunk bitfields, a download's source addresses, and bans. Several processes may
open it at once: WAL and a busy timeout keep it consistent, and processes that create a
state directory together take turns switching it to WAL.

This module knows rows, not files: it never reads or writes anything but the database, and
it reads no clock (every timestamp is passed in). :func:`_sqlite_errors` is the one place
SQLite's errors become ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..content import ContentId, Manifest
from ..errors import DiskFull, StoreError
from ..identity import PeerId
from .serving import SharedFile

__all__ = ["BUSY_TIMEOUT_MS", "DB_FILE", "SCHEMA_VERSION", "Database", "DownloadInfo", "DownloadRecord",
           "ShareInfo"]

DB_FILE = "store.sqlite3"
"""The database's file name in the state directory."""
SCHEMA_VERSION = 5
"""The schema this version writes. Older databases are migrated forward when opened
(:data:`_MIGRATIONS`); a newer one is refused rather than misread."""
BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for another process's transaction before giving up."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (
    content_id BLOB PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
    size INTEGER NOT NULL, chunks INTEGER NOT NULL, publisher BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS shares (
    content_id BLOB PRIMARY KEY REFERENCES manifests(content_id),
    root TEXT NOT NULL, added REAL NOT NULL, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS share_files (
    content_id BLOB NOT NULL, entry INTEGER NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, file_id BLOB NOT NULL,
    ctime_ns INTEGER, ino INTEGER,
    PRIMARY KEY (content_id, entry));
CREATE INDEX IF NOT EXISTS share_files_by_file_id ON share_files(file_id);
CREATE TABLE IF NOT EXISTS downloads (
    content_id BLOB PRIMARY KEY REFERENCES manifests(content_id),
    dest TEXT NOT NULL, partial TEXT NOT NULL, state TEXT NOT NULL,
    bitfield BLOB NOT NULL, done_chunks INTEGER NOT NULL, started REAL NOT NULL,
    updated REAL NOT NULL, error TEXT, selection BLOB, placed BLOB);
CREATE TABLE IF NOT EXISTS download_sources (
    content_id BLOB NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL, added REAL NOT NULL,
    PRIMARY KEY (content_id, host, port));
CREATE TABLE IF NOT EXISTS listings (
    listing_id BLOB PRIMARY KEY, content_id BLOB NOT NULL REFERENCES manifests(content_id));
CREATE TABLE IF NOT EXISTS download_limits (
    content_id BLOB PRIMARY KEY, rate REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bans (
    peer_id BLOB PRIMARY KEY, reason TEXT NOT NULL, banned_at REAL NOT NULL, until REAL);
"""

def _add_share_identity(db: sqlite3.Connection) -> None:
    """2 -> 3: shared files also record their ctime and inode (NULL for older rows, which are
    then served as before: every chunk re-hashed)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(share_files)")}
    for column in ("ctime_ns", "ino"):
        if column not in have:
            db.execute(f"ALTER TABLE share_files ADD COLUMN {column} INTEGER")


def _add_download_files(db: sqlite3.Connection) -> None:
    """4 -> 5: a download records which files it wants (``selection``) and which files it put
    in place at its destination (``placed``), one bit per manifest entry. NULL for older rows:
    every file wanted, and for a ``selected`` one the files in place are those its recorded
    bitfield holds whole (:meth:`Store.open_download <p2p.store.Store.open_download>`)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(downloads)")}
    for column in ("selection", "placed"):
        if column not in have:
            db.execute(f"ALTER TABLE downloads ADD COLUMN {column} BLOB")


_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], None], ...]] = {
    # 1 -> 2: the table of known peers was written by nothing and read by nothing.
    1: ("DROP TABLE IF EXISTS peers",),
    2: (_add_share_identity,),
    # 3 -> 4: no table changes; a download may now be in state 'selected' (its selected files
    # in place at dest, the rest not fetched), which older versions would resume as if its
    # partial data held every recorded chunk: they must refuse the database instead.
    3: (),
    4: (_add_download_files,),
}
"""For each old schema version, the statements that bring it to the next one."""


@dataclass(frozen=True)
class ShareInfo:
    """A row of ``p2p ls``: something this node serves in full."""

    content_id: ContentId
    """The id of the manifest that is served."""
    kind: str
    """``"file"`` or ``"dir"``."""
    name: str
    """The manifest's name (the file's or the folder's)."""
    size: int
    """Total size in bytes of every file it holds."""
    chunks: int
    """How many chunks it has (across every file)."""
    root: Path
    """The file, or the folder, it is served from in place."""
    added: float
    """When it was shared (or finished downloading), in seconds since the epoch."""
    origin: str
    """``"shared"`` (``p2p share``) or ``"downloaded"``."""
    publisher: PeerId
    """Who signed the manifest."""


@dataclass(frozen=True)
class DownloadInfo:
    """A row of ``p2p ls``: a download and how far it got."""

    content_id: ContentId
    """The id of the manifest being downloaded."""
    name: str
    """The manifest's name (the file's or the folder's)."""
    size: int
    """Total size in bytes once complete."""
    chunks: int
    """How many chunks it has (across every file)."""
    done_chunks: int
    """How many chunks are recorded as written and synced (the durable progress)."""
    state: str
    """``"active"``, ``"paused"`` (by the person: it stays paused), ``"interrupted"`` (its
    node stopped while it ran: a long-running node resumes it when it starts, as it does an
    ``"active"`` one left by a killed node), ``"complete"``, ``"failed"``, or ``"selected"``:
    the files a fetch picked are in place at :attr:`dest`, the rest were not fetched (a later
    fetch of more of them completes it)."""
    dest: Path
    """Where the result goes once complete."""
    partial: Path
    """Where the data is written until then: ``dest`` + ``.p2p-partial`` (a file or a folder)."""
    error: str | None
    """Why it failed (for ``"failed"``), or None."""
    selection: bytes | None = None
    """The files it wants, one bit per manifest entry (the :mod:`p2p.bitfield` layout); None:
    every file. A node that resumes it asks for these files only."""
    placed: bytes | None = None
    """The files it put in place at :attr:`dest`, one bit per entry (whole when they landed;
    the person may have changed them since); None: none. Such a download keeps its folder
    at :attr:`dest` while it fetches more, and the partial folder holds only the files it is
    still writing."""


@dataclass(frozen=True)
class DownloadRecord:
    """What :meth:`Database.download_record` returns: where a download writes, and what it has."""

    dest: Path
    """Where the result goes."""
    partial: Path
    """Where the data is written until it is whole."""
    bits: bytes
    """The recorded bitfield (chunks written and synced)."""
    state: str
    """The recorded state (see :attr:`DownloadInfo.state`)."""
    selection: bytes | None
    """:attr:`DownloadInfo.selection`."""
    placed: bytes | None
    """:attr:`DownloadInfo.placed`."""


class Database:
    """The SQLite database of one state directory. Thread-safe: one connection behind a lock.

    Raises :class:`~p2p.errors.StoreError` when the directory or the database cannot be
    used, and :class:`~p2p.errors.DiskFull` when a write finds the disk full.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_FILE
        """The database file."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state directory {self.state_dir}: {exc}") from None
        self._lock = threading.RLock()
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"the database in {self.state_dir} is unusable: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoint, never corrupt
        with _setup_lock(self.state_dir):
            # Switching to WAL does not wait out the busy timeout: processes that open a
            # new state directory together take turns here.
            self._db.execute("PRAGMA journal_mode = WAL")
        with self._tx() as db:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                return
            version = int(row[0])
            if not 1 <= version <= SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema {row[0]}; this version reads {SCHEMA_VERSION}")
            while version < SCHEMA_VERSION:
                for step in _MIGRATIONS[version]:
                    if isinstance(step, str):
                        db.execute(step)
                    else:
                        step(db)
                version += 1
            db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``), so it never has to upgrade."""
        with self._lock, _sqlite_errors(self.state_dir):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock, contextlib.suppress(sqlite3.ProgrammingError):
            self._db.close()

    # -- manifests -----------------------------------------------------------------------

    def put_manifest(self, manifest: Manifest) -> None:
        """Store a (verified) manifest; one already stored is kept. A listed directory's row
        holds its root, and its listing's id is recorded (the listing is a file beside)."""
        cid = manifest.content_id.digest
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO manifests VALUES (?,?,?,?,?,?,?)",
                       (cid, manifest.kind, manifest.name, manifest.total_size,
                        manifest.chunk_count, manifest.publisher.key, manifest.encode()))
            if manifest.listing is not None:
                db.execute("INSERT OR IGNORE INTO listings VALUES (?,?)",
                           (manifest.listing.content_id.digest, cid))

    def listing_owner(self, listing_id: bytes) -> bytes | None:
        """The listed directory whose listing has id ``listing_id``, or None."""
        rows = self._query("SELECT content_id FROM listings WHERE listing_id=?", (listing_id,))
        return bytes(rows[0][0]) if rows else None

    def manifest_data(self, cid: bytes) -> bytes | None:
        """The encoded manifest stored for ``cid``, or None."""
        rows = self._query("SELECT data FROM manifests WHERE content_id=?", (cid,))
        return bytes(rows[0][0]) if rows else None

    def manifest_ids(self) -> list[bytes]:
        """The ids of every stored manifest."""
        return [bytes(r[0]) for r in self._query("SELECT content_id FROM manifests")]

    # -- shares --------------------------------------------------------------------------

    def put_share(self, manifest: Manifest, files: Iterable[SharedFile], *, root: Path,
                  origin: str, now: float) -> None:
        """Record that ``manifest`` (already stored) is served from ``files``, one per entry in
        order, replacing an earlier record of the same share. ``files`` is taken one at a time
        (it may be a generator): rows are never all in memory."""
        cid = manifest.content_id.digest
        rows = ((cid, i, file.path, file.size, file.mtime_ns, entry.content_id.digest,
                 file.ctime_ns, file.ino)
                for i, (entry, file) in enumerate(zip(manifest.entries, files, strict=True)))
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO shares VALUES (?,?,?,?)", (cid, str(root), now, origin))
            db.execute("DELETE FROM share_files WHERE content_id=?", (cid,))
            db.executemany("INSERT INTO share_files (content_id, entry, path, size, mtime_ns, "
                           "file_id, ctime_ns, ino) VALUES (?,?,?,?,?,?,?,?)", rows)

    def remove_share(self, cid: bytes) -> bool:
        """Forget the share ``cid``. True if it was shared."""
        with self._tx() as db:
            db.execute("DELETE FROM share_files WHERE content_id=?", (cid,))
            return bool(db.execute("DELETE FROM shares WHERE content_id=?", (cid,)).rowcount > 0)

    def shares(self) -> list[ShareInfo]:
        """Every share, oldest first."""
        rows = self._query(
            "SELECT m.content_id, m.kind, m.name, m.size, m.chunks, s.root, s.added, s.origin, m.publisher "
            "FROM shares s JOIN manifests m USING (content_id) ORDER BY s.added")
        return [ShareInfo(ContentId(r[0]), r[1], r[2], r[3], r[4], Path(r[5]), r[6], r[7],
                          PeerId(r[8])) for r in rows]

    def is_shared(self, cid: bytes) -> bool:
        """Whether ``cid`` is a share."""
        return bool(self._query("SELECT 1 FROM shares WHERE content_id=?", (cid,)))

    def share_files(self, cid: bytes) -> list[SharedFile]:
        """The files the share ``cid`` is served from, one per entry in order (none if not shared)."""
        rows = self._query("SELECT path, size, mtime_ns, ctime_ns, ino FROM share_files "
                           "WHERE content_id=? ORDER BY entry", (cid,))
        return [SharedFile(str(r[0]), int(r[1]), int(r[2]), r[3], r[4]) for r in rows]

    def share_files_from(self, cid: bytes, first: int, count: int) -> dict[int, SharedFile]:
        """Entries ``first`` to ``first + count - 1`` of the share ``cid`` that exist, by entry:
        one range of the primary key, so the cost does not grow with the share's size."""
        rows = self._query("SELECT entry, path, size, mtime_ns, ctime_ns, ino FROM share_files "
                           "WHERE content_id=? AND entry>=? AND entry<?", (cid, first, first + count))
        return {int(entry): SharedFile(str(path), int(size), int(mtime_ns), ctime_ns, ino)
                for entry, path, size, mtime_ns, ctime_ns, ino in rows}

    def file_share(self, file_id: bytes) -> tuple[bytes, int, SharedFile] | None:
        """A share holding a file whose own content id is ``file_id``: (the share's id, the
        entry, the file), or None."""
        rows = self._query("SELECT content_id, entry, path, size, mtime_ns, ctime_ns, ino "
                           "FROM share_files WHERE file_id=? LIMIT 1", (file_id,))
        if not rows:
            return None
        cid, entry, path, size, mtime_ns, ctime_ns, ino = rows[0]
        return bytes(cid), int(entry), SharedFile(str(path), int(size), int(mtime_ns),
                                                  ctime_ns, ino)

    # -- downloads -----------------------------------------------------------------------

    def download_record(self, cid: bytes) -> DownloadRecord | None:
        """The record of the download ``cid``, or None."""
        rows = self._query("SELECT dest, partial, bitfield, state, selection, placed FROM downloads "
                           "WHERE content_id=?", (cid,))
        if not rows:
            return None
        dest, partial, bits, state, selection, placed = rows[0]
        return DownloadRecord(Path(str(dest)), Path(str(partial)), bytes(bits), str(state),
                              None if selection is None else bytes(selection),
                              None if placed is None else bytes(placed))

    def has_download(self, cid: bytes) -> bool:
        """Whether a download of ``cid`` is recorded (in any state)."""
        return bool(self._query("SELECT 1 FROM downloads WHERE content_id=?", (cid,)))

    def start_download(self, cid: bytes, dest: Path, partial: Path, bits: bytes, done: int,
                       now: float, selection: bytes | None = None) -> None:
        """Record the download ``cid`` as active (new, or resumed with ``bits``), wanting the
        files ``selection`` (None: every one); the manifest is already stored. A resumed
        download keeps its start time and the files it placed."""
        with self._tx() as db:
            db.execute("INSERT INTO downloads VALUES (?,?,?,?,?,?,?,?,NULL,?,NULL) "
                       "ON CONFLICT(content_id) "
                       "DO UPDATE SET dest=excluded.dest, partial=excluded.partial, state='active', "
                       "bitfield=excluded.bitfield, done_chunks=excluded.done_chunks, "
                       "updated=excluded.updated, error=NULL, selection=excluded.selection",
                       (cid, str(dest), str(partial), "active", bits, done, now, now, selection))

    def save_selection(self, cid: bytes, selection: bytes | None, now: float) -> None:
        """Record the files the download ``cid`` wants (None: every one)."""
        with self._tx() as db:
            db.execute("UPDATE downloads SET selection=?, updated=? WHERE content_id=?",
                       (selection, now, cid))

    def save_placed(self, cid: bytes, placed: bytes | None, now: float, *,
                    bits: bytes | None = None, done: int = 0, state: str | None = None) -> None:
        """Record the files the download ``cid`` put in place at its destination, and with
        ``bits`` (``done`` of them set) and ``state``, its bitfield and state in the same
        transaction."""
        with self._tx() as db:
            db.execute("UPDATE downloads SET placed=?, updated=? WHERE content_id=?",
                       (placed, now, cid))
            if bits is not None and state is not None:
                db.execute("UPDATE downloads SET bitfield=?, done_chunks=?, state=?, error=NULL "
                           "WHERE content_id=?", (bits, done, state, cid))

    def save_bits(self, cid: bytes, bits: bytes, done: int, state: str, now: float,
                  error: str | None = None) -> None:
        """Record a download's bitfield (``done`` bits set) and state."""
        with self._tx() as db:
            db.execute("UPDATE downloads SET bitfield=?, done_chunks=?, state=?, updated=?, error=? "
                       "WHERE content_id=?", (bits, done, state, now, error, cid))

    def set_download_state(self, cid: bytes, state: str, error: str | None, now: float) -> None:
        """Record a download's state (and why it failed), leaving its bitfield as it is."""
        with self._tx() as db:
            db.execute("UPDATE downloads SET state=?, error=?, updated=? WHERE content_id=?",
                       (state, error, now, cid))

    def remove_download(self, cid: bytes) -> Path | None:
        """Forget the download ``cid`` and its sources. Returns its partial path, if it had one."""
        with self._tx() as db:
            row = db.execute("SELECT partial FROM downloads WHERE content_id=?", (cid,)).fetchone()
            db.execute("DELETE FROM downloads WHERE content_id=?", (cid,))
            db.execute("DELETE FROM download_sources WHERE content_id=?", (cid,))
            db.execute("DELETE FROM download_limits WHERE content_id=?", (cid,))
        return Path(str(row[0])) if row else None

    def set_download_rate(self, cid: bytes, rate: float) -> None:
        """Record the download's own limit in bytes per second (0: none), kept across pause,
        resume and restarts. (A table of its own, which older versions of this schema
        ignore: they then apply only the node's limits.)"""
        with self._tx() as db:
            if rate > 0:
                db.execute("INSERT INTO download_limits VALUES (?, ?) ON CONFLICT(content_id) "
                           "DO UPDATE SET rate=excluded.rate", (cid, float(rate)))
            else:
                db.execute("DELETE FROM download_limits WHERE content_id=?", (cid,))

    def download_rate(self, cid: bytes) -> float:
        """The download's own recorded limit (0: none)."""
        rows = self._query("SELECT rate FROM download_limits WHERE content_id=?", (cid,))
        return float(rows[0][0]) if rows else 0.0

    def add_sources(self, cid: bytes, addrs: Sequence[tuple[str, int]], now: float) -> None:
        """Remember addresses to fetch ``cid`` from; ones already known keep their age."""
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO download_sources VALUES (?,?,?,?)",
                           [(cid, host, port, now) for host, port in addrs])

    def sources(self, cid: bytes) -> list[tuple[str, int]]:
        """Addresses remembered for ``cid``, oldest first."""
        return [(str(r[0]), int(r[1])) for r in self._query(
            "SELECT host, port FROM download_sources WHERE content_id=? ORDER BY added, rowid", (cid,))]

    def downloads(self, cid: bytes | None = None) -> list[DownloadInfo]:
        """Every download (or only the one of ``cid``), oldest first."""
        sql = ("SELECT d.content_id, m.name, m.size, m.chunks, d.done_chunks, d.state, d.dest, "
               "d.partial, d.error, d.selection, d.placed FROM downloads d "
               "JOIN manifests m USING (content_id)")
        rows = (self._query(sql + " ORDER BY d.started") if cid is None
                else self._query(sql + " WHERE content_id=?", (cid,)))
        return [DownloadInfo(ContentId(r[0]), r[1], r[2], r[3], r[4], r[5], Path(r[6]), Path(r[7]), r[8],
                             None if r[9] is None else bytes(r[9]),
                             None if r[10] is None else bytes(r[10]))
                for r in rows]

    def recorded_bitfield(self, cid: bytes) -> tuple[int, bytes] | None:
        """(chunk count, bits) a download has recorded as durable, or None if unknown."""
        rows = self._query("SELECT d.bitfield, m.chunks FROM downloads d JOIN manifests m "
                           "USING (content_id) WHERE content_id=?", (cid,))
        return (int(rows[0][1]), bytes(rows[0][0])) if rows else None

    # -- bans ----------------------------------------------------------------------------

    def ban(self, peer: PeerId, reason: str, now: float, until: float | None) -> None:
        """Ban ``peer`` from ``now`` until ``until`` (None: for good), replacing an earlier ban."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO bans VALUES (?,?,?,?)", (peer.key, reason, now, until))

    def is_banned(self, peer: PeerId, now: float) -> bool:
        """Whether ``peer`` is banned at ``now``."""
        rows = self._query("SELECT until FROM bans WHERE peer_id=?", (peer.key,))
        return bool(rows) and (rows[0][0] is None or float(rows[0][0]) > now)

    def bans(self) -> list[tuple[PeerId, str, float, float | None]]:
        """Every ban: (peer, reason, since, until or None)."""
        return [(PeerId(r[0]), r[1], r[2], r[3]) for r in
                self._query("SELECT peer_id, reason, banned_at, until FROM bans")]


@contextlib.contextmanager
def _setup_lock(state_dir: Path) -> Iterator[None]:
    fd = os.open(state_dir / ".store.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _sqlite_errors(state_dir: Path) -> Iterator[None]:
    """The one place SQLite's errors become ours: a full disk is :class:`DiskFull`."""
    try:
        yield
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise DiskFull(f"no space left for the database in {state_dir}: {exc}") from None
        if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
            raise StoreError(f"the database in {state_dir} failed: {exc}") from None
        raise
