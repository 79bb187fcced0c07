"""The chunk map: a manifest's chunk numbers, and where each chunk lives.

A manifest's chunks are numbered across its entries in order (entry 0's chunks first). For a
single file this is the file's own numbering. Pure: no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from ..content import Manifest

__all__ = ["ChunkMap", "ChunkSpan"]


@dataclass(frozen=True)
class ChunkSpan:
    """Where one chunk of a manifest lives."""

    entry: int
    """The manifest entry (file) that holds it."""
    offset: int
    """Its byte offset in that file."""
    length: int
    """Its length in bytes (the last chunk of a file may be short)."""


class ChunkMap:
    """Maps a manifest's global chunk numbers to (entry, offset, length) and back to hashes."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.starts: list[int] = []
        """The global number of each entry's first chunk."""
        total = 0
        for entry in manifest.entries:
            self.starts.append(total)
            total += entry.info.chunk_count
        self.count = total
        """How many chunks the manifest has."""

    def chunks_of(self, entries: Iterable[int]) -> list[int]:
        """The global numbers of every chunk of ``entries`` (a chunk lies in one entry only)."""
        out: list[int] = []
        for entry in entries:
            start = self.starts[entry]
            out.extend(range(start, start + self.manifest.entries[entry].info.chunk_count))
        return out

    def local(self, index: int) -> tuple[int, int]:
        """(entry, the chunk's number within that entry's file) of chunk ``index``.

        Raises ``IndexError`` when out of range.
        """
        if not 0 <= index < self.count:
            raise IndexError(index)
        # Empty entries share their start with the next entry; bisect_right picks the last of
        # equal starts, which is the non-empty one.
        entry = bisect.bisect_right(self.starts, index) - 1
        return entry, index - self.starts[entry]

    def locate(self, index: int) -> ChunkSpan:
        """The span of chunk ``index``. Raises ``IndexError`` when out of range."""
        entry, local = self.local(index)
        info = self.manifest.entries[entry].info
        return ChunkSpan(entry, info.chunk_offset(local), info.chunk_length(local))

    def verify(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """True if ``data`` is exactly chunk ``index``."""
        entry, local = self.local(index)
        return self.manifest.entries[entry].info.verify_chunk(local, data)
