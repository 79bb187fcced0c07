"""Reusable large buffers for the data path: no fresh memory per chunk.

Every chunk a seeder serves is read into a buffer and sealed into another; every chunk a
downloader receives is decrypted into a frame buffer. Allocating those afresh costs more
than the work done in them on a virtual machine: the allocator maps new pages, the kernel
faults and zeroes each one (measured: 220,000 page faults and a ``memset`` per GiB served,
about a quarter of the seeder's CPU). A pool hands the same buffers out again.

A buffer is free again when nothing refers to it any more: a ``memoryview`` of it (a Data
payload, a slice waiting in the transport) holds a reference to the buffer object itself,
so the pool reads the buffer's reference count (CPython) instead of asking every user to
give it back. A user that keeps a view keeps the buffer; it is never handed out twice.

:class:`AlignedPool` gives page-aligned buffers (anonymous ``mmap``), placed so that a
chosen offset of the view falls on a page boundary: a Data frame's payload can then be
written with ``O_DIRECT`` (:mod:`p2p.store.directio`) without a copy into an aligned
buffer first.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PAGE", "AlignedPool", "BufferPool", "is_aligned"]

PAGE = mmap.PAGESIZE


def _refs_when_free() -> int:
    """What ``getrefcount`` says of a buffer only the pool's list holds, read with the same
    expression :meth:`_Pool._get` uses (so an interpreter that counts the argument or a
    borrowed reference differently gets its own baseline); 0, which no buffer ever shows,
    where reference counts do not tell (not CPython): there every take is a new buffer."""
    if sys.implementation.name != "cpython":
        return 0
    buffers = [bytearray(1)]
    return sys.getrefcount(buffers[0])


_FREE_REFS = _refs_when_free()
"""``getrefcount`` of a free buffer as the pool reads it (see :func:`_refs_when_free`)."""
MAX_POOLED = 32 << 20
"""Bytes of buffers a pool keeps (they stay resident once touched): the chunks of a few
receive queues and of the hashing pool, or of a few peers' send queues. A burst beyond it
allocates buffers that are freed as usual."""


class _Pool:
    """Buffers by size (rounded up to a page), each size's handed out round-robin: they are
    mostly given back in the order they were taken, so the next one is usually free and a
    take looks at one or two buffers whatever the pool holds."""

    def __init__(self, max_bytes: int = MAX_POOLED) -> None:
        self._sizes: dict[int, list[Any]] = {}
        self._next: dict[int, int] = {}
        self._room = max_bytes
        self._lock = threading.Lock()

    def _get(self, need: int, make: Callable[[int], Any]) -> Any:
        size = -(-need // PAGE) * PAGE
        getrefcount = sys.getrefcount
        with self._lock:
            buffers = self._sizes.setdefault(size, [])
            start = self._next.get(size, 0)
            count = len(buffers)
            for step in range(count):
                pos = (start + step) % count
                if getrefcount(buffers[pos]) == _FREE_REFS:  # nobody else refers to it
                    self._next[size] = pos + 1
                    return buffers[pos]
            buf = make(size)
            if size <= self._room:
                self._room -= size
                buffers.append(buf)
            return buf


class BufferPool(_Pool):
    """Bytearrays handed out again once no one refers to them. Thread-safe."""

    def take(self, size: int) -> memoryview:
        """A writable view of ``size`` bytes (contents undefined: the caller fills it all)."""
        return memoryview(self._get(size, bytearray))[:size]


class AlignedPool(_Pool):
    """Page-aligned buffers: ``take(size, offset)`` returns a view whose byte ``offset``
    starts a page. Thread-safe."""

    def take(self, size: int, offset: int = 0) -> memoryview:
        """A writable view of ``size`` bytes with ``view[offset]`` page-aligned."""
        lead = -offset % PAGE
        buf = self._get(lead + size, lambda n: mmap.mmap(-1, n))  # anonymous maps start on a page
        return memoryview(buf)[lead:lead + size]


def is_aligned(data: bytes | bytearray | memoryview, align: int = PAGE) -> bool:
    """Whether ``data`` is a writable buffer whose first byte sits at a multiple of ``align``
    (read-only buffers answer False: the check needs a writable one, and ours are)."""
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(data))
    except (TypeError, ValueError):
        return False
    return address % align == 0
