"""The node's events: one typed stream that every front end follows.

The CLI's progress bar and the terminal app's transfer view are two
subscribers of the same :class:`EventBus`. Publishing never blocks: each
subscriber has a bounded queue, and a subscriber that falls behind loses the
oldest events (and is told how many with :class:`EventsDropped`) rather than
slowing the download or growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from .content import ContentId
from .identity import PeerId

SUBSCRIBER_QUEUE = 4096
"""Events buffered per subscriber before the oldest are dropped."""


@dataclass(frozen=True)
class Event:
    """Base of every node event."""

    at: float = field(default_factory=time.time, kw_only=True)
    """Wall-clock time the event happened."""


@dataclass(frozen=True)
class PeerConnected(Event):
    """A session with a peer is up (we dialled it, or it dialled us)."""

    peer: PeerId
    address: tuple[str, int]
    inbound: bool


@dataclass(frozen=True)
class PeerDropped(Event):
    """A session with a peer ended."""

    peer: PeerId
    reason: str
    notable: bool = False
    """The download lost a source it was counting on (it stopped answering, or no longer has
    the content): front ends show it by default, unlike a peer that simply left."""


@dataclass(frozen=True)
class PeerBanned(Event):
    """A peer sent bad data too often; it is dropped and not asked again (kept across restarts)."""

    peer: PeerId
    reason: str


@dataclass(frozen=True)
class DownloadStarted(Event):
    """The manifest is verified; chunks are about to flow."""

    content_id: ContentId
    name: str
    size: int
    chunk_count: int
    held: int
    """Chunks already held (a resumed download)."""
    held_indexes: tuple[int, ...] = ()
    wanted_chunks: int | None = None
    """With a selection of files: how many chunks they have (None: every chunk is wanted)."""
    wanted_size: int | None = None
    """With a selection: the bytes of the files wanted."""
    wanted_held: int | None = None
    """With a selection: how many of their chunks are held already."""


@dataclass(frozen=True)
class ChunkRequested(Event):
    """A chunk was asked of a peer (the chunk map shows it in flight)."""

    content_id: ContentId
    index: int
    peer: PeerId


@dataclass(frozen=True)
class ChunkVerified(Event):
    """A chunk arrived from ``peer``, matched its hash and was written."""

    content_id: ContentId
    index: int
    peer: PeerId
    size: int


@dataclass(frozen=True)
class ChunkFailed(Event):
    """A chunk from ``peer`` failed its hash check; it was discarded and the peer struck."""

    content_id: ContentId
    index: int
    peer: PeerId


@dataclass(frozen=True)
class DownloadProgress(Event):
    """Periodic summary of a running download."""

    content_id: ContentId
    done_chunks: int
    chunk_count: int
    bytes_done: int
    size: int
    rate: float
    """Bytes per second over the last few seconds."""
    eta: float | None
    """Seconds to completion at the current rate, or None when unknown."""
    peers: int
    """Peers currently supplying this download."""
    paths: dict[str, str] = field(default_factory=dict)
    """Peer id text -> how each of them is reached: "direct", "punched" or "relayed"."""


@dataclass(frozen=True)
class DownloadCompleted(Event):
    """Every chunk verified; the file (or folder) is in place and served."""

    content_id: ContentId
    path: str
    size: int
    seconds: float
    chunks_by_peer: dict[str, int]
    """Peer id text -> chunks it delivered in this run."""


@dataclass(frozen=True)
class DownloadFailed(Event):
    """The download stopped with an error; verified progress is kept."""

    content_id: ContentId
    error: str
    exit_code: int


@dataclass(frozen=True)
class DownloadPaused(Event):
    """The download was paused (or the node stopped); it resumes where it was."""

    content_id: ContentId


@dataclass(frozen=True)
class ChunkUploaded(Event):
    """We served a chunk to a peer."""

    peer: PeerId
    content_id: bytes
    index: int
    size: int


@dataclass(frozen=True)
class ShareWithdrawn(Event):
    """Content is no longer served: a file of it changed or vanished on disk (found when a
    peer asked for one of its chunks, which is refused as changed)."""

    content_id: ContentId
    reason: str


@dataclass(frozen=True)
class Shared(Event):
    """Content was added to the library and announced."""

    content_id: ContentId
    name: str
    size: int


@dataclass(frozen=True)
class LogMessage(Event):
    """A human-readable line from the node (level: debug, info, warning, error)."""

    level: str
    message: str


@dataclass(frozen=True)
class EventsDropped(Event):
    """This subscriber fell behind and lost ``count`` events."""

    count: int


class Subscription:
    """One subscriber's queue. Iterate it with ``async for``; close it when done."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._dropped = 0

    def _offer(self, event: Event) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self._dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        """The next event (waits for one)."""
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return EventsDropped(count)
        return await self._queue.get()

    def get_nowait(self) -> Event | None:
        """The next event if one is queued, else None."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.get()

    def close(self) -> None:
        """Stop receiving events. Idempotent."""
        self._bus._subscribers.discard(self)


class EventBus:
    """Fan-out of node events to any number of subscribers."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber. Never blocks."""
        for sub in tuple(self._subscribers):
            sub._offer(event)

    def subscribe(self, maxsize: int = SUBSCRIBER_QUEUE) -> Subscription:
        """A new subscription; events published from now on are queued for it."""
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    @contextlib.contextmanager
    def subscribed(self, maxsize: int = SUBSCRIBER_QUEUE) -> Iterator[Subscription]:
        """``with bus.subscribed() as events:`` closes the subscription on exit."""
        sub = self.subscribe(maxsize)
        try:
            yield sub
        finally:
            sub.close()
