"""Shared files, served in place: what was recorded at share time, and the change check.

A shared file is never copied. When it is shared, its size and mtime are recorded
(:meth:`SharedFile.record`); every read checks both and re-hashes the chunk
(:meth:`SharedFile.read_chunk`), so a file that changed is never served as the old content.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..content import FileInfo
from ..errors import ContentChanged

__all__ = ["SharedFile"]


@dataclass(frozen=True)
class SharedFile:
    """One file of a share, as it was when it was shared."""

    path: Path
    """Where the file is (resolved), served from there."""
    size: int
    """Its size in bytes at share time."""
    mtime_ns: int
    """Its modification time at share time, in nanoseconds."""

    @classmethod
    def record(cls, path: Path, info: FileInfo) -> SharedFile:
        """Record ``path`` as it is now. Raises :class:`ContentChanged` if its size is not the
        size that was hashed into ``info``."""
        path = Path(path).resolve()
        st = path.stat()
        if st.st_size != info.size:
            raise ContentChanged(f"{path} changed while it was being shared")
        return cls(path, st.st_size, st.st_mtime_ns)

    def read_chunk(self, info: FileInfo, index: int) -> bytes | None:
        """Chunk ``index`` of this file (as described by ``info``), verified.

        None if the file changed since it was recorded (size, mtime or bytes) or is gone.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
                return None
            data = os.pread(fd, info.chunk_length(index), info.chunk_offset(index))
        finally:
            os.close(fd)
        return data if info.verify_chunk(index, data) else None
