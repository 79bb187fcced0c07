"""Fetching a listed directory's listing: verified pieces, from every peer that sent its root.

A listed directory (content format 2, :mod:`p2p.content.manifest`) arrives as a small signed
root that carries the listing's size, chunk size and chunk hashes. :class:`ListingFetch` plans
the listing's chunks over the peers that sent a valid root (each of them holds the whole
listing), a few at a time per peer, checks each chunk against the root's hash as it arrives,
and hands a chunk that timed out or was refused to another peer. Pure: the download sends the
requests and feeds the answers in; time comes in as arguments.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..content import ListedRoot
from ..identity import PeerId

__all__ = ["LISTING_PIPELINE", "ListingFetch"]

LISTING_PIPELINE = 4
"""Listing chunks asked of one peer at a time: with 64 KiB to 1 MiB chunks, four keep a fast
link busy over one round trip, and the pieces spread over every peer that sent the root."""


@dataclass
class _Source:
    asked: dict[int, float] = field(default_factory=dict)
    """Chunk -> when it was asked of this peer."""


class ListingFetch:
    """The state of one listing's fetch. Feed it peers, answers and time; it says what to ask."""

    def __init__(self, root: ListedRoot) -> None:
        self.root = root
        self.listing_id = root.listing_id.digest
        """What the listing's chunks are asked (and answered) under."""
        info = root.listing
        self.buffer = bytearray(info.size)
        """The listing, filled in as its chunks verify."""
        self._missing: deque[int] = deque(range(info.chunk_count))
        self._sources: dict[PeerId, _Source] = {}
        self._done = 0

    @property
    def complete(self) -> bool:
        """Every chunk is in and verified."""
        return self._done == self.root.listing.chunk_count

    @property
    def done(self) -> int:
        """Chunks verified so far."""
        return self._done

    def add_peer(self, peer: PeerId) -> None:
        """``peer`` sent a valid root: it can serve the listing."""
        self._sources.setdefault(peer, _Source())

    def remove_peer(self, peer: PeerId) -> None:
        """``peer`` left (or cannot serve the listing): what it was asked goes to others."""
        source = self._sources.pop(peer, None)
        if source is not None:
            self._missing.extendleft(sorted(source.asked, reverse=True))

    @property
    def peers(self) -> int:
        """Peers the listing can be fetched from."""
        return len(self._sources)

    def plan(self, now: float) -> list[tuple[PeerId, int]]:
        """(peer, chunk) requests to send now: up to :data:`LISTING_PIPELINE` per peer, the
        least busy peer first."""
        out: list[tuple[PeerId, int]] = []
        while self._missing:
            peer, source = min(self._sources.items(), key=lambda item: len(item[1].asked),
                               default=(None, None))
            if peer is None or source is None or len(source.asked) >= LISTING_PIPELINE:
                break
            index = self._missing.popleft()
            source.asked[index] = now
            out.append((peer, index))
        return out

    def on_data(self, peer: PeerId, index: int, payload: bytes | bytearray | memoryview) -> bool | None:
        """A chunk from ``peer``: None if we did not ask it for that chunk (nothing done), True
        if it verified (copied in), False if it failed its hash (the chunk is asked again
        elsewhere; the caller bans the peer, which calls :meth:`remove_peer`)."""
        source = self._sources.get(peer)
        if source is None or source.asked.pop(index, None) is None:
            return None
        info = self.root.listing
        if not info.verify_chunk(index, payload):
            self._missing.appendleft(index)
            return False
        offset = info.chunk_offset(index)
        self.buffer[offset:offset + len(payload)] = payload
        self._done += 1
        return True

    def on_reject(self, peer: PeerId, index: int) -> bool:
        """``peer`` refused a chunk we asked: it cannot serve the listing after all (it stopped
        serving the folder), so it is asked nothing more. False if we had not asked it."""
        source = self._sources.get(peer)
        if source is None or index not in source.asked:
            return False
        self.remove_peer(peer)
        return True

    def expire(self, now: float, timeout: float) -> list[tuple[PeerId, int]]:
        """Requests older than ``timeout``: forgotten (the caller cancels them) and their chunks
        asked again. A peer that let one expire is asked nothing more for the listing while
        another can serve it (a peer that never answers cannot hold the listing up for more
        than one timeout); alone, it is asked again."""
        expired = [(peer, index) for peer, source in self._sources.items()
                   for index, asked in source.asked.items() if now - asked >= timeout]
        for peer, index in expired:
            source = self._sources.get(peer)
            if source is not None:
                del source.asked[index]
                self._missing.appendleft(index)
        for peer in {peer for peer, _ in expired}:
            if len(self._sources) > 1:
                cancelled = self._sources[peer].asked
                expired += [(peer, index) for index in cancelled]
                self.remove_peer(peer)
        return expired

    def next_deadline(self, timeout: float) -> float | None:
        """When the oldest request expires, or None."""
        return min((asked + timeout for source in self._sources.values()
                    for asked in source.asked.values()), default=None)
