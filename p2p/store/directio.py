"""Writing verified chunks: ``O_DIRECT`` from page-aligned buffers, or buffered when refused.

Verified chunks are final, so the page cache gains nothing from them, and on virtual
machines faulting in fresh page-cache memory costs more than the copy into an aligned
buffer. So whole aligned chunks are written with ``O_DIRECT``: straight from the chunk's
buffer when it is page-aligned (received chunks are, :mod:`p2p.buffers`), else from a
per-thread aligned copy; everything else (a short
last chunk, an unaligned offset, a chunk under :data:`DIRECT_MIN_BYTES`), and every write to a file system that refuses
``O_DIRECT`` (tmpfs before Linux 6.6, ramfs), goes through ordinary buffered ``pwrite``.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

from ..buffers import is_aligned
from .chunks import ChunkSpan

__all__ = ["DIRECT_ALIGN", "DIRECT_MIN_BYTES", "DirectWriter"]

DIRECT_ALIGN = 4096
"""Offsets and lengths of ``O_DIRECT`` writes are multiples of this (the largest common block size)."""
DIRECT_MIN_BYTES = 64 * 1024
"""Shorter chunks (a whole small file of a folder, mostly) are written buffered: a direct write
of a few KiB waits for the device for one block, and costs a second open of its file; through
the page cache, a folder's small files reach the disk together at the next commit's ``syncfs``."""


class DirectWriter:
    """Writes chunks into a download's files, directly where it can. Thread-safe.

    Each thread gets its own aligned buffer. The caller owns the descriptors (a
    :class:`~p2p.store.descriptors.DescriptorCache`) and passes an entry's buffered and direct
    descriptors with each write.
    """

    def __init__(self) -> None:
        self.refused = not hasattr(os, "O_DIRECT")
        """The file system refused a direct write: every write goes through the page cache."""
        self._buffers = threading.local()

    def takes(self, span: ChunkSpan) -> bool:
        """Whether a write of ``span`` would be direct (given a direct descriptor)."""
        return (not self.refused and span.length >= DIRECT_MIN_BYTES
                and span.length % DIRECT_ALIGN == 0 and span.offset % DIRECT_ALIGN == 0)

    def write(self, span: ChunkSpan, data: bytes | bytearray | memoryview, fd: int, direct: int = -1) -> None:
        """Write ``data`` (``span.length`` bytes) at ``span``: through ``direct`` (an ``O_DIRECT``
        descriptor, or -1) when the span is aligned and the file system takes it, else through
        ``fd`` (the entry's buffered descriptor)."""
        if direct >= 0 and self.takes(span):
            if is_aligned(data, DIRECT_ALIGN):
                source: memoryview | mmap.mmap = memoryview(data)  # a pooled frame: no copy
            else:
                buf = self._aligned(span.length)
                buf[:span.length] = data
                source = memoryview(buf)[:span.length]
            try:
                written = os.pwrite(direct, source, span.offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # This file system takes no direct writes after all: buffered from now on.
                self.refused = True
            else:
                if written == span.length:
                    return
        view = memoryview(data)
        written = 0
        while written < span.length:
            written += os.pwrite(fd, view[written:], span.offset + written)

    def _aligned(self, size: int) -> mmap.mmap:
        buf: mmap.mmap | None = getattr(self._buffers, "buf", None)
        if buf is None or len(buf) < size:
            buf = mmap.mmap(-1, max(size, DIRECT_ALIGN))  # anonymous maps are page-aligned
            self._buffers.buf = buf
        return buf
