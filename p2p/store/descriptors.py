"""A download's open files: a small cache of descriptors, whatever the number of files.

A folder download may hold 100,000 files; a process may hold about 1,024 descriptors. So a
download keeps at most :data:`MAX_OPEN_ENTRIES` of its files open, least recently used
first out, and opens the others again when a chunk of theirs is written or read. Each open
entry holds a buffered read-write descriptor and, once a direct write was asked for, an
``O_DIRECT`` one (:mod:`p2p.store.directio`).

Threads: chunks are written from a pool while commits ``fdatasync`` from another thread
and the server reads on its event loop. An entry in use is pinned
(:meth:`DescriptorCache.use`): it is never evicted, so no descriptor is closed while
another thread uses it. Durability does not depend on the cache: the download remembers
which files it wrote since its last commit and syncs each of them then, through the cache
(reopening it if it was evicted). Linux reports a writeback error that no descriptor has
seen yet to the next one opened on the file (since 4.16), so a reopened file's
``fdatasync`` fails as the first one would have.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import StoreError

__all__ = ["MAX_OPEN_ENTRIES", "DescriptorCache", "OpenEntry"]

MAX_OPEN_ENTRIES = 32
"""Files of one download open at once, at most two descriptors each: 64 descriptors, a small
part of the usual limit of 1,024 even with a few downloads running beside shares and sockets.
Chunks are written by a couple of threads, to the handful of files their peers are sending at
that time; more entries would keep more idle files open, not save reopening."""


@dataclass
class OpenEntry:
    """One open file of a download: what a write or read uses while it holds the entry."""

    entry: int
    """Its index in the manifest."""
    fd: int
    """A buffered read-write descriptor: reads, syncs, buffered writes."""
    direct: int = -1
    """An ``O_DIRECT`` write descriptor, or -1 (not asked for yet, or refused)."""
    users: int = 0
    """Threads using it now: it is not evicted while any is."""


class DescriptorCache:
    """At most ``capacity`` entries open, least recently used evicted first. Thread-safe.

    ``opener(entry, flags)`` opens entry ``entry`` with ``flags`` (``O_RDWR``, with ``O_CREAT``
    when a write may create it; ``O_WRONLY | O_DIRECT`` for the direct descriptor) and returns
    the descriptor; it is called with the cache's lock held, so two threads never open the same
    entry twice. An ``opener`` that raises leaves the cache as it was.
    """

    def __init__(self, opener: Callable[[int, int], int], capacity: int = MAX_OPEN_ENTRIES) -> None:
        if capacity < 1:
            raise ValueError("a descriptor cache holds at least one entry")
        self.capacity = capacity
        """Most entries open at once."""
        self.direct_refused = not hasattr(os, "O_DIRECT")
        """The file system refused an ``O_DIRECT`` open: no entry gets a direct descriptor."""
        self._opener = opener
        self._open: OrderedDict[int, OpenEntry] = OrderedDict()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    def __len__(self) -> int:
        """Entries open now (never more than :attr:`capacity`)."""
        return len(self._open)

    def descriptors(self) -> int:
        """Descriptors open now (at most twice :attr:`capacity`)."""
        with self._cond:
            return sum(1 + (slot.direct >= 0) for slot in self._open.values())

    @contextlib.contextmanager
    def use(self, entry: int, *, create: bool = False, direct: bool = False) -> Iterator[OpenEntry]:
        """Hold entry ``entry`` open for the ``with`` block: its descriptors stay valid until it ends.

        ``create`` creates the file if it is missing; without it a missing file raises
        ``FileNotFoundError``. ``direct`` also opens the direct descriptor, unless the file
        system refuses ``O_DIRECT`` (then :attr:`OpenEntry.direct` stays -1).
        """
        slot = self._acquire(entry, create, direct)
        try:
            yield slot
        finally:
            with self._cond:
                slot.users -= 1
                if not slot.users:
                    self._cond.notify()

    def _acquire(self, entry: int, create: bool, direct: bool) -> OpenEntry:
        with self._cond:
            while True:
                if self._closed:
                    raise StoreError("the download's files are closed")
                slot = self._open.get(entry)
                if slot is not None:
                    self._open.move_to_end(entry)
                    break
                if len(self._open) < self.capacity or self._evict_one():
                    slot = OpenEntry(entry, self._opener(entry, os.O_RDWR | (os.O_CREAT if create else 0)))
                    self._open[entry] = slot
                    break
                self._cond.wait()  # every entry is in use: one is released soon
            if direct and slot.direct < 0 and not self.direct_refused:
                try:
                    slot.direct = self._opener(entry, os.O_WRONLY | os.O_DIRECT)
                except OSError:
                    self.direct_refused = True  # the same file system for every entry
            slot.users += 1
            return slot

    def _evict_one(self) -> bool:
        for entry, slot in self._open.items():  # least recently used first
            if not slot.users:
                del self._open[entry]
                _close(slot)
                return True
        return False

    def close(self) -> None:
        """Close every descriptor. Idempotent. The caller makes sure no entry is in use."""
        with self._cond:
            self._closed = True
            for slot in self._open.values():
                _close(slot)
            self._open.clear()
            self._cond.notify_all()


def _close(slot: OpenEntry) -> None:
    for fd in (slot.fd, slot.direct):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
