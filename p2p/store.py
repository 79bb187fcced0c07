"""The local store: one SQLite database plus files on disk.

What lives where (all under the state directory, except the files themselves):

* ``store.sqlite3`` (WAL mode): shares, manifests, downloads and their verified-chunk
  bitfields, bans, known peers.
* Shared files are served **in place**, never copied. At share time the store
  records each file's size and mtime; every read checks both and re-hashes the
  chunk, so a file that changed is never served as the old content
  (:class:`~p2p.errors.ContentChanged`).
* A download writes into a partial file (a partial folder for a directory)
  beside its destination: ``NAME.p2p-partial``. On completion it is renamed into
  place and becomes a share served from there.

Chunk numbering: a manifest's chunks are numbered across its entries in order
(entry 0's chunks first). For a single file this is the file's own numbering.

Durability order (what makes a killed download resume without lying):

1. :meth:`PartialDownload.write_chunk` writes the verified bytes at their offset;
2. :meth:`PartialDownload.commit` ``fdatasync``\\ s the partial files, and only
   then writes the new bitfield to SQLite in one transaction.

So a chunk marked complete in the database always has its bytes on disk. Syncing
runs on its own thread and never holds up the transfer. A
chunk written but not yet committed when the process died is not trusted: on
resume, :meth:`PartialDownload.recover` re-hashes such chunks and keeps those
whose bytes verify, and everything else is fetched again.

Several processes may open the same state directory: SQLite (WAL, busy
timeout) keeps the database consistent, and a download holds an exclusive
``flock`` on its partial file, so a second process fetching the same content
gets :class:`~p2p.errors.StateDirLocked` instead of corrupting it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import mmap
import os
import resource
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .content import ContentId, FileEntry, Manifest, hash_chunk, open_under
from .durable import fsync_dir
from .errors import ContentChanged, DiskFull, NotFound, StateDirLocked, StoreError
from .identity import PeerId

DB_FILE = "store.sqlite3"
PARTIAL_SUFFIX = ".p2p-partial"
SCHEMA_VERSION = 1
DIRECT_ALIGN = 4096
"""Offsets and lengths of ``O_DIRECT`` writes are multiples of this (the largest common block size)."""
PREALLOCATE_MARGIN = 256 * 1024 * 1024
"""Preallocate only when this much would still be free afterwards."""
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
    PRIMARY KEY (content_id, entry));
CREATE INDEX IF NOT EXISTS share_files_by_file_id ON share_files(file_id);
CREATE TABLE IF NOT EXISTS downloads (
    content_id BLOB PRIMARY KEY REFERENCES manifests(content_id),
    dest TEXT NOT NULL, partial TEXT NOT NULL, state TEXT NOT NULL,
    bitfield BLOB NOT NULL, done_chunks INTEGER NOT NULL, started REAL NOT NULL,
    updated REAL NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS download_sources (
    content_id BLOB NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL, added REAL NOT NULL,
    PRIMARY KEY (content_id, host, port));
CREATE TABLE IF NOT EXISTS bans (
    peer_id BLOB PRIMARY KEY, reason TEXT NOT NULL, banned_at REAL NOT NULL, until REAL);
CREATE TABLE IF NOT EXISTS peers (
    peer_id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL, last_seen REAL NOT NULL);
"""


# -- bitfields: MSB first, the same layout as the wire ----------------------------------


