"""Partial downloads: the files a running download writes, and the order that makes it resumable.

A download writes into a partial file (a partial folder for a directory) beside its
destination: ``NAME.p2p-partial``. On completion it is renamed into place and becomes a
share served from there.

Durability order (what makes a killed download resume without lying):

1. :meth:`PartialDownload.write_chunk` writes the verified bytes at their offset;
2. :meth:`PartialDownload.commit` ``fdatasync``\\ s every partial file written since the
   last commit, and only then writes the new bitfield to SQLite in one transaction.

So a chunk marked complete in the database always has its bytes on disk. Syncing runs on
its own thread and never holds up the transfer. A chunk written but not yet committed
when the process died is not trusted: on resume, :meth:`PartialDownload.recover` re-hashes
such chunks and keeps those whose bytes verify, and everything else is fetched again.

Files are opened on demand through a small cache (:mod:`p2p.store.descriptors`), so a folder
of any number of files holds a bounded number of descriptors, and a file is created when its
first chunk is written (:meth:`PartialDownload.finalize` creates the empty ones).

Some files of a folder (:attr:`PartialDownload.selected`): only their chunks are written, so
no other file is created or preallocated, and :meth:`~PartialDownload.finalize` puts the
folder in place once they are whole, recorded as ``selected`` (not a share: the rest is
missing) with the files it placed (:attr:`PartialDownload.placed`); a file unticked before it
was whole waits in the partial folder. From then on the folder at the destination is the
person's: a later fetch of more of it leaves it where it is, reads the files there (checked
again: the person may have changed them) and writes only the files still missing, in the
partial folder, which then holds nothing but bytes that download wrote and has not completed.
Each file lands in the folder once it is whole. So cancelling that fetch (deleting its partial
data) or killing it loses nothing that was in place, and never touches a file the program did
not put there.

A download holds an exclusive ``flock`` on its partial file, so a second process fetching
the same content gets :class:`~p2p.errors.StateDirLocked` instead of corrupting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import signal
import stat
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..bitfield import bit_count, bit_get, bit_set
from ..content import ContentId, Manifest, check_relative_path, open_under
from ..durable import fsync_dir, sync_filesystem
from ..errors import (
    ContentChanged,
    DestinationExists,
    DiskFull,
    NotFound,
    StateDirLocked,
    StoreError,
    UnsafePath,
)
from .chunks import ChunkMap, ChunkSpan
from .descriptors import DescriptorCache
from .directio import DirectWriter

if TYPE_CHECKING:
    from .store import Store

__all__ = ["PARTIAL_SUFFIX", "PREALLOCATE_MARGIN", "PartialDownload", "ignore_sigxfsz", "move_between", "seal"]

PARTIAL_SUFFIX = ".p2p-partial"
"""Appended to a download's destination name while it is being written."""
PREALLOCATE_MARGIN = 256 * 1024 * 1024
"""Preallocate only when this much would still be free afterwards."""
PREALLOCATE_MIN_SIZE = 1024 * 1024
"""Preallocate only files of at least this size: a smaller one is written in a few chunks, so
reserving it saves no fragments and costs a file-system journal update of its own."""
MAX_OPEN_FOLDERS = 16
"""Folders of a download kept open (a descriptor each), so that creating a file in one costs
one ``openat``, not one per level of its path: a folder's files are written in rarest-first
order, spread over all its folders, so this keeps only the recent ones."""
SMALL_FILE_BYTES = 64 * 1024
"""A file of a folder smaller than this that one chunk writes whole is created, written and
closed in one go (:meth:`PartialDownload.write_chunk`): buffered (under
:data:`~p2p.store.directio.DIRECT_MIN_BYTES` anyway) and synced by the commit's ``syncfs`` or
reopened for its ``fdatasync``, as an evicted file is."""
SYNC_EACH_FILES = 16
"""A commit syncs up to this many written files one ``fdatasync`` each; more (a folder of small
files) in one ``syncfs`` of their file system (:func:`~p2p.durable.sync_filesystem`), which
costs one journal commit instead of one per file."""

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
"""Out of disk, over the file-size limit, over quota: all reported as :class:`DiskFull`."""


