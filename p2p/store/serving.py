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

The receiver checks every chunk anyway and strikes the sender of a bad one, so skipping
the hash costs honest users nothing and saves the seeder a hash of every byte it serves
(docs/PROTOCOL.md, Threats).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..buffers import BufferPool
from ..content import FileInfo
from ..errors import ContentChanged

__all__ = ["SharedFile"]

READ_POOL = BufferPool()
"""Chunks read to be served: sealed for sending straight after, so the same few buffers
serve every read (no fresh pages per chunk, :mod:`p2p.buffers`)."""


@dataclass(frozen=True)
class SharedFile:
    """One file of a share, as it was when it was shared."""

    path: Path
    """Where the file is (resolved), served from there."""
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
        path = Path(path) if resolved else Path(path).resolve()
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
