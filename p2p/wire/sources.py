"""Simple :class:`~p2p.wire.server.ChunkSource` implementations for tests, benchmarks and tools.

The real source is the store; these serve bytes held in memory or one file as it lies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import NotFound


def full_bitfield(count: int) -> bytes:
    """The bits (MSB first) of a bitfield with all ``count`` chunks set."""
    bits = bytearray(b"\xff" * ((count + 7) // 8))
    if count % 8:
        bits[-1] = (0xFF << (8 - count % 8)) & 0xFF
    return bytes(bits)


@dataclass
class MemorySource:
    """Serves chunks held in memory: ``{content_id: list of chunks}`` and optional manifests."""

    chunks: dict[bytes, list[bytes | None]] = field(default_factory=dict)
    """Per content id, the chunks; None marks a chunk not held (a partial holder)."""
    manifests: dict[bytes, bytes] = field(default_factory=dict)

    def manifest(self, content_id: bytes) -> bytes | None:
        """The stored manifest bytes, or None."""
        return self.manifests.get(content_id)

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        """Bits of the chunks that are not None."""
        chunks = self.chunks.get(content_id)
        if chunks is None:
            return None
        bits = bytearray((len(chunks) + 7) // 8)
        for i, chunk in enumerate(chunks):
            if chunk is not None:
                bits[i // 8] |= 0x80 >> (i % 8)
        return len(chunks), bytes(bits)

    def read_chunk(self, content_id: bytes, index: int) -> bytes | memoryview:
        """The chunk, or NotFound."""
        chunks = self.chunks.get(content_id)
        if chunks is None or not 0 <= index < len(chunks) or chunks[index] is None:
            raise NotFound(f"chunk {index} not held")
        chunk = chunks[index]
        assert chunk is not None
        return chunk


class FileSource:
    """Serves one whole file in fixed-size chunks under a given content id (pread per chunk)."""

    def __init__(self, path: str | os.PathLike[str], content_id: bytes, chunk_size: int,
                 manifest: bytes | None = None) -> None:
        self.content_id = content_id
        self.chunk_size = chunk_size
        self._manifest = manifest
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.chunk_count = -(-self.size // chunk_size)

    def close(self) -> None:
        """Close the file."""
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
        """pread of one chunk."""
        if content_id != self.content_id or not 0 <= index < self.chunk_count:
            raise NotFound(f"chunk {index} not held")
        return os.pread(self._fd, self.chunk_size, index * self.chunk_size)