def ignore_sigxfsz() -> None:
    """Make writes past the file-size limit fail (``EFBIG``, reported as :class:`DiskFull`)
    instead of killing the process. Only the main thread can change signal handlers."""
    # With a file-size limit, the kernel kills the writer with SIGXFSZ unless it is ignored.
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@contextlib.contextmanager
def _disk_full(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise DiskFull(f"no space left to write {path}: {exc.strerror}") from None
        raise


class PartialDownload:
    """The on-disk side of one running download: write verified chunks, commit, finalize.

    Opened by :meth:`Store.open_download <p2p.store.Store.open_download>`. Not an asyncio
    object: the download engine calls it from worker threads. Writes may run in parallel;
    :meth:`commit`, :meth:`finalize` and :meth:`close` take one lock, and closing waits for
    writes in progress, so a file descriptor is never used after it is closed.

    Writing: a new partial file is preallocated when it is created (when the disk has room),
    and whole aligned chunks are written with ``O_DIRECT`` (:mod:`p2p.store.directio`); any
    file system that refuses ``O_DIRECT`` (tmpfs) gets ordinary buffered writes. At most
    :data:`~p2p.store.descriptors.MAX_OPEN_ENTRIES` files are open at once.
    """

    def __init__(self, store: Store, manifest: Manifest, chunk_map: ChunkMap, dest: Path,
                 partial_path: Path, bits: bytearray, *, direct_io: bool = True,
                 selected: Collection[int] | None = None,
                 placed: Collection[int] | None = None) -> None:
        self.store = store
        """The store that opened this download, and records its progress."""
        self.manifest = manifest
        """What is downloaded (verified)."""
        self.chunk_map = chunk_map
        """The manifest's chunk numbering."""
        self.dest = dest
        """Where the result goes once complete."""
        self.partial_path = partial_path
        """Where the data is written until then (a file, or a folder for a directory)."""
        self.bits = bits
        """Chunks whose bytes are written and verified (committed or not)."""
        self.resumed = False
        """True when the partial data existed before (a resume): :meth:`recover` is worth running."""
        self.selected: frozenset[int] | None = None if selected is None else frozenset(selected)
        """The entries (files) wanted; None: every one. See :meth:`select`."""
        self.placed: frozenset[int] | None = None if placed is None else frozenset(placed)
        """The entries an earlier run put in place at :attr:`dest` (None: none, and nothing
        of this download is there). Such a download keeps that folder where it is: the files
        found whole there are read in place (:meth:`recover`), only the others are written in
        the partial folder, and :meth:`finalize` moves each into the folder when it is whole.
        A file in the way at the destination is replaced only if it is one of these (the
        person asked for it again); any other is refused, never overwritten."""
        self._in_place: set[int] = set()
        """Entries whose whole file is at :attr:`dest` (found by :meth:`recover`): read from
        there, never written."""
        self._dest_fd = -1
        """A descriptor of the folder at :attr:`dest`, when :attr:`placed` and it is there."""
        self._committed = bytes(bits)
        self._dirty: set[int] = set()
        """Entries written since the last commit snapshot (guarded by ``_bits_lock``, with the bits)."""
        self._files = DescriptorCache(self._open_entry)
        self._folders: dict[str, int] = {}
        """Descriptors of folders of the partial folder, by relative path (:func:`open_under`),
        at most :data:`MAX_OPEN_FOLDERS`; used only under :attr:`_folders_lock`."""
        self._folders_lock = threading.Lock()
        self._writer = DirectWriter()
        self._writer.refused = self._writer.refused or not direct_io
        self._preallocating = False
        """New files are preallocated as they are created (decided once, at open)."""
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

    @property
    def selection_complete(self) -> bool:
        """Every chunk of the selected files held (the whole content with no selection)."""
        if self.selected is None:
            return self.complete
        return all(self._entry_whole(e) for e in self.selected)

    def has(self, index: int) -> bool:
        """Whether chunk ``index`` is held."""
        return bit_get(self.bits, index)

    def select(self, entries: Collection[int] | None) -> None:
        """Want only ``entries`` from now on (None: every file): a running download's selection
        changed, and is recorded (a node that resumes the download asks for these). Chunks
        already held stay held."""
        selected = None if entries is None else frozenset(entries)
        if selected != self.selected:
            self.store._save_selection(self.content_id.digest, self.manifest, selected)
        self.selected = selected

    def _entry_whole(self, entry: int) -> bool:
        start = self.chunk_map.starts[entry]
        return all(bit_get(self.bits, i) for i in
                   range(start, start + self.manifest.entries[entry].info.chunk_count))

    def _open(self) -> None:
        is_dir = self.manifest.kind == "dir"
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        # Files placed earlier are checked again where they are: worth a recover() even
        # when nothing is being written yet.
        self.resumed = self.partial_path.exists() or self.placed is not None
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        if is_dir and self.placed is not None:
            with contextlib.suppress(OSError):  # gone, or no longer a folder: nothing is in place
                self._dest_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | nofollow)
        if is_dir:
            self.partial_path.mkdir(exist_ok=True)
            self._lock_fd = os.open(self.partial_path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            self._lock_fd = os.open(self.partial_path, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirLocked(f"{self.partial_path} is being downloaded by another process") from None
        self._preallocating = not self.resumed and self._room_to_preallocate()
        if not is_dir and self._preallocating:
            with self._files.use(0, create=True):
                pass  # a single file exists already: preallocated now, as it is opened

    def _room_to_preallocate(self) -> bool:
        """Reserve each file's whole size when it is created (fewer fragments, no allocation per
        write), only when the disk and the file-size limit clearly have room: running out must
        happen chunk by chunk, with progress kept, not all at once."""
        entries = [e for i, e in enumerate(self.manifest.entries)
                   if self.selected is None or i in self.selected]
        total = sum(e.info.size for e in entries)
        try:
            st = os.statvfs(self.partial_path if self.partial_path.is_dir() else self.partial_path.parent)
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        except OSError:
            return False
        largest = max((e.info.size for e in entries), default=0)
        return not (st.f_bavail * st.f_frsize < total + PREALLOCATE_MARGIN or
                    (limit != resource.RLIM_INFINITY and limit < largest))

    def _open_entry(self, entry: int, flags: int) -> int:
        """Open entry ``entry``'s partial file (the cache's opener): under the partial folder with
        :func:`open_under` (no symlink followed), a new file preallocated when there is room."""
        if entry in self._in_place:  # whole at the destination: read there, never written
            return _open_existing(self._dest_fd, self.manifest.entries[entry].path, os.O_RDONLY)
        if self.manifest.kind == "file":
            fd = os.open(self.partial_path, (flags & ~os.O_CREAT) | getattr(os, "O_NOFOLLOW", 0))
        else:
            fd = self._open_under(entry, flags)
        size = self.manifest.entries[entry].info.size
        if self._preallocating and flags & os.O_CREAT and size >= PREALLOCATE_MIN_SIZE:
            try:
                if os.fstat(fd).st_size == 0:
                    os.posix_fallocate(fd, 0, size)
            except OSError:
                self._preallocating = False  # out of room after all: chunk by chunk from now on
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # give back what a failed call reserved
        return fd

    def _open_under(self, entry: int, flags: int) -> int:
        """Open entry ``entry``'s file in the partial folder (:func:`open_under`: no symlink
        followed), through the recent folders' descriptors."""
        folders = self._folders
        with self._folders_lock:
            fd = open_under(self.partial_path, self.manifest.entries[entry].path, flags,
                            root_fd=self._lock_fd, folders=folders)
            while len(folders) > MAX_OPEN_FOLDERS:  # oldest first (dicts keep insertion order)
                with contextlib.suppress(OSError):
                    os.close(folders.pop(next(iter(folders))))
        return fd

    def _small_whole(self, span: ChunkSpan) -> bool:
        """Whether ``span`` is the whole of a small file of a folder (its only chunk): such a
        file is created, written and closed at once, not kept open in the descriptor cache
        (a folder of small files has nothing to gain from keeping them open, and closing
        them later costs the same call)."""
        return (span.offset == 0 and span.length < SMALL_FILE_BYTES and self.manifest.kind == "dir"
                and span.length == self.manifest.entries[span.entry].info.size
                and span.entry not in self._in_place and not self._writer.takes(span))

    def _write_small_whole(self, span: ChunkSpan, data: bytes | bytearray | memoryview) -> None:
        fd = self._open_under(span.entry, os.O_WRONLY | os.O_CREAT)
        try:
            view = memoryview(data)
            written = 0
            while written < span.length:
                written += os.pwrite(fd, view[written:], written)
        finally:
            os.close(fd)

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

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Write verified chunk ``index`` at its offset. Raises :class:`DiskFull` when out of space.

        The caller has checked the hash; the bit is set in memory and becomes
        durable at the next :meth:`commit`.
        """
        span = self.chunk_map.locate(index)
        with self._using(StoreError(f"{self.partial_path} is closed")), _disk_full(self.partial_path):
            if self._small_whole(span):
                self._write_small_whole(span, data)
            else:
                with self._files.use(span.entry, create=True, direct=self._writer.takes(span)) as file:
                    self._writer.write(span, data, file.fd, file.direct)
        with self._bits_lock:  # dirty before the bit is seen: a commit that records it syncs the file
            self._dirty.add(span.entry)
            bit_set(self.bits, index)

    def read_chunk(self, index: int) -> bytes:
        """Serve a held chunk to another peer (partial seeding), re-verified."""
        if not 0 <= index < self.chunk_map.count or not bit_get(self.bits, index):
            raise NotFound(f"chunk {index} not held yet")
        span = self.chunk_map.locate(index)
        try:
            with self._using(NotFound("download closed")), self._files.use(span.entry) as file:
                data = os.pread(file.fd, span.length, span.offset)
        except FileNotFoundError:
            raise ContentChanged(f"{self.partial_path} lost a file it had written") from None
        if not self.chunk_map.verify(index, data):
            raise ContentChanged(f"{self.partial_path} was modified on disk")
        return data

    def commit(self) -> int:
        """Make written chunks durable, then record them. Returns how many were newly recorded.

        Order: ``fdatasync`` every partial file written since the last commit first (reopened
        if its descriptor was evicted meanwhile), then write the bitfield to the database, so
        no record ever claims bytes that are not on disk.
        """
        with self._bits_lock:
            snapshot = bytes(self.bits)
            dirty, self._dirty = self._dirty, set()
        if snapshot == self._committed or self._closed:
            with self._bits_lock:
                self._dirty |= dirty  # a duplicate write, recorded already: synced next time
            return 0
        with self._using(StoreError(f"{self.partial_path} is closed")):
            synced = False
            try:
                with _disk_full(self.partial_path):
                    if len(dirty) <= SYNC_EACH_FILES or not sync_filesystem(self._lock_fd):
                        for entry in sorted(dirty):
                            with self._files.use(entry) as file:
                                os.fdatasync(file.fd)
                synced = True
            finally:
                if not synced:  # still to be synced by the next commit
                    with self._bits_lock:
                        self._dirty |= dirty
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
            if self._dest_fd >= 0:
                found += self._recover_in_place()
            absent = -1  # an entry whose file was never created: opening it would make its folders
            for index in range(self.chunk_map.count):
                if bit_get(self.bits, index):
                    continue
                span = self.chunk_map.locate(index)
                if span.entry == absent:
                    continue
                if self.manifest.kind == "dir" and \
                        not _exists_under(self._lock_fd, self.manifest.entries[span.entry].path):
                    absent = span.entry
                    continue
                try:
                    data = self._read_written(span.entry, span.offset, span.length)
                except FileNotFoundError:
                    continue  # not created yet: nothing of it was written
                if data is not None and self.chunk_map.verify(index, data):
                    with self._bits_lock:
                        self._dirty.add(span.entry)  # maybe never synced before the crash
                        bit_set(self.bits, index)
                    found.append(index)
        if found:
            self.commit()
        return found

    def _recover_in_place(self) -> list[int]:
        """The files at the destination (a folder this download placed files in): each one
        whole there is read in place from now on; the verified chunks of one wanted but no
        longer whole (changed by the person) are copied into the partial folder, which is
        where the file is completed (the copy at the destination is left as it is until the
        whole file replaces it). A file also in the partial folder is taken from there."""
        found: list[int] = []
        for i, entry in enumerate(self.manifest.entries):
            if _exists_under(self._lock_fd, entry.path):
                continue  # being written in the partial folder: the loop in recover() checks it
            try:
                fd = _open_existing(self._dest_fd, entry.path, os.O_RDONLY)
            except (OSError, UnsafePath):
                continue  # not there (or through a link): fetched if wanted
            try:
                found_stat = os.fstat(fd)
                if not stat.S_ISREG(found_stat.st_mode):
                    continue  # a folder (say) where the file goes: finalize() says so
                wanted = self.selected is None or i in self.selected
                whole_size = found_stat.st_size == entry.info.size
                good = self._good_chunks(i, fd) if whole_size or wanted else []
                if whole_size and len(good) == entry.info.chunk_count:
                    self._in_place.add(i)
                    with self._bits_lock:
                        for index in good:
                            bit_set(self.bits, index)
                    found += good
                    continue
                if wanted and good:
                    for index in good:
                        span = self.chunk_map.locate(index)
                        self.write_chunk(index, os.pread(fd, span.length, span.offset))
                    found += good
            finally:
                os.close(fd)
        return found

    def _good_chunks(self, entry: int, fd: int) -> list[int]:
        """The chunks of ``entry`` whose bytes in the file open as ``fd`` verify."""
        start = self.chunk_map.starts[entry]
        size = os.fstat(fd).st_size
        good = []
        for index in range(start, start + self.manifest.entries[entry].info.chunk_count):
            span = self.chunk_map.locate(index)
            if span.offset + span.length <= size and \
                    self.chunk_map.verify(index, os.pread(fd, span.length, span.offset)):
                good.append(index)
        return good

    def _read_written(self, entry: int, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` of an existing partial file, or None if it is shorter."""
        with self._files.use(entry) as file:
            if os.fstat(file.fd).st_size < offset + length:
                return None
            return os.pread(file.fd, length, offset)

    def finalize(self) -> Path:
        """Every chunk is held (of the selected files): put the files in place, record it, serve it.

        Returns the final path. The bytes are in the page cache (or on disk,
        written directly), which survives a killed process; making them durable
        against an OS crash is :func:`seal`'s job, run afterwards off the
        download's critical path (a slow disk would otherwise cap every download
        at its sync speed). Until then the file is already served, and every
        read re-hashes its chunk, so a file torn by an OS crash is never served
        as this content.

        The first time, the partial folder is renamed into place. With a selection, the
        folder put in place holds the selected files and any other file already whole; a
        file neither selected nor whole (unticked while it downloaded) is kept aside, in a
        partial folder of its own at :attr:`partial_path`, so no torn file lands at the
        destination and no verified chunk is lost. Unless every file is whole, the download
        is recorded as ``selected``, with the files it placed, before anything moves (a
        crash in between resumes from wherever the files are) and is not served (a share
        is whole content).

        Once files of it are in place (:attr:`placed`), the folder stays where it is: each
        file now whole in the partial folder is moved into it (recorded as placed first),
        replacing a file in the way only if this download put that one there.

        Raises :class:`~p2p.errors.DestinationExists` if the destination holds something
        else (the partial data is kept).
        """
        with self._life:
            if not self.selection_complete:
                raise StoreError("finalize() before every chunk is held")
            while self._users:  # a duplicate end-game copy still being written, a read, a sync
                self._life.wait()
            into_place = self._dest_fd >= 0
            if not into_place and (self.dest.exists() or self.dest.is_symlink()):
                raise DestinationExists(f"{self.dest} already exists; not overwriting it (the download is kept in {self.partial_path})")
            aside: list[str] = []
            landing: list[int] = []  # files of the partial folder that go to the destination
            for i, entry in enumerate(self.manifest.entries):
                if i in self._in_place:
                    continue  # whole where it belongs already
                if self.selected is not None and i not in self.selected:
                    if not entry.info.size or not _exists_under(self._lock_fd, entry.path):
                        continue  # empty or never written: absent
                    if self._entry_whole(i):
                        landing.append(i)  # whole: it comes along
                    else:
                        aside.append(entry.path)
                    continue
                landing.append(i)
                if self.manifest.kind == "dir" and entry.info.size:
                    with contextlib.suppress(OSError):  # most files are whole: no need to open them
                        if os.stat(entry.path, dir_fd=self._lock_fd, follow_symlinks=False).st_size == entry.info.size:
                            continue
                with self._files.use(i, create=True) as file:  # empty files are created here
                    if os.fstat(file.fd).st_size != entry.info.size:
                        os.ftruncate(file.fd, entry.info.size)  # short writes
            whole = self.complete
            placed = (self.placed or frozenset()) | frozenset(landing)
            cid = self.content_id.digest
            self._files.close()  # nothing stays open under a name it is about to leave
            if into_place:
                self._move_into_place(landing, placed)
                if not whole:
                    self.store._save_bits(cid, bytes(self.bits), "selected")
            else:
                if not whole:
                    self.store._save_placed(cid, self.manifest, placed,
                                            bits=bytes(self.bits), state="selected")
                os.rename(self.partial_path, self.dest)
                if aside:
                    self.partial_path.mkdir()
                    move_between(self.dest, self.partial_path, aside)
            if whole:
                self.store._save_bits(cid, bytes(self.bits), "complete")
            self.close()
        if whole:
            self.store.add_share(self.manifest, root=self.dest, origin="downloaded")
        return self.dest

    def _move_into_place(self, landing: list[int], placed: frozenset[int]) -> None:
        """Move the files ``landing`` from the partial folder into the folder at the
        destination, recorded as placed first (a crash in between finds each file where it
        is). A file in the way there is replaced only if this download put it there; anything
        else is refused before a file moves."""
        mine = self.placed or frozenset()
        for i in landing:
            path = self.manifest.entries[i].path
            there = _in_the_way(self._dest_fd, path)
            if there is not None and not (there[0] == path and i in mine and stat.S_ISREG(there[1].st_mode)):
                raise DestinationExists(
                    f"{self.dest / there[0]} is in the way and is not a file this download put there; "
                    f"not overwriting it: move it away and fetch again (the download is kept in "
                    f"{self.partial_path})")
        self.store._save_placed(self.content_id.digest, self.manifest, placed)
        paths = [self.manifest.entries[i].path for i in landing]
        if paths:
            move_between(self.partial_path, self.dest, paths,
                         replace={self.manifest.entries[i].path for i in landing if i in mine})
        with contextlib.suppress(OSError):
            self.partial_path.rmdir()  # empty now (unless files wait aside in it)

    def close(self) -> None:
        """Release files and the lock (progress stays recorded). Idempotent; waits for writes in progress."""
        with self._life:
            if self._closed:
                return
            self._closed = True
            while self._users:
                self._life.wait()
            self.store._release(self.content_id.digest)
            self._files.close()
            for fd in self._folders.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._folders.clear()
            if self._lock_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = -1
            if self._dest_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._dest_fd)
                self._dest_fd = -1


def move_between(src: Path, dst: Path, paths: list[str], *, replace: Collection[str] = ()) -> None:
    """Move each file of ``paths`` (relative) from under the folder ``src`` to the same place
    under the folder ``dst`` (folders made as needed; a file already at ``dst`` stays where
    it is, unless its path is in ``replace``: then it is replaced), then remove the folders
    left empty in ``src``. No symlink is followed on either side. Both folders are synced
    before it returns."""
    src_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dst_fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for rel in paths:
                _move_one(src_fd, dst_fd, rel, rel in replace)
            os.fsync(dst_fd)
            os.fsync(src_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def _move_one(src_fd: int, dst_fd: int, relpath: str, replace: bool = False) -> None:
    parts = check_relative_path(relpath)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    src_dirs = [src_fd]  # src_dirs[k] is the folder holding parts[k]
    dst_dir = dst_fd
    try:
        for part in parts[:-1]:
            try:
                src_dirs.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow,
                                        dir_fd=src_dirs[-1]))
            except OSError:
                return  # not there (or a link, not ours to follow): nothing to move
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=dst_dir)
            try:
                nextfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dst_dir)
            except OSError as exc:
                raise UnsafePath(f"{part!r} is a link or not a folder; not moving {relpath!r} "
                                 f"through it ({exc.strerror})") from None
            if dst_dir != dst_fd:
                os.close(dst_dir)
            dst_dir = nextfd
        try:
            found = os.stat(parts[-1], dir_fd=dst_dir, follow_symlinks=False)
        except FileNotFoundError:
            found = None
        if found is None or (replace and stat.S_ISREG(found.st_mode)):
            with contextlib.suppress(FileNotFoundError):
                os.rename(parts[-1], parts[-1], src_dir_fd=src_dirs[-1], dst_dir_fd=dst_dir)
        for depth in range(len(parts) - 2, -1, -1):
            try:
                os.rmdir(parts[depth], dir_fd=src_dirs[depth])
            except OSError:
                break  # not empty (other files stay), or gone
    finally:
        for fd in src_dirs[1:]:
            os.close(fd)
        if dst_dir != dst_fd:
            os.close(dst_dir)


