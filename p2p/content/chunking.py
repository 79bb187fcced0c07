"""Chunking and hashing: how a file becomes a list of BLAKE3 chunk hashes and a content id.

The chunk-size rule (also in docs/PROTOCOL.md):

1. Aim for about :data:`TARGET_CHUNKS` (1024) chunks: ``next_power_of_two(ceil(size / 1024))``.
2. Clamp to ``[MIN_CHUNK, SOFT_MAX_CHUNK]`` = [64 KiB, 1 MiB]. The floor keeps per-message
   overhead small; the ceiling keeps the memory of a download (chunks in flight times chunk
   size) small, so files past 1 GiB get *more* 1 MiB chunks rather than bigger ones.
3. If that still gives more than :data:`MAX_CHUNKS` (65,536, a 2 MiB hash list), double the
   chunk size until it does not, up to :data:`MAX_CHUNK` (16 MiB): files up to 1 TiB.

So a 1 MiB file has 16 chunks of 64 KiB (enough to spread over many peers), a 1 GiB file
1,024 chunks of 1 MiB (32 KiB of hashes) and a 4 GiB file 4,096 chunks of 1 MiB.

The file id is BLAKE3 over ``pack([FORMAT_VERSION, "file", size, chunk_size, hashes])``
where ``hashes`` is the concatenation of the chunk hashes: it depends only on the bytes.
"""

from __future__ import annotations

import math
import mmap
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from ..encoding import pack
from ..errors import BadInput, DecodeError
from .ids import ContentId

FORMAT_VERSION = 1
HASH_LEN = 32
MIN_CHUNK = 64 * 1024
SOFT_MAX_CHUNK = 1024 * 1024
MAX_CHUNK = 16 * 1024 * 1024
TARGET_CHUNKS = 1024
MAX_CHUNKS = 65536
MAX_FILE_SIZE = MAX_CHUNKS * MAX_CHUNK  # 1 TiB

# Hashing batch: enough chunks per task that thread hand-off costs nothing, few
# enough that progress moves smoothly.
_HASH_BATCH_BYTES = 64 * 1024 * 1024


def chunk_size_for(size: int) -> int:
    """The chunk size for a file of ``size`` bytes (see the module docstring for the rule)."""
    if size < 0:
        raise ValueError("negative size")
    if size > MAX_FILE_SIZE:
        raise BadInput(f"file too large: {size} bytes (the limit is {MAX_FILE_SIZE})")
    target = max(1, math.ceil(size / TARGET_CHUNKS))
    chunk = 1 << (target - 1).bit_length()
    chunk = min(max(chunk, MIN_CHUNK), SOFT_MAX_CHUNK)
    while math.ceil(size / chunk) > MAX_CHUNKS:
        chunk *= 2
    return chunk


