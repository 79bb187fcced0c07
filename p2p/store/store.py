"""The store: one object over the state directory's database and the files it points at.

It wires the pieces together: the :class:`~p2p.store.database.Database` for records, the
:class:`~p2p.store.serving.SharedFile` change check for shares served in place, and
:class:`~p2p.store.partial.PartialDownload` for downloads running in this process. It is
also the wire server's chunk source (:meth:`Store.manifest`, :meth:`Store.bitfield`,
:meth:`Store.read_chunk`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

from ..bitfield import bit_count, bit_get, bit_indexes, bit_set, bitfield_new, full_bitfield
from ..content import ContentId, FileEntry, FileInfo, ListedRoot, Manifest, decode_manifest
from ..durable import write_atomic
from ..errors import (
    ContentChanged,
    DecodeError,
    IntegrityError,
    NotFound,
    StateDirLocked,
    UnsafePath,
)
from ..identity import PeerId
from .chunks import ChunkMap
from .database import Database, DownloadInfo, DownloadRecord, ShareInfo
from .partial import PARTIAL_SUFFIX, PartialDownload, ignore_sigxfsz
from .serving import SharedFile, ShareHealth, check_share

__all__ = ["Store"]

SHARE_FILE_BLOCK = 256
"""Share entries read from the database together (see :meth:`Store._share_file`)."""
SHARE_CHECK_BLOCK = 4096
"""Share entries read at a time by :meth:`Store.share_health`: a folder of 100,000 files
is checked in 25 range queries, never holding all its rows at once."""
LISTINGS_DIR = "listings"
"""Folder of the state directory holding listed directories' listings, one file per listing
named by its id in hex (the database row holds the root)."""
MAX_CACHED_SHARE_FILES = 131072
"""Share entries whose file is remembered for serving (some MiB); past it the oldest block is
forgotten, so memory stays bounded however many files are shared. Enough for a folder of
100,000 files (issue 14's mixed folder), served in the random order downloaders ask for."""


class Store:
    """The state directory's database and the files it points at. Thread-safe for reads and writes.

    ``clock`` gives the time, in seconds since the epoch, for every timestamp the store
    records (a share's age, a download's updates, a ban's expiry); tests pass their own.
    Raises :class:`~p2p.errors.StoreError` if the state directory cannot be used.
    """

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        """The state directory: the database lives here, the shared files stay where they are."""
        self._clock = clock
        self._db = Database(self.state_dir)
        self._lock = threading.RLock()
        """Guards the running downloads (and opening one)."""
        self._active: dict[bytes, PartialDownload] = {}
        self._manifest_cache: dict[bytes, tuple[Manifest, ChunkMap]] = {}
        self._unusable: set[bytes] = set()
        """Listed directories whose listing file was found missing or damaged: not read and
        hashed again on every request for them (until :meth:`put_manifest` writes it again)."""
        self._share_files: collections.OrderedDict[tuple[bytes, int], SharedFile | None] = \
            collections.OrderedDict()
        """(share, entry) -> the file it is served from (None: not a share's entry), so that
        serving a chunk reads no database row; emptied whenever a share is added or removed."""
        self._share_lock = threading.Lock()
        ignore_sigxfsz()

    def close(self) -> None:
        """Close every open download and the database. Idempotent."""
        with self._lock:
            for partial in list(self._active.values()):
                partial.close()
            self._active.clear()
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifests -------------------------------------------------------------------

    def put_manifest(self, manifest: Manifest, listing: bytes | bytearray | None = None) -> None:
        """Store a (verified) manifest. A listed directory's listing is written beside the
        database first: ``listing`` when the caller has its bytes (a download that just
        fetched them), else encoded again from the entries."""
        if manifest.listing is not None:
            self._write_listing(manifest, listing)
            self._unusable.discard(manifest.content_id.digest)
        self._db.put_manifest(manifest)

    def _listing_path(self, listing: FileInfo) -> Path:
        return self.state_dir / LISTINGS_DIR / listing.content_id.digest.hex()

    def _write_listing(self, manifest: Manifest, listing: bytes | bytearray | None) -> None:
        assert manifest.listing is not None
        path = self._listing_path(manifest.listing)
        if _listing_intact(path, manifest.listing):
            return  # written before; a damaged copy (of any size) is replaced
        write_atomic(path, manifest.encode_listing() if listing is None else listing, 0o644)

    def stored_listing(self, root: ListedRoot) -> Manifest | None:
        """The whole manifest of ``root`` if its listing is held here and matches its hashes
        (a download that resumes needs not fetch it again), else None."""
        try:
            data = self._listing_path(root.listing).read_bytes()
        except OSError:
            return None
        try:
            return root.complete(data)
        except (IntegrityError, DecodeError, UnsafePath):
            return None  # damaged on disk: fetched again

    def get_manifest(self, content_id: ContentId | bytes) -> Manifest | None:
        """The stored manifest for an id, or None."""
        return self._manifest_and_map(_raw(content_id))[0]

    def _manifest_and_map(self, cid: bytes) -> tuple[Manifest | None, ChunkMap | None]:
        cached = self._manifest_cache.get(cid)
        if cached:
            return cached
        if cid in self._unusable:
            return None, None
        data = self._db.manifest_data(cid)
        if data is None:
            return None, None
        decoded = decode_manifest(data)
        if isinstance(decoded, ListedRoot):
            manifest = self.stored_listing(decoded)
            if manifest is None:
                self._unusable.add(cid)
                return None, None  # the listing is gone or damaged: as if never stored
        else:
            manifest = decoded
        pair = (manifest, ChunkMap(manifest))
        self._manifest_cache[cid] = pair
        return pair

    def _keep_manifest(self, manifest: Manifest) -> None:
        """Cache ``manifest`` (verified, just stored) as the one of its id: decoding the stored
        copy again would hold a second copy of every entry of a large folder."""
        cid = manifest.content_id.digest
        if cid not in self._manifest_cache:
            self._manifest_cache[cid] = (manifest, ChunkMap(manifest))

    def _chunk_map(self, cid: bytes) -> tuple[Manifest, ChunkMap]:
        """The manifest and chunk map of ``cid``, which is recorded as stored. Raises
        :class:`NotFound` when it is a listed directory whose listing file is missing or
        damaged (a share of it can serve nothing until it is shared again)."""
        manifest, cmap = self._manifest_and_map(cid)
        if manifest is None or cmap is None:
            raise NotFound(f"the listing of {cid.hex()[:16]} is missing or damaged here")
        return manifest, cmap

    # -- shares ----------------------------------------------------------------------

    def add_share(self, manifest: Manifest, files: Sequence[tuple[FileEntry, str | Path]] | None = None,
                  *, root: Path, origin: str = "shared") -> None:
        """Serve ``manifest`` in place (recording size and mtime of each file), from ``files``
        or, when None, from ``root`` itself (a file) or ``root / entry.path`` (a folder's
        entries, as :func:`~p2p.content.build_manifest` hashed them and a download places them).

        Files below ``root`` are recorded as found there (``root`` is resolved once; neither a
        share's scan nor a download follows a link below it), one at a time into the
        database: a folder of a million files costs no list of a million records.
        Raises :class:`~p2p.errors.ContentChanged` if a file's size is not the one hashed.
        """
        root = Path(root).resolve()
        recorded: Iterator[SharedFile]
        if files is not None:
            by_path = {entry.path: path for entry, path in files}
            recorded = (SharedFile.record(by_path[entry.path], entry.info) for entry in manifest.entries)
        elif manifest.kind == "file":
            recorded = iter([SharedFile.record(root, manifest.entries[0].info, resolved=True)])
        else:
            base = os.fspath(root)
            recorded = (SharedFile.record(f"{base}/{entry.path}", entry.info, resolved=True)
                        for entry in manifest.entries)
        self.put_manifest(manifest)
        self._keep_manifest(manifest)
        with self._share_lock:
            self._db.put_share(manifest, recorded, root=root, origin=origin, now=self._clock())
            self._share_files.clear()

    def remove_share(self, content_id: ContentId | bytes) -> bool:
        """Stop serving ``content_id``. True if it was shared."""
        with self._share_lock:
            removed = self._db.remove_share(_raw(content_id))
            self._share_files.clear()
        return removed

    def _share_file(self, cid: bytes, entry: int) -> SharedFile | None:
        key = (cid, entry)
        try:
            return self._share_files[key]
        except KeyError:
            pass
        with self._share_lock:  # no entry read before a removal is stored after it
            while len(self._share_files) > MAX_CACHED_SHARE_FILES - SHARE_FILE_BLOCK:
                # The oldest block goes, not all of them: a share of more entries than this
                # holds, served in random order, would otherwise empty it every few hundred
                # reads and read 256 rows for most chunks (6 ms a chunk at 100,000 files).
                self._share_files.popitem(last=False)
            # The block of entries around this one, in one query: a folder of small files
            # is served a chunk per file, so one row per chunk would be one query per chunk.
            first = entry - entry % SHARE_FILE_BLOCK
            block = self._db.share_files_from(cid, first, SHARE_FILE_BLOCK)
            for i in range(first, first + SHARE_FILE_BLOCK):
                self._share_files[(cid, i)] = block.get(i)
        return block.get(entry)

    def shares(self) -> list[ShareInfo]:
        """Everything this node serves in full."""
        return self._db.shares()

    def share_health(self, content_id: ContentId | bytes) -> ShareHealth:
        """How the files of a share stand against what was recorded (a ``stat`` per file,
        no hashing; blocking: a front end calls it in a thread). See :mod:`.serving`."""
        cid = _raw(content_id)

        def files() -> Iterator[SharedFile]:
            first = 0
            while block := self._db.share_files_from(cid, first, SHARE_CHECK_BLOCK):
                yield from (block[i] for i in sorted(block))
                first += SHARE_CHECK_BLOCK

        return check_share(files())

    def is_shared(self, content_id: ContentId | bytes) -> bool:
        """Whether ``content_id`` is served in full."""
        return self._db.is_shared(_raw(content_id))

    def resolve_prefix(self, text: str) -> ContentId | None:
        """The unique stored content id whose text form starts with ``text`` (for ``p2p verify abc``)."""
        ids = [ContentId(raw) for raw in self._db.manifest_ids()]
        matches = [cid for cid in ids if str(cid).startswith(text) or cid.short().startswith(text)]
        return matches[0] if len(matches) == 1 else None

    # -- serving (the wire server's ChunkSource) ---------------------------------------

    def manifest(self, content_id: bytes) -> bytes | None:
        """Encoded manifest for a content id we can serve (fully or partly), else None."""
        # Downloads are served only while they run here (their files are open).
        if content_id not in self._active and not self.is_shared(content_id):
            return None
        if content_id not in self._active and self._manifest_and_map(content_id)[0] is None:
            return None  # a listed folder whose listing is lost here: its root would promise it
        return self._db.manifest_data(content_id)

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        """(chunk count, bits) of what we can serve of ``content_id``, or None."""
        partial = self._active.get(content_id)
        if partial is not None:
            return partial.chunk_map.count, bytes(partial.bits)
        try:
            if self.is_shared(content_id):
                _, cmap = self._chunk_map(content_id)
                return cmap.count, full_bitfield(cmap.count)
            found = self._db.file_share(content_id)
            if found is not None:
                parent, entry, _ = found
                manifest, _ = self._chunk_map(parent)
                count = manifest.entries[entry].info.chunk_count
                return count, full_bitfield(count)
        except NotFound:
            pass  # a listed folder whose listing is lost here: nothing of it is served
        return None

    def read_chunk(self, content_id: bytes, index: int) -> bytes | memoryview:
        """The verified bytes of chunk ``index`` of ``content_id``.

        Raises :class:`NotFound` if we do not hold it and :class:`ContentChanged`
        if the file on disk no longer holds those bytes (the share is then
        dropped, so it is not announced again).
        """
        partial = self._active.get(content_id)
        if partial is not None:
            return partial.read_chunk(index)
        if self._share_file(content_id, 0) is not None:  # a share (of at least one file)
            manifest, cmap = self._chunk_map(content_id)
            try:
                entry, local = cmap.local(index)
            except IndexError:
                raise NotFound(f"chunk {index} is out of range") from None
            file = self._share_file(content_id, entry)
            if file is None:
                raise NotFound(f"chunk {index} is not shared")  # removed meanwhile
            return self._read_shared(content_id, file, manifest.entries[entry].info, local)
        found = self._db.file_share(content_id)
        if found is not None:
            parent, entry, file = found
            manifest, _ = self._chunk_map(parent)
            info = manifest.entries[entry].info
            if not 0 <= index < info.chunk_count:
                raise NotFound(f"chunk {index} is out of range")
            return self._read_shared(parent, file, info, index)
        listed = self._served_listing(content_id)
        if listed is not None:
            return _read_listing(self._listing_path(listed), listed, index)
        if self._db.has_download(content_id):
            raise NotFound("that download is not running in this process")
        raise NotFound("content not held here")

    def _served_listing(self, listing_id: bytes) -> FileInfo | None:
        """The listing of a listed directory we serve (in full or as a running download)."""
        owner = self._db.listing_owner(listing_id)
        if owner is None or (owner not in self._active and not self.is_shared(owner)):
            return None
        manifest, _ = self._manifest_and_map(owner)
        return None if manifest is None else manifest.listing

    def _read_shared(self, share: bytes, file: SharedFile, info: FileInfo, index: int) -> memoryview:
        data = file.read_chunk(info, index)
        if data is None:
            self.remove_share(share)
            raise ContentChanged(f"{file.path} changed since it was shared; no longer serving it")
        return data

    # -- downloads ---------------------------------------------------------------------

    def open_download(self, manifest: Manifest, dest: Path,
                      listing: bytes | bytearray | None = None, *,
                      selected: Collection[int] | None = None) -> PartialDownload:
        """Start or resume the download of a verified ``manifest`` into ``dest`` (``listing``:
        a listed directory's verified listing, see :meth:`put_manifest`).

        Takes an exclusive lock (:class:`StateDirLocked` if another process
        holds it). An existing partial download of the same content resumes
        from its recorded bitfield. ``selected``: the entries (files) wanted, None for all;
        recorded with the download (:meth:`download_selection`).

        A download that put files in place earlier (a fetch of some files; its record says
        which) resumes around them: its folder stays at its recorded destination, and the
        caller's :meth:`~PartialDownload.recover` checks every file there and in the partial
        folder again (the person may have changed them since), so what is whole is kept and
        only the rest is fetched, into the partial folder.
        """
        cid = manifest.content_id.digest
        with self._lock:
            if cid in self._active:
                raise StateDirLocked(f"{manifest.content_id} is already being downloaded")
            self.put_manifest(manifest, listing)
            self._keep_manifest(manifest)
            record = self._db.download_record(cid)
            _, cmap = self._chunk_map(cid)
            placed = None if record is None else _placed_entries(record, manifest, cmap)
            if record is not None and placed is not None:
                dest, partial_path = record.dest, record.partial
                bits = bitfield_new(cmap.count)  # recover() finds what is there, checked
            elif record is not None and record.partial.exists():
                dest, partial_path = record.dest, record.partial
                bits = bytearray(record.bits)
            else:
                dest = Path(dest).resolve()
                partial_path = dest.with_name(dest.name + PARTIAL_SUFFIX)
                bits = bitfield_new(cmap.count)
            self._db.start_download(cid, dest, partial_path, bytes(bits), bit_count(bits), self._clock(),
                                    _entry_bits(manifest, selected))
            if placed is not None and record is not None and record.placed is None:
                self._db.save_placed(cid, _entry_bits(manifest, placed), self._clock())
            partial = PartialDownload(self, manifest, cmap, dest, partial_path, bits,
                                      selected=selected, placed=placed)
            self._active[cid] = partial
            return partial

    def download_selection(self, content_id: ContentId | bytes) -> list[int] | None:
        """The entries (files) the download of ``content_id`` wants, as recorded; None when it
        wants every file (or there is no such download)."""
        cid = _raw(content_id)
        record = self._db.download_record(cid)
        if record is None or record.selection is None:
            return None
        manifest = self.get_manifest(cid)
        if manifest is None:
            raise NotFound(f"the listing of {cid.hex()[:16]} is missing or damaged here: the "
                           "files its download wants cannot be told")
        return _entries_of(record.selection, len(manifest.entries))

    def placed_files(self, content_id: ContentId | bytes) -> list[int] | None:
        """The entries the download of ``content_id`` put in place at its destination (whole
        when they landed), as recorded; None when none did (or there is no such download)."""
        cid = _raw(content_id)
        record = self._db.download_record(cid)
        manifest = self.get_manifest(cid)
        if record is None or manifest is None:
            return None
        placed = _placed_entries(record, manifest, ChunkMap(manifest))
        return None if placed is None else sorted(placed)

    def _save_selection(self, cid: bytes, manifest: Manifest, selected: Collection[int] | None) -> None:
        """Record a running download's wanted files (called by its :class:`PartialDownload`)."""
        self._db.save_selection(cid, _entry_bits(manifest, selected), self._clock())

    def _save_placed(self, cid: bytes, manifest: Manifest, placed: Collection[int], *,
                     bits: bytes | None = None, state: str | None = None) -> None:
        """Record the files a running download put in place (called by its
        :class:`PartialDownload`), with its bitfield and state when given."""
        self._db.save_placed(cid, _entry_bits(manifest, placed), self._clock(), bits=bits,
                             done=0 if bits is None else bit_count(bits), state=state)

    def _save_bits(self, cid: bytes, bits: bytes, state: str, error: str | None = None) -> None:
        """Record a running download's bitfield (called by its :class:`PartialDownload`)."""
        self._db.save_bits(cid, bits, bit_count(bits), state, self._clock(), error)

    def _release(self, cid: bytes) -> None:
        """A download stopped running here (called by its :class:`PartialDownload`)."""
        with self._lock:
            self._active.pop(cid, None)

    def set_download_state(self, content_id: ContentId | bytes, state: str, error: str | None = None) -> None:
        """Mark a download ``paused``, ``interrupted``, ``failed`` or ``active`` (the bitfield is
        untouched)."""
        self._db.set_download_state(_raw(content_id), state, error, self._clock())

    def remove_download(self, content_id: ContentId | bytes, *, delete: bool = True) -> Path | None:
        """Forget a download (cancel) and delete its partial data, or with ``delete=False``
        leave it where it is (a later fetch to the same place checks it and reuses what
        verifies). Returns the partial path if there was data there, else None.

        Only the partial data goes: files an earlier fetch of some of its files put in place
        at the destination stay (they were whole, and the folder is the person's), and in a
        partial folder only the download's own files (the manifest's paths) are deleted, with
        the folders left empty; anything else found there is left, and so is its folder."""
        cid = _raw(content_id)
        manifest = self.get_manifest(cid) if delete and self._db.has_download(cid) else None
        path = self._db.remove_download(cid)
        if path is None or not (path.exists() or path.is_symlink()):
            return None
        if not delete:
            return path
        if path.is_dir() and not path.is_symlink():
            if manifest is not None and manifest.kind == "dir":
                _delete_partial_folder(path, {entry.path for entry in manifest.entries})
            else:  # its listing is lost here: which files are its own cannot be told
                shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return path

    def set_download_rate(self, content_id: ContentId | bytes, rate: float) -> None:
        """Record a download's own limit (bytes per second, 0: none): a resumed download, in
        this node or the next, keeps it."""
        self._db.set_download_rate(_raw(content_id), rate)

    def download_rate(self, content_id: ContentId | bytes) -> float:
        """A download's own recorded limit (0: none)."""
        return self._db.download_rate(_raw(content_id))

    def adopt_download(self, manifest: Manifest, dest: Path) -> None:
        """Record ``manifest`` as downloaded and complete at ``dest``, which already holds it
        (the caller checked every chunk there): served from there like a finished download."""
        cid = manifest.content_id.digest
        dest = Path(dest).resolve()
        self.put_manifest(manifest)
        self._keep_manifest(manifest)
        _, cmap = self._chunk_map(cid)
        bits = full_bitfield(cmap.count)
        now = self._clock()
        self._db.start_download(cid, dest, dest.with_name(dest.name + PARTIAL_SUFFIX), bits,
                                cmap.count, now)
        self._db.save_bits(cid, bits, cmap.count, "complete", now)
        self.add_share(manifest, root=dest, origin="downloaded")

    def add_sources(self, content_id: ContentId | bytes, addrs: list[tuple[str, int]]) -> None:
        """Remember addresses to fetch ``content_id`` from (a ticket's), so a resume after a
        restart can dial them again without the ticket."""
        self._db.add_sources(_raw(content_id), addrs, self._clock())

    def sources(self, content_id: ContentId | bytes) -> list[tuple[str, int]]:
        """Addresses remembered for ``content_id``, oldest first."""
        return self._db.sources(_raw(content_id))

    def downloads(self) -> list[DownloadInfo]:
        """Every download this store knows, with its progress."""
        return self._db.downloads()

    def recorded_bitfield(self, content_id: ContentId | bytes) -> tuple[int, bytes] | None:
        """(chunk count, bits) a download has recorded as durable, or None if unknown."""
        return self._db.recorded_bitfield(_raw(content_id))

    def download_info(self, content_id: ContentId | bytes) -> DownloadInfo | None:
        """One download's row, or None."""
        return next(iter(self._db.downloads(_raw(content_id))), None)

    # -- bans --------------------------------------------------------------------------

    def ban(self, peer: PeerId, reason: str, duration: float | None = None) -> None:
        """Ban ``peer`` (for ``duration`` seconds, or for good). Kept across restarts."""
        now = self._clock()
        self._db.ban(peer, reason, now, None if duration is None else now + duration)

    def is_banned(self, peer: PeerId) -> bool:
        """Whether ``peer`` is banned now."""
        return self._db.is_banned(peer, self._clock())

    def bans(self) -> list[tuple[PeerId, str, float, float | None]]:
        """Every ban: (peer, reason, since, until or None)."""
        return self._db.bans()


def _listing_intact(path: Path, listing: FileInfo) -> bool:
    """Whether the file at ``path`` holds exactly the listing ``listing`` describes (read one
    chunk at a time: a listing may be hundreds of MiB)."""
    try:
        with open(path, "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size != listing.size:
                return False
            return all(listing.verify_chunk(index, os.pread(f.fileno(), listing.chunk_length(index),
                                                            listing.chunk_offset(index)))
                       for index in range(listing.chunk_count))
    except OSError:
        return False


def _read_listing(path: Path, listing: FileInfo, index: int) -> bytes:
    """Chunk ``index`` of a listing file, checked against its hash (the file is ours, but a disk
    can rot: a bad chunk is never served)."""
    if not 0 <= index < listing.chunk_count:
        raise NotFound(f"chunk {index} is out of range")
    try:
        with open(path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), listing.chunk_length(index), listing.chunk_offset(index))
    except OSError as exc:
        raise NotFound(f"listing unreadable: {exc}") from None
    if not listing.verify_chunk(index, data):
        raise NotFound("listing damaged on disk")
    return data


def _delete_partial_folder(root: Path, paths: Collection[str]) -> None:
    """Delete the files of ``paths`` (relative) found under the partial folder ``root``, then
    every folder left empty, ``root`` last; nothing else (no link is followed or deleted)."""
    for dirpath, _dirs, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        rel = folder.relative_to(root).as_posix()
        for name in filenames:
            file = folder / name
            if (name if rel == "." else f"{rel}/{name}") in paths and not file.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # empty now, unless something not its own is in it


def _entry_bits(manifest: Manifest, entries: Collection[int] | None) -> bytes | None:
    """``entries`` of ``manifest`` as a bitfield of one bit per entry (None: every entry)."""
    if entries is None:
        return None
    bits = bitfield_new(len(manifest.entries))
    for i in entries:
        bit_set(bits, i)
    return bytes(bits)


def _entries_of(bits: bytes, count: int) -> list[int]:
    """The entries set in a bitfield of ``count`` entries (bits past the end, or a field too
    short, as a damaged row would have, are ignored)."""
    return [i for i in bit_indexes(bits, min(count, len(bits) * 8)) if i < count]


def _placed_entries(record: DownloadRecord, manifest: Manifest, cmap: ChunkMap) -> frozenset[int] | None:
    """The files a download put in place at its destination, or None if none. A download
    recorded ``selected`` by schema 4 (which did not record them) placed exactly the files
    its bitfield held whole."""
    if manifest.kind != "dir":
        return None
    if record.placed is not None:
        return frozenset(_entries_of(record.placed, len(manifest.entries)))
    if record.state != "selected" or len(record.bits) * 8 < cmap.count:
        return None
    return frozenset(i for i, entry in enumerate(manifest.entries)
                     if all(bit_get(record.bits, c) for c in
                            range(cmap.starts[i], cmap.starts[i] + entry.info.chunk_count)))


def _raw(content_id: ContentId | bytes) -> bytes:
    return content_id.digest if isinstance(content_id, ContentId) else bytes(content_id)
