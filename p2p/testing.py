"""Test doubles, shipped with the library (as trio ships ``trio.testing``).

For tests, benchmarks and tools: chunk sources that serve bytes held in memory or one
file as it lies (the real source is the store), and a clock that moves only when told
to, for the components that take ``clock=``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .bitfield import bitfield_of, full_bitfield
from .errors import LocalProtocolError, NotFound
from .store.serving import READ_POOL

__all__ = ["FakeClock", "FileSource", "MemorySource"]


@dataclass
class MemorySource:
    """A :class:`~p2p.wire.server.ChunkSource` of chunks held in memory:
    ``{content_id: list of chunks}`` and optional manifests."""

    chunks: dict[bytes, list[bytes | None]] = field(default_factory=dict)
    """Per content id, the chunks; None marks a chunk not held (a partial holder)."""
    manifests: dict[bytes, bytes] = field(default_factory=dict)
    """Per content id, the encoded signed manifest to answer GetManifest with."""

    def manifest(self, content_id: bytes) -> bytes | None:
        """The stored manifest bytes, or None."""
        return self.manifests.get(content_id)

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        """Bits of the chunks that are not None."""
        chunks = self.chunks.get(content_id)
        if chunks is None:
            return None
        held = (i for i, chunk in enumerate(chunks) if chunk is not None)
        return len(chunks), bitfield_of(len(chunks), held)

    def read_chunk(self, content_id: bytes, index: int) -> bytes | memoryview:
        """The chunk, or NotFound."""
        chunks = self.chunks.get(content_id)
        if chunks is None or not 0 <= index < len(chunks):
            raise NotFound(f"chunk {index} not held")
        chunk = chunks[index]
        if chunk is None:
            raise NotFound(f"chunk {index} not held")
        return chunk


class FileSource:
    """A :class:`~p2p.wire.server.ChunkSource` serving one whole file in fixed-size chunks
    under a given content id (one pread per chunk)."""

    def __init__(self, path: str | os.PathLike[str], content_id: bytes, chunk_size: int,
                 manifest: bytes | None = None) -> None:
        self.content_id = content_id
        self.chunk_size = chunk_size
        self._manifest = manifest
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.chunk_count = -(-self.size // chunk_size)

    def close(self) -> None:
        """Close the file. Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def manifest(self, content_id: bytes) -> bytes | None:
        """The manifest given at construction, for our content id."""
        return self._manifest if content_id == self.content_id else None

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        """Every chunk is held."""
        if content_id != self.content_id:
            return None
        return self.chunk_count, full_bitfield(self.chunk_count)

    def read_chunk(self, content_id: bytes, index: int) -> bytes | memoryview:
        """One chunk, read into a pooled buffer as the store reads shared files."""
        if content_id != self.content_id or not 0 <= index < self.chunk_count:
            raise NotFound(f"chunk {index} not held")
        offset = index * self.chunk_size
        length = min(self.chunk_size, self.size - offset)
        buf = READ_POOL.take(length)
        got = os.preadv(self._fd, [buf], offset)
        return buf[:got]


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it (``trio.testing.MockClock``
    without the auto-jump). Call it for the time, like ``time.monotonic``.

    A component driven by its own timers learns of a move only when told (for the
    chunk server, :meth:`~p2p.wire.server.Server.handle_timers`).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The time it shows."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (it never goes back); returns the new time."""
        if not seconds >= 0:
            raise LocalProtocolError(f"a clock cannot go back (advance by {seconds})")
        self._now += seconds
        return self._now