def hash_chunk(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte BLAKE3 hash of one chunk."""
    return blake3.blake3(data).digest()


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a file's id covers: its size, chunk size and chunk hashes.

    Slotted: a folder of a million files holds a million of these."""

    size: int
    chunk_size: int
    hashes: bytes
    """Concatenated 32-byte BLAKE3 hashes, one per chunk, in order."""
    _id: ContentId | None = field(default=None, init=False, repr=False, compare=False)
    """The content id, once computed (see :attr:`content_id`)."""

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_FILE_SIZE:
            raise DecodeError("file size out of range")
        if (self.chunk_size & (self.chunk_size - 1) or not MIN_CHUNK <= self.chunk_size <= MAX_CHUNK):
            raise DecodeError("chunk size must be a power of two in [64 KiB, 16 MiB]")
        if len(self.hashes) != HASH_LEN * math.ceil(self.size / self.chunk_size):
            raise DecodeError("chunk hash list does not match the size and chunk size")

    @property
    def chunk_count(self) -> int:
        """Number of chunks (0 for an empty file)."""
        return len(self.hashes) // HASH_LEN

    @property
    def content_id(self) -> ContentId:
        """The file's content id: the same bytes give the same id, whatever the name or publisher.

        Computed once: a folder's id is made of its files' ids."""
        found = self._id
        if found is None:
            found = ContentId(blake3.blake3(
                pack([FORMAT_VERSION, "file", self.size, self.chunk_size, self.hashes])).digest())
            object.__setattr__(self, "_id", found)
        return found

    def chunk_hash(self, index: int) -> bytes:
        """The expected hash of chunk ``index``."""
        return self.hashes[index * HASH_LEN:(index + 1) * HASH_LEN]

    def chunk_offset(self, index: int) -> int:
        """Byte offset of chunk ``index`` in the file."""
        return index * self.chunk_size

    def chunk_length(self, index: int) -> int:
        """Length of chunk ``index`` (the last one may be short)."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def verify_chunk(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """True if ``data`` is exactly chunk ``index``."""
        return len(data) == self.chunk_length(index) and hash_chunk(data) == self.chunk_hash(index)


def hash_bytes(data: bytes | memoryview, chunk_size: int | None = None) -> FileInfo:
    """:class:`FileInfo` of an in-memory buffer (tests and small payloads)."""
    size = len(data)
    chunk = chunk_size or chunk_size_for(size)
    view = memoryview(data)
    hashes = b"".join(hash_chunk(view[o:o + chunk]) for o in range(0, size, chunk))
    return FileInfo(size, chunk, hashes)


SMALL_FILE = 1024 * 1024
"""Files up to this size are hashed whole by one task, many to a task (:data:`_SMALL_BATCH_BYTES`):
a folder of small files pays one pool round trip per batch, not per file."""
_SMALL_BATCH_BYTES = 8 * 1024 * 1024
_SMALL_BATCH_FILES = 256
"""A batch of small files ends at either bound: enough work per task that the hand-off costs
nothing, small enough that both threads get work from a folder of a few hundred files."""
_IN_FLIGHT_PER_WORKER = 2
"""Tasks submitted ahead per hashing thread: keeps every thread busy while the results are
taken in order, and bounds the memory and descriptors held (one file open per running task)."""


def _hash_small(paths: Sequence[str | Path], skip_unreadable: bool = False) -> list[FileInfo | None]:
    """Hash each whole small file (a task of :func:`hash_files`); None for a file we may not
    read, when ``skip_unreadable``."""
    infos: list[FileInfo | None] = []
    for path in paths:
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the with below)
        except PermissionError:
            if not skip_unreadable:
                raise
            infos.append(None)
            continue
        with f:
            data = f.read(SMALL_FILE + 1)
            if len(data) > SMALL_FILE or len(data) != os.fstat(f.fileno()).st_size:
                raise BadInput(f"{path} changed size while being hashed")
        infos.append(hash_bytes(data))
    return infos


def _hash_range(path: str | Path, size: int, chunk: int, first: int, last: int,
                skip_unreadable: bool = False) -> bytes | None:
    """The hashes of chunks ``first`` to ``last`` (excluded) of a large file (a task of
    :func:`hash_files`); None for a file we may not read, when ``skip_unreadable``."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the with below)
    except PermissionError:
        if not skip_unreadable:
            raise
        return None
    with f:
        if os.fstat(f.fileno()).st_size != size:
            raise BadInput(f"{path} changed size while being hashed")
        start = first * chunk
        length = min(size, last * chunk) - start
        with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=start) as mm:
            view = memoryview(mm)
            try:
                return b"".join(hash_chunk(view[o:o + chunk]) for o in range(0, length, chunk))
            finally:
                view.release()