def _open_existing(root_fd: int, relpath: str, flags: int) -> int:
    """Open the existing file ``relpath`` under the folder open as ``root_fd`` with ``flags``:
    no folder is made and no link followed (:class:`~p2p.errors.UnsafePath` for one);
    ``OSError`` (``FileNotFoundError``...) when it is not there."""
    parts = check_relative_path(relpath)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    dirfd = root_fd
    try:
        for part in parts[:-1]:
            try:
                nextfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dirfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{part!r} is a link or not a folder") from None
                raise
            if dirfd != root_fd:
                os.close(dirfd)
            dirfd = nextfd
        try:
            return os.open(parts[-1], flags | nofollow, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(f"{relpath!r} is a symlink") from None
            raise
    finally:
        if dirfd != root_fd:
            os.close(dirfd)


def _in_the_way(root_fd: int, relpath: str) -> tuple[str, os.stat_result] | None:
    """What is in the way of a file at ``relpath`` under the folder open as ``root_fd``: (its
    relative path, its own stat, not a link's target) for the file there or for whatever
    stands where one of its folders should be (a link, a file); None when nothing is."""
    parts = relpath.split("/")
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    dirfd = root_fd
    try:
        for depth, part in enumerate(parts[:-1], 1):
            try:
                found = os.stat(part, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if not stat.S_ISDIR(found.st_mode):
                return "/".join(parts[:depth]), found
            nextfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dirfd)
            if dirfd != root_fd:
                os.close(dirfd)
            dirfd = nextfd
        try:
            return relpath, os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
    finally:
        if dirfd != root_fd:
            os.close(dirfd)


def _exists_under(root_fd: int, relpath: str) -> bool:
    """Whether the file ``relpath`` exists under the folder open as ``root_fd`` (no link
    followed, nothing created)."""
    parts = relpath.split("/")
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    dirfd = root_fd
    try:
        for part in parts[:-1]:
            try:
                nextfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dirfd)
            except OSError:
                return False
            if dirfd != root_fd:
                os.close(dirfd)
            dirfd = nextfd
        try:
            os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return False
        return True
    finally:
        if dirfd != root_fd:
            os.close(dirfd)


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