def bitfield_new(count: int) -> bytearray:
    """An all-zero bitfield for ``count`` chunks."""
    return bytearray((count + 7) // 8)


def bit_get(bits: bytes | bytearray, index: int) -> bool:
    """Whether bit ``index`` is set."""
    return bool(bits[index >> 3] & (0x80 >> (index & 7)))


def bit_set(bits: bytearray, index: int) -> None:
    """Set bit ``index``."""
    bits[index >> 3] |= 0x80 >> (index & 7)


def bit_count(bits: bytes | bytearray) -> int:
    """Number of set bits."""
    return int.from_bytes(bits, "big").bit_count()


def full_bitfield(count: int) -> bytes:
    """A bitfield with the first ``count`` bits set."""
    bits = bitfield_new(count)
    for i in range(count // 8):
        bits[i] = 0xFF
    for i in range(count // 8 * 8, count):
        bit_set(bits, i)
    return bytes(bits)


@dataclass(frozen=True)
class ChunkSpan:
    """Where chunk ``index`` of a manifest lives: entry, offset in that file, length."""

    entry: int
    offset: int
    length: int


class ChunkMap:
    """Maps a manifest's global chunk numbers to (entry, offset, length) and back to hashes."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.starts: list[int] = []
        total = 0
        for entry in manifest.entries:
            self.starts.append(total)
            total += entry.info.chunk_count
        self.count = total

    def _entry(self, index: int) -> tuple[int, int]:
        """(entry, the chunk's number within that entry's file)."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        # Empty entries share their start with the next entry; bisect_right picks the last of
        # equal starts, which is the non-empty one.
        entry = bisect.bisect_right(self.starts, index) - 1
        return entry, index - self.starts[entry]

    def locate(self, index: int) -> ChunkSpan:
        """The span of chunk ``index``. Raises ``IndexError`` when out of range."""
        entry, local = self._entry(index)
        info = self.manifest.entries[entry].info
        return ChunkSpan(entry, info.chunk_offset(local), info.chunk_length(local))

    def expected_hash(self, index: int) -> bytes:
        """The hash chunk ``index`` must have."""
        entry, local = self._entry(index)
        return self.manifest.entries[entry].info.chunk_hash(local)

    def verify(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """True if ``data`` is exactly chunk ``index``."""
        entry, local = self._entry(index)
        return self.manifest.entries[entry].info.verify_chunk(local, data)


@dataclass(frozen=True)
class ShareInfo:
    """A row of ``p2p ls``: something this node serves."""

    content_id: ContentId
    kind: str
    name: str
    size: int
    chunks: int
    root: Path
    added: float
    origin: str
    """``"shared"`` (``p2p share``) or ``"downloaded"``."""
    publisher: PeerId


@dataclass(frozen=True)
class DownloadInfo:
    """A row of ``p2p ls``: a download and how far it got."""

    content_id: ContentId
    name: str
    size: int
    chunks: int
    done_chunks: int
    state: str
    """``"active"``, ``"paused"``, ``"complete"`` or ``"failed"``."""
    dest: Path
    partial: Path
    error: str | None


def _ignore_sigxfsz() -> None:
    # With a file-size limit, the kernel kills the writer with SIGXFSZ unless it is
    # ignored; ignored, write() fails with EFBIG and we report DiskFull instead.
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class Store:
    """The state directory's database and the files it points at. Thread-safe for reads and writes."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.state_dir / DB_FILE, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state directory {self.state_dir}: {exc}") from None
        self._lock = threading.RLock()
        self._active: dict[bytes, PartialDownload] = {}
        self._manifest_cache: dict[bytes, tuple[Manifest, ChunkMap]] = {}
        _ignore_sigxfsz()
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoint, never corrupt
            with _setup_lock(self.state_dir):
                # Switching to WAL does not wait out the busy timeout: processes that open a
                # new state directory together take turns here.
                self._db.execute("PRAGMA journal_mode = WAL")
            with self._tx():
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreError(f"{self.state_dir / DB_FILE} has schema {row[0]}; this version reads {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the database in {self.state_dir} is unusable: {exc}") from None

    # -- plumbing --------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
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
        """Close every open download and the database. Idempotent."""
        with self._lock:
            for partial in list(self._active.values()):
                partial.close()
            self._active.clear()
            with contextlib.suppress(sqlite3.ProgrammingError):
                self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifests -------------------------------------------------------------------

    def put_manifest(self, manifest: Manifest) -> None:
        """Store a (verified) manifest."""
        cid = manifest.content_id.digest
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO manifests VALUES (?,?,?,?,?,?,?)",
                       (cid, manifest.kind, manifest.name, manifest.total_size,
                        manifest.chunk_count, manifest.publisher.key, manifest.encode()))

    def get_manifest(self, content_id: ContentId | bytes) -> Manifest | None:
        """The stored manifest for an id, or None."""
        return self._manifest_and_map(_raw(content_id))[0]

    def _manifest_and_map(self, cid: bytes) -> tuple[Manifest | None, ChunkMap | None]:
        cached = self._manifest_cache.get(cid)
        if cached:
            return cached
        rows = self._query("SELECT data FROM manifests WHERE content_id=?", (cid,))
        if not rows:
            return None, None
        manifest = Manifest.decode(rows[0][0])
        pair = (manifest, ChunkMap(manifest))
        self._manifest_cache[cid] = pair
        return pair

    # -- shares ----------------------------------------------------------------------

    def add_share(self, manifest: Manifest, files: list[tuple[FileEntry, Path]], *,
                  root: Path, origin: str = "shared") -> None:
        """Serve ``manifest`` from ``files`` in place (recording size and mtime of each)."""
        cid = manifest.content_id.digest
        by_path = {entry.path: path for entry, path in files}
        rows = []
        for i, entry in enumerate(manifest.entries):
            path = Path(by_path[entry.path]).resolve()
            st = path.stat()
            if st.st_size != entry.info.size:
                raise ContentChanged(f"{path} changed while it was being shared")
            rows.append((cid, i, str(path), st.st_size, st.st_mtime_ns, entry.content_id.digest))
        self.put_manifest(manifest)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO shares VALUES (?,?,?,?)",
                       (cid, str(Path(root).resolve()), time.time(), origin))
            db.execute("DELETE FROM share_files WHERE content_id=?", (cid,))
            db.executemany("INSERT INTO share_files VALUES (?,?,?,?,?,?)", rows)

    def remove_share(self, content_id: ContentId | bytes) -> bool:
        """Stop serving ``content_id``. True if it was shared."""
        cid = _raw(content_id)
        with self._tx() as db:
            db.execute("DELETE FROM share_files WHERE content_id=?", (cid,))
            return db.execute("DELETE FROM shares WHERE content_id=?", (cid,)).rowcount > 0

    def shares(self) -> list[ShareInfo]:
        """Everything this node serves in full."""
        rows = self._query(
            "SELECT m.content_id, m.kind, m.name, m.size, m.chunks, s.root, s.added, s.origin, m.publisher "
            "FROM shares s JOIN manifests m USING (content_id) ORDER BY s.added")
        return [ShareInfo(ContentId(r[0]), r[1], r[2], r[3], r[4], Path(r[5]), r[6], r[7],
                          PeerId(r[8])) for r in rows]

    def is_shared(self, content_id: ContentId | bytes) -> bool:
        """Whether ``content_id`` is served in full."""
        return bool(self._query("SELECT 1 FROM shares WHERE content_id=?", (_raw(content_id),)))

    def resolve_prefix(self, text: str) -> ContentId | None:
        """The unique stored content id whose text form starts with ``text`` (for ``p2p verify abc``)."""
        matches = [ContentId(r[0]) for r in self._query("SELECT content_id FROM manifests")
                   if str(ContentId(r[0])).startswith(text) or ContentId(r[0]).short().startswith(text)]
        return matches[0] if len(matches) == 1 else None

    # -- serving (the wire server's ChunkSource) ---------------------------------------

    def manifest(self, content_id: bytes) -> bytes | None:
        """Encoded manifest for a content id we can serve (fully or partly), else None."""
        # Downloads are served only while they run here (their files are open).
        if content_id not in self._active and not self.is_shared(content_id):
            return None
        rows = self._query("SELECT data FROM manifests WHERE content_id=?", (content_id,))
        return bytes(rows[0][0]) if rows else None

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        """(chunk count, bits) of what we can serve of ``content_id``, or None."""
        partial = self._active.get(content_id)
        if partial is not None:
            return partial.chunk_map.count, bytes(partial.bits)
        if self.is_shared(content_id):
            _, cmap = self._manifest_and_map(content_id)
            assert cmap is not None
            return cmap.count, full_bitfield(cmap.count)
        file_rows = self._query("SELECT f.content_id, f.entry FROM share_files f WHERE f.file_id=? LIMIT 1",
                                (content_id,))
        if file_rows:
            manifest, _ = self._manifest_and_map(file_rows[0][0])
            assert manifest is not None
            count = manifest.entries[file_rows[0][1]].info.chunk_count
            return count, full_bitfield(count)
        return None

    def read_chunk(self, content_id: bytes, index: int) -> bytes:
        """The verified bytes of chunk ``index`` of ``content_id``.

        Raises :class:`NotFound` if we do not hold it and :class:`ContentChanged`
        if the file on disk no longer holds those bytes (the share is then
        dropped, so it is not announced again).
        """
        partial = self._active.get(content_id)
        if partial is not None:
            return partial.read_chunk(index)
        rows = self._query("SELECT entry, path, size, mtime_ns FROM share_files WHERE content_id=? ORDER BY entry",
                           (content_id,))
        if rows:
            manifest, cmap = self._manifest_and_map(content_id)
            assert manifest is not None and cmap is not None
            try:
                span = cmap.locate(index)
            except IndexError:
                raise NotFound(f"chunk {index} is out of range") from None
            _, path, size, mtime_ns = rows[span.entry]
            data = _read_verified(Path(str(path)), int(size), int(mtime_ns), span.offset, span.length,
                                  cmap.expected_hash(index))
            if data is None:
                self.remove_share(content_id)
                raise ContentChanged(f"{path} changed since it was shared; no longer serving it")
            return data
        file_rows = self._query("SELECT path, size, mtime_ns, content_id, entry FROM share_files WHERE file_id=? LIMIT 1",
                                (content_id,))
        if file_rows:
            path, size, mtime_ns, parent, entry = file_rows[0]
            manifest, _ = self._manifest_and_map(parent)
            assert manifest is not None
            info = manifest.entries[entry].info
            if not 0 <= index < info.chunk_count:
                raise NotFound(f"chunk {index} is out of range")
            data = _read_verified(Path(str(path)), int(size), int(mtime_ns), index * info.chunk_size,
                                  info.chunk_length(index), info.chunk_hash(index))
            if data is None:
                self.remove_share(parent)
                raise ContentChanged(f"{path} changed since it was shared; no longer serving it")
            return data
        partial_row = self._query("SELECT 1 FROM downloads WHERE content_id=?", (content_id,))
        if partial_row:
            raise NotFound("that download is not running in this process")
        raise NotFound("content not held here")

    # -- downloads ---------------------------------------------------------------------

    def open_download(self, manifest: Manifest, dest: Path) -> PartialDownload:
        """Start or resume the download of a verified ``manifest`` into ``dest``.

        Takes an exclusive lock (:class:`StateDirLocked` if another process
        holds it). An existing partial download of the same content resumes
        from its recorded bitfield.
        """
        cid = manifest.content_id.digest
        with self._lock:
            if cid in self._active:
                raise StateDirLocked(f"{manifest.content_id} is already being downloaded")
            self.put_manifest(manifest)
            rows = self._query("SELECT dest, partial, bitfield, state FROM downloads WHERE content_id=?", (cid,))
            cmap = self._manifest_and_map(cid)[1]
            assert cmap is not None
            if rows and Path(str(rows[0][1])).exists():
                dest = Path(str(rows[0][0]))
                partial_path = Path(str(rows[0][1]))
                bits = bytearray(rows[0][2])
            else:
                dest = Path(dest).resolve()
                partial_path = dest.with_name(dest.name + PARTIAL_SUFFIX)
                bits = bitfield_new(cmap.count)
            now = time.time()
            with self._tx() as db:
                db.execute("INSERT INTO downloads VALUES (?,?,?,?,?,?,?,?,NULL) ON CONFLICT(content_id) "
                           "DO UPDATE SET dest=excluded.dest, partial=excluded.partial, state='active', "
                           "bitfield=excluded.bitfield, done_chunks=excluded.done_chunks, "
                           "updated=excluded.updated, error=NULL",
                           (cid, str(dest), str(partial_path), "active", bytes(bits), bit_count(bits),
                            now, now))
            partial = PartialDownload(self, manifest, cmap, dest, partial_path, bits)
            self._active[cid] = partial
            return partial

    def _save_bits(self, cid: bytes, bits: bytes, state: str, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE downloads SET bitfield=?, done_chunks=?, state=?, updated=?, error=? "
                       "WHERE content_id=?", (bits, bit_count(bits), state, time.time(), error, cid))

    def _release(self, cid: bytes) -> None:
        with self._lock:
            self._active.pop(cid, None)

    def set_download_state(self, content_id: ContentId | bytes, state: str, error: str | None = None) -> None:
        """Mark a download ``paused``, ``failed`` or ``active`` (the bitfield is untouched)."""
        with self._tx() as db:
            db.execute("UPDATE downloads SET state=?, error=?, updated=? WHERE content_id=?",
                       (state, error, time.time(), _raw(content_id)))

    def remove_download(self, content_id: ContentId | bytes) -> None:
        """Forget a download and delete its partial data (cancel)."""
        cid = _raw(content_id)
        rows = self._query("SELECT partial FROM downloads WHERE content_id=?", (cid,))
        with self._tx() as db:
            db.execute("DELETE FROM downloads WHERE content_id=?", (cid,))
            db.execute("DELETE FROM download_sources WHERE content_id=?", (cid,))
        if rows:
            path = Path(str(rows[0][0]))
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def add_sources(self, content_id: ContentId | bytes, addrs: list[tuple[str, int]]) -> None:
        """Remember addresses to fetch ``content_id`` from (a ticket's), so a resume after a
        restart can dial them again without the ticket."""
        now = time.time()
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO download_sources VALUES (?,?,?,?)",
                           [(_raw(content_id), host, port, now) for host, port in addrs])

    def sources(self, content_id: ContentId | bytes) -> list[tuple[str, int]]:
        """Addresses remembered for ``content_id``, oldest first."""
        return [(str(r[0]), int(r[1])) for r in self._query(
            "SELECT host, port FROM download_sources WHERE content_id=? ORDER BY added, rowid",
            (_raw(content_id),))]

    def downloads(self) -> list[DownloadInfo]:
        """Every download this store knows, with its progress."""
        rows = self._query("SELECT d.content_id, m.name, m.size, m.chunks, d.done_chunks, d.state, d.dest, "
                           "d.partial, d.error FROM downloads d JOIN manifests m USING (content_id) ORDER BY d.started")
        return [DownloadInfo(ContentId(r[0]), r[1], r[2], r[3], r[4], r[5], Path(r[6]), Path(r[7]), r[8])
                for r in rows]

    def recorded_bitfield(self, content_id: ContentId | bytes) -> tuple[int, bytes] | None:
        """(chunk count, bits) a download has recorded as durable, or None if unknown."""
        rows = self._query("SELECT d.bitfield, m.chunks FROM downloads d JOIN manifests m "
                           "USING (content_id) WHERE content_id=?", (_raw(content_id),))
        return (int(rows[0][1]), bytes(rows[0][0])) if rows else None

    def download_info(self, content_id: ContentId | bytes) -> DownloadInfo | None:
        """One download's row, or None."""
        cid = ContentId(_raw(content_id))
        return next((d for d in self.downloads() if d.content_id == cid), None)

    # -- bans and peers ---------------------------------------------------------------------

    def ban(self, peer: PeerId, reason: str, duration: float | None = None) -> None:
        """Ban ``peer`` (for ``duration`` seconds, or for good). Kept across restarts."""
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO bans VALUES (?,?,?,?)",
                       (peer.key, reason, now, None if duration is None else now + duration))

    def is_banned(self, peer: PeerId) -> bool:
        """Whether ``peer`` is banned now."""
        rows = self._query("SELECT until FROM bans WHERE peer_id=?", (peer.key,))
        return bool(rows) and (rows[0][0] is None or float(rows[0][0]) > time.time())

    def bans(self) -> list[tuple[PeerId, str, float, float | None]]:
        """Every ban: (peer, reason, since, until or None)."""
        return [(PeerId(r[0]), r[1], r[2], r[3]) for r in
                self._query("SELECT peer_id, reason, banned_at, until FROM bans")]

    def remember_peer(self, peer: PeerId, host: str, port: int) -> None:
        """Record where a peer was last reachable."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO peers VALUES (?,?,?,?)", (peer.key, host, port, time.time()))

    def known_peers(self, limit: int = 64) -> list[tuple[PeerId, str, int]]:
        """Recently seen peers, newest first."""
        return [(PeerId(r[0]), str(r[1]), int(r[2])) for r in
                self._query("SELECT peer_id, host, port FROM peers ORDER BY last_seen DESC LIMIT ?", (limit,))]


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


def _raw(content_id: ContentId | bytes) -> bytes:
    return content_id.digest if isinstance(content_id, ContentId) else bytes(content_id)


def _read_verified(path: Path, size: int, mtime_ns: int, offset: int, length: int,
                   expected: bytes) -> bytes | None:
    """Read a chunk of a shared file; None if the file changed (size, mtime or bytes)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return None
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length or hash_chunk(data) != expected:
        return None
    return data


class PartialDownload:
    """The on-disk side of one running download: write verified chunks, commit, finalize.

    Not an asyncio object: the download engine calls it from worker threads.
    Writes may run in parallel; :meth:`commit`, :meth:`finalize` and
    :meth:`close` take one lock, and closing waits for writes in progress, so a
    file descriptor is never used after it is closed.

    Writing: a new partial file is preallocated (when the disk has room), and
    whole aligned chunks are written with ``O_DIRECT`` from a page-aligned
    buffer. Verified chunks are final, so the page cache gains nothing from
    them, and on virtual machines faulting in fresh page-cache memory costs
    more than the copy into the aligned buffer. Any file system that refuses
    ``O_DIRECT`` (tmpfs) gets ordinary buffered writes.
    """

    def __init__(self, store: Store, manifest: Manifest, chunk_map: ChunkMap, dest: Path,
                 partial_path: Path, bits: bytearray, *, direct_io: bool = True) -> None:
        self.store = store
        self.manifest = manifest
        self.chunk_map = chunk_map
        self.dest = dest
        self.partial_path = partial_path
        self.bits = bits
        """Chunks whose bytes are written and verified (committed or not)."""
        self.resumed = False
        """True when the partial data existed before (a resume): :meth:`recover` is worth running."""
        self._committed = bytes(bits)
        self._fds: dict[int, int] = {}
        self._direct: dict[int, int] = {}
        self._buffered_only: set[int] = set()
        """Entries whose file system refused a direct write: written through the page cache.
        Their direct descriptors stay open until :meth:`close` (another thread may be using one)."""
        self._direct_wanted = direct_io
        self._buffers = threading.local()
        self._lock_fd = -1
        self._closed = False
        self._bits_lock = threading.Lock()
        self._life = threading.Condition(threading.RLock())
        self._users = 0
        """Writes, reads and syncs in progress: closing waits for them, without holding a lock
        across slow I/O (the server reads on its event loop)."""
        try:
            self._open()
        except BaseException:
            store._release(manifest.content_id.digest)
            self.close()
            raise

    @property
    def content_id(self) -> ContentId:
        """What is being downloaded."""
        return self.manifest.content_id

    @property
    def done(self) -> int:
        """Chunks held."""
        return bit_count(self.bits)

    @property
    def complete(self) -> bool:
        """Every chunk held."""
        return self.done == self.chunk_map.count

    def has(self, index: int) -> bool:
        """Whether chunk ``index`` is held."""
        return bit_get(self.bits, index)

    def _open(self) -> None:
        is_dir = self.manifest.kind == "dir"
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.resumed = self.partial_path.exists()
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        if is_dir:
            self.partial_path.mkdir(exist_ok=True)
            self._lock_fd = os.open(self.partial_path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            self._lock_fd = os.open(self.partial_path, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirLocked(f"{self.partial_path} is being downloaded by another process") from None
        if not is_dir:
            self._fds[0] = os.dup(self._lock_fd)
        else:
            for i, entry in enumerate(self.manifest.entries):
                self._fds[i] = open_under(self.partial_path, entry.path, os.O_RDWR | os.O_CREAT)
        if not self.resumed:
            self._preallocate()
        if self._direct_wanted and hasattr(os, "O_DIRECT"):
            for i, entry in enumerate(self.manifest.entries):
                path = self.partial_path if not is_dir else self.partial_path / entry.path
                try:  # the file was just opened safely (no links); reopen it for direct writes
                    self._direct[i] = os.open(path, os.O_WRONLY | os.O_DIRECT | nofollow)
                except OSError:
                    self._close_direct()
                    break

    def _preallocate(self) -> None:
        """Reserve the whole size up front (fewer fragments, no allocation per write), only when
        the disk and the file-size limit clearly have room: running out must happen chunk by
        chunk, with progress kept, not all at once here."""
        total = self.manifest.total_size
        try:
            st = os.statvfs(self.partial_path if self.partial_path.is_dir() else self.partial_path.parent)
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        except OSError:
            return
        largest = max((e.info.size for e in self.manifest.entries), default=0)
        if st.f_bavail * st.f_frsize < total + PREALLOCATE_MARGIN or \
                (limit != resource.RLIM_INFINITY and limit < largest):
            return
        for i, entry in enumerate(self.manifest.entries):
            if entry.info.size == 0:
                continue
            try:
                os.posix_fallocate(self._fds[i], 0, entry.info.size)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fds[i], 0)  # give back what a failed call reserved
                return

    def _close_direct(self) -> None:
        for fd in self._direct.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._direct.clear()

    def _aligned(self, size: int) -> mmap.mmap:
        buf: mmap.mmap | None = getattr(self._buffers, "buf", None)
        if buf is None or len(buf) < size:
            buf = mmap.mmap(-1, max(size, DIRECT_ALIGN))  # anonymous maps are page-aligned
            self._buffers.buf = buf
        return buf

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Write verified chunk ``index`` at its offset. Raises :class:`DiskFull` when out of space.

        The caller has checked the hash; the bit is set in memory and becomes
        durable at the next :meth:`commit`.
        """
        span = self.chunk_map.locate(index)
        with self._using(StoreError(f"{self.partial_path} is closed")):
            try:
                self._write(span, data)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise DiskFull(f"no space left to write {self.partial_path}: {exc.strerror}") from None
                raise
        with self._bits_lock:
            bit_set(self.bits, index)

    @contextlib.contextmanager
    def _using(self, closed_error: Exception) -> Iterator[None]:
        with self._life:
            if self._closed:
                raise closed_error
            self._users += 1
        try:
            yield
        finally:
            with self._life:
                self._users -= 1
                self._life.notify_all()

    def _write(self, span: ChunkSpan, data: bytes | bytearray | memoryview) -> None:
        direct = self._direct.get(span.entry)
        if direct is not None and span.entry not in self._buffered_only and \
                span.length % DIRECT_ALIGN == 0 and span.offset % DIRECT_ALIGN == 0:
            buf = self._aligned(span.length)
            buf[:span.length] = data
            try:
                written = os.pwrite(direct, memoryview(buf)[:span.length], span.offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # This file system takes no direct writes after all: buffered from now on.
                self._buffered_only.add(span.entry)
            else:
                if written == span.length:
                    return
        fd = self._fds[span.entry]
        view = memoryview(data)
        written = 0
        while written < span.length:
            written += os.pwrite(fd, view[written:], span.offset + written)

    def read_chunk(self, index: int) -> bytes:
        """Serve a held chunk to another peer (partial seeding), re-verified."""
        if not 0 <= index < self.chunk_map.count or not bit_get(self.bits, index):
            raise NotFound(f"chunk {index} not held yet")
        span = self.chunk_map.locate(index)
        with self._using(NotFound("download closed")):
            data = os.pread(self._fds[span.entry], span.length, span.offset)
        if hash_chunk(data) != self.chunk_map.expected_hash(index):
            raise ContentChanged(f"{self.partial_path} was modified on disk")
        return data

    def commit(self) -> int:
        """Make written chunks durable, then record them. Returns how many were newly recorded.

        Order: ``fdatasync`` every partial file first, then write the bitfield
        to the database, so no record ever claims bytes that are not on disk.
        """
        with self._bits_lock:
            snapshot = bytes(self.bits)
        if snapshot == self._committed or self._closed:
            return 0
        with self._using(StoreError(f"{self.partial_path} is closed")):
            try:
                for fd in list(self._fds.values()):
                    os.fdatasync(fd)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise DiskFull(f"no space left to write {self.partial_path}: {exc.strerror}") from None
                raise
            with self._life:
                if self._closed:  # finalized meanwhile: its record is the last word
                    return 0
                new = bit_count(snapshot) - bit_count(self._committed)
                self.store._save_bits(self.content_id.digest, snapshot, "active")
                self._committed = snapshot
                return new

    def recover(self) -> list[int]:
        """Re-hash chunks not recorded as done; keep those whose bytes verify. Returns their indexes.

        After a crash, chunks written but not yet committed are still on disk
        (usually); checking them costs one BLAKE3 pass instead of a download.
        Only worth calling when :attr:`resumed`: a new partial file holds nothing.
        """
        found = []
        with self._using(StoreError(f"{self.partial_path} is closed")):
            for index in range(self.chunk_map.count):
                if bit_get(self.bits, index):
                    continue
                span = self.chunk_map.locate(index)
                fd = self._fds[span.entry]
                if os.fstat(fd).st_size < span.offset + span.length:
                    continue
                data = os.pread(fd, span.length, span.offset)
                if hash_chunk(data) == self.chunk_map.expected_hash(index):
                    with self._bits_lock:
                        bit_set(self.bits, index)
                    found.append(index)
        if found:
            self.commit()
        return found

    def finalize(self) -> Path:
        """Every chunk is held: rename into place, record completion, serve from there.

        Returns the final path. The bytes are in the page cache (or on disk,
        written directly), which survives a killed process; making them durable
        against an OS crash is :func:`seal`'s job, run afterwards off the
        download's critical path (a slow disk would otherwise cap every download
        at its sync speed). Until then the file is already served, and every
        read re-hashes its chunk, so a file torn by an OS crash is never served
        as this content.

        Raises :class:`~p2p.errors.StoreError` if the destination exists already.
        """
        with self._life:
            if not self.complete:
                raise StoreError("finalize() before every chunk is held")
            while self._users:  # a duplicate end-game copy still being written, a read, a sync
                self._life.wait()
            for i, entry in enumerate(self.manifest.entries):
                fd = self._fds[i]
                if os.fstat(fd).st_size != entry.info.size:
                    os.ftruncate(fd, entry.info.size)  # empty files and short writes
            if self.dest.exists():
                raise StoreError(f"{self.dest} already exists; not overwriting it (the download is kept in {self.partial_path})")
            os.rename(self.partial_path, self.dest)
            files = [(entry, self.dest if self.manifest.kind == "file" else self.dest / entry.path)
                     for entry in self.manifest.entries]
            self.store._save_bits(self.content_id.digest, bytes(self.bits), "complete")
            self.close()
        self.store.add_share(self.manifest, files, root=self.dest, origin="downloaded")
        return self.dest

    def close(self) -> None:
        """Release files and the lock (progress stays recorded). Idempotent; waits for writes in progress."""
        with self._life:
            if self._closed:
                return
            self._closed = True
            while self._users:
                self._life.wait()
            self.store._release(self.content_id.digest)
            self._close_direct()
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
            if self._lock_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = -1


def seal(path: Path) -> None:
    """Make a finished download durable: ``fsync`` its file (or every file of its folder), then
    the folders, so the rename into place survives an OS crash too."""
    if path.is_dir():
        for dirpath, _, filenames in os.walk(path):
            for name in filenames:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(Path(dirpath))
    else:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(path.parent)