def hash_files(
    paths: Sequence[str | Path],
    progress: Callable[[int], None] | None = None,
    *,
    threads: int | None = None,
    unreadable: set[int] | None = None,
) -> list[FileInfo]:
    """Hash every file of ``paths`` (in that order) with one pool of threads (BLAKE3 releases the GIL).

    With ``unreadable`` given, a file we may not read (permission denied) is left out of the
    result and its position added to that set, rather than raising: found when it is
    opened, so a folder whose files are all readable pays no extra call per file.

    Small files (up to :data:`SMALL_FILE`) are hashed many to a task; a large file is split into
    tasks of :data:`_HASH_BATCH_BYTES`; tasks of consecutive files run side by side, so a folder of
    medium files keeps every thread busy too. At most :data:`_IN_FLIGHT_PER_WORKER` tasks per thread
    are submitted ahead, each holding one file open, so memory and descriptors do not grow with
    the number of files.

    ``progress(n)`` is called with the number of bytes just hashed, from the calling thread; it
    may raise to stop (a cancelled share), and tasks not started are then dropped. Raises
    ``OSError`` if a file cannot be read and :class:`BadInput` if one is too large or changes
    size while being hashed.
    """
    infos: list[FileInfo | None] = [None] * len(paths)
    parts: dict[int, list[bytes]] = {}
    """Hashes of the large files being hashed, by position: a few at a time."""
    workers = threads or os.cpu_count() or 1
    pending: deque[tuple[Future[Any], Callable[[Any], int]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash")
    skip_unreadable = unreadable is not None
    skipped: set[int] = unreadable if unreadable is not None else set()

    def skip(pos: int) -> None:
        skipped.add(pos)

    def submit(done: Callable[[Any], int], fn: Callable[..., Any], *args: Any) -> None:
        while len(pending) >= workers * _IN_FLIGHT_PER_WORKER:
            take()
        pending.append((pool.submit(fn, *args), done))

    def take() -> None:
        future, done = pending.popleft()
        hashed = done(future.result())
        if progress is not None:
            progress(hashed)

    try:
        batch: list[int] = []
        batch_bytes = 0

        def flush() -> None:
            nonlocal batch, batch_bytes
            if not batch:
                return
            positions, nbytes = batch, batch_bytes

            def done(found: list[FileInfo | None]) -> int:
                for pos, info in zip(positions, found, strict=True):
                    if info is None:
                        skip(pos)
                    infos[pos] = info
                return nbytes

            submit(done, _hash_small, [paths[pos] for pos in positions], skip_unreadable)
            batch, batch_bytes = [], 0

        for pos, path in enumerate(paths):
            size = os.stat(path).st_size
            chunk = chunk_size_for(size)
            if size == 0:
                infos[pos] = FileInfo(0, chunk, b"")
            elif size <= SMALL_FILE:
                batch.append(pos)
                batch_bytes += size
                if batch_bytes >= _SMALL_BATCH_BYTES or len(batch) >= _SMALL_BATCH_FILES:
                    flush()
            else:
                count = math.ceil(size / chunk)
                per_batch = max(1, _HASH_BATCH_BYTES // chunk)
                parts[pos] = []
                for first in range(0, count, per_batch):
                    last = min(count, first + per_batch)

                    def done(hashes: bytes | None, pos: int = pos, size: int = size,
                             chunk: int = chunk, first: int = first, last: int = last,
                             count: int = count) -> int:
                        if hashes is None:
                            skip(pos)
                        elif pos not in skipped:
                            parts[pos].append(hashes)
                        if last == count:
                            found = parts.pop(pos)
                            if pos not in skipped:
                                infos[pos] = FileInfo(size, chunk, b"".join(found))
                        return min(size, last * chunk) - first * chunk

                    submit(done, _hash_range, path, size, chunk, first, last, skip_unreadable)
        flush()
        while pending:
            take()
    finally:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    assert all(info is not None for pos, info in enumerate(infos) if pos not in skipped)
    return [info for info in infos if info is not None]


def hash_file(
    path: Path,
    progress: Callable[[int], None] | None = None,
    *,
    threads: int | None = None,
) -> FileInfo:
    """Hash the file at ``path`` chunk by chunk, in parallel threads: :func:`hash_files` of one file."""
    return hash_files([path], progress, threads=threads)[0]
