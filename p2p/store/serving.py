"""Shared files, served in place: what was recorded at share time, and the change check.

A shared file is never copied. When it is shared, its size, mtime, ctime and inode are
recorded (:meth:`SharedFile.record`). Every read checks them (:meth:`SharedFile.read_chunk`):

* size or mtime differ: the file changed, and it is no longer served;
* all four are as recorded: the bytes are served without hashing them again. Any write
  moves the ctime (which no user call can set back), so a file whose ctime and inode are
  unchanged holds the bytes that were hashed;
* size and mtime as recorded but ctime or inode not (a chmod, a rename over it, a rewrite
  that set the mtime back, a row recorded before ctimes were): each chunk is re-hashed
  before it is served, and a chunk that no longer matches ends the share.

What serving does with a file that changed or vanished: its chunks are refused
(``Reject CHANGED``: the downloader is told this peer no longer has it) and, from the
first such refusal, the whole share is withdrawn (not announced again, gone from the
library): a content id names every byte of every file, so a share with one file changed
no longer holds what its id names. Until a chunk of it is asked for, the share stays in
the library and ``p2p ls``, ``p2p serve`` and the terminal app show it ``changed`` or
``missing`` (:func:`check_share`, a ``stat`` per file: size and mtime against what was
recorded, no hashing; ``p2p verify ID`` hashes). A file on a drive that is not mounted
is ``missing`` until the drive is back.

The receiver checks every chunk anyway and strikes the sender of a bad one, so skipping
the hash costs honest users nothing and saves the seeder a hash of every byte it serves
(docs/PROTOCOL.md, Threats).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..buffers import BufferPool
from ..content import FileInfo
from ..errors import ContentChanged

__all__ = ["ShareHealth", "SharedFile", "check_share"]

READ_POOL = BufferPool()
"""Chunks read to be served: sealed for sending straight after, so the same few buffers
serve every read (no fresh pages per chunk, :mod:`p2p.buffers`)."""


@dataclass(frozen=True)
class SharedFile:
    """One file of a share, as it was when it was shared."""

    path: str
    """Where the file is (resolved), served from there: text, as stored, because a share of
    many small files reads thousands of these per second and a ``Path`` per row cost a
    seeder a quarter of its time serving them."""
    size: int
    """Its size in bytes at share time."""
    mtime_ns: int
    """Its modification time at share time, in nanoseconds."""
    ctime_ns: int | None = None
    """Its status-change time at share time, in nanoseconds (None: not recorded)."""
    ino: int | None = None
    """Its inode number at share time (None: not recorded)."""

    @classmethod
    def record(cls, path: str | Path, info: FileInfo, *, resolved: bool = False) -> SharedFile:
        """Record ``path`` as it is now. Raises :class:`ContentChanged` if its size is not the
        size that was hashed into ``info``.

        ``resolved``: ``path`` is known to hold no link (a file below a resolved folder, found
        or created without following one): not resolved again, which for a folder of many
        files is most of the time recording takes."""
        path = os.fspath(path) if resolved else str(Path(path).resolve())
        st = os.stat(path)
        if st.st_size != info.size:
            raise ContentChanged(f"{path} changed while it was being shared")
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def read_chunk(self, info: FileInfo, index: int) -> memoryview | None:
        """Chunk ``index`` of this file (as described by ``info``), checked.

        None if the file changed since it was recorded (size, mtime, or bytes when its ctime
        or inode moved) or is gone.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
                return None
            untouched = st.st_ctime_ns == self.ctime_ns and st.st_ino == self.ino
            length = info.chunk_length(index)
            data = READ_POOL.take(length)
            got = os.preadv(fd, [data], info.chunk_offset(index))
        finally:
            os.close(fd)
        if got != length:
            return None  # cut short since the fstat
        return data if untouched or info.verify_chunk(index, data) else None

    def state(self) -> str:
        """``ok``, ``changed`` (size or mtime not as recorded) or ``missing`` (gone, or not
        reachable any more: a folder above it renamed, a permission taken away): one
        ``stat``, no read."""
        try:
            st = os.stat(self.path)
        except OSError:
            return "missing"
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            return "changed"
        return "ok"


@dataclass(frozen=True)
class ShareHealth:
    """How a share's files stand against what was recorded when it was shared."""

    files: int
    """Files the share serves."""
    changed: int = 0
    """Files whose size or mtime is not the one recorded."""
    missing: int = 0
    """Files that are gone (or can no longer be reached)."""

    @property
    def status(self) -> str:
        """``ok``; ``missing`` when any file is gone; else ``changed`` when any changed."""
        return "missing" if self.missing else "changed" if self.changed else "ok"

    def describe(self) -> str:
        """What a person reads: '' when ok, else e.g. '2 of 10 files changed, 1 missing'."""
        if self.status == "ok":
            return ""
        if self.files == 1:
            return "the file changed since it was shared" if self.changed else "the file is gone"
        parts = [f"{n} {word}" for n, word in ((self.changed, "changed"), (self.missing, "missing")) if n]
        first, *rest = parts
        count, _, word = first.partition(" ")
        return ", ".join([f"{count} of {self.files:,} files {word}", *rest])

    def to_json(self) -> dict[str, Any]:
        """The status fields of a share row of ``p2p ls --json``."""
        return {"status": self.status, "files": self.files, "changed_files": self.changed,
                "missing_files": self.missing}


def check_share(files: Iterable[SharedFile]) -> ShareHealth:
    """Stat every file of a share (blocking: run it in a thread for a large one)."""
    total = changed = missing = 0
    for file in files:
        total += 1
        state = file.state()
        changed += state == "changed"
        missing += state == "missing"
    return ShareHealth(total, changed, missing)
