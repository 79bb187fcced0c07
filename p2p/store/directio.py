"""Writing verified chunks: ``O_DIRECT`` from page-aligned buffers, or buffered when refused.

Verified chunks are final, so the page cache gains nothing from them, and on virtual
machines faulting in fresh page-cache memory costs more than the copy into an aligned
buffer. So whole aligned chunks are written with ``O_DIRECT``: straight from the chunk's
buffer when it is page-aligned (received chunks are, :mod:`p2p.buffers`), else from a
per-thread aligned copy; everything else (a short
last chunk, an unaligned offset), and every write to a file system that refuses
``O_DIRECT`` (tmpfs before Linux 6.6, ramfs), goes through ordinary buffered ``pwrite``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from ..buffers import is_aligned
from .chunks import ChunkSpan

__all__ = ["DIRECT_ALIGN", "DirectWriter"]

DIRECT_ALIGN = 4096
"""Offsets and lengths of ``O_DIRECT`` writes are multiples of this (the largest common block size)."""


class DirectWriter:
    """Writes chunks into a download's files, directly where it can. Thread-safe.

    Each thread gets its own aligned buffer. The caller owns the buffered descriptors
    (it passes one per write) and guarantees no write is in progress when it calls
    :meth:`close`.
    """

    def __init__(self) -> None:
        self._direct: dict[int, int] = {}
        """Per entry, a descriptor opened with ``O_DIRECT``."""
        self._buffered_only: set[int] = set()
        """Entries whose file system refused a direct write: written through the page cache.
        Their direct descriptors stay open until :meth:`close` (another thread may be using one)."""
        self._buffers = threading.local()

    def open(self, paths: Mapping[int, Path]) -> None:
        """Open each entry's file (already created safely, no links) again for direct writes.

        All or nothing: if the file system refuses any of them, every write is buffered.
        """
        if not hasattr(os, "O_DIRECT"):
            return
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        for entry, path in paths.items():
            try:
                self._direct[entry] = os.open(path, os.O_WRONLY | os.O_DIRECT | nofollow)
            except OSError:
                self.close()
                return

    def write(self, span: ChunkSpan, data: bytes | bytearray | memoryview, fd: int) -> None:
        """Write ``data`` (``span.length`` bytes) at ``span``: directly when the span is aligned
        and the file system takes it, else through ``fd`` (the entry's buffered descriptor)."""
        direct = self._direct.get(span.entry)
        if direct is not None and span.entry not in self._buffered_only and \
                span.length % DIRECT_ALIGN == 0 and span.offset % DIRECT_ALIGN == 0:
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
                self._buffered_only.add(span.entry)
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

    def close(self) -> None:
        """Close the direct descriptors. Idempotent."""
        for fd in self._direct.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._direct.clear()
