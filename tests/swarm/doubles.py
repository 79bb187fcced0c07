"""Test doubles for driving one :class:`~p2p.swarm.download.Download` by hand.

A fake clock the test moves; content held in memory and served by real chunk
servers on 127.0.0.1 (port 0); a dialler whose connections the test watches
(and can make deaf to our requests, or to some of them); and a download built from these pieces
without a node, so its clock can be injected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Container, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.content import ContentId, FileEntry, Manifest, hash_bytes, sign_manifest
from p2p.errors import NotFound
from p2p.events import EventBus, Subscription
from p2p.identity import Identity, PeerId
from p2p.store import Store
from p2p.swarm.download import Download, FetchOptions, ProviderSource
from p2p.testing import FakeClock
from p2p.wire.messages import Message, Request
from p2p.wire.server import Server
from p2p.wire.transport import Connection, connect

CHUNK = 64 * 1024
Address = tuple[str, int]


@dataclass(frozen=True)
class Content:
    """A file held in memory: its signed manifest and its chunks."""

    manifest: Manifest
    data: bytes
    chunks: tuple[bytes, ...]

    @property
    def content_id(self) -> ContentId:
        return self.manifest.content_id


def make_content(chunks: int, *, publisher: Identity | None = None, seed: int = 1) -> Content:
    """``chunks`` chunks of 64 KiB of random bytes (the last one short), signed by ``publisher``."""
    data = random.Random(seed).randbytes(chunks * CHUNK - 1000)
    info = hash_bytes(data, CHUNK)
    manifest = sign_manifest(publisher or Identity.generate(), "file", "movie.bin",
                             [FileEntry("movie.bin", info)])
    parts = tuple(data[o:o + CHUNK] for o in range(0, len(data), CHUNK))
    return Content(manifest, data, parts)


class Holder:
    """A chunk source (see :class:`p2p.wire.server.ChunkSource`) holding some chunks of one content."""

    def __init__(self, content: Content, held: Iterable[int] | None = None) -> None:
        self.content = content
        self.held = set(range(len(content.chunks)) if held is None else held)

    def manifest(self, content_id: bytes) -> bytes | None:
        return self.content.manifest.encode() if content_id == self.content.content_id.digest else None

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        if content_id != self.content.content_id.digest:
            return None
        bits = bytearray((len(self.content.chunks) + 7) // 8)
        for i in self.held:
            bits[i // 8] |= 0x80 >> (i % 8)
        return len(self.content.chunks), bytes(bits)

    def read_chunk(self, content_id: bytes, index: int) -> bytes:
        if content_id != self.content.content_id.digest or index not in self.held:
            raise NotFound(f"chunk {index} not held")
        return self.content.chunks[index]


@dataclass
class Seeder:
    """A real chunk server on 127.0.0.1."""

    server: Server
    address: Address

    @property
    def peer(self) -> PeerId:
        return self.server.identity.peer_id


@contextlib.asynccontextmanager
async def seeders(*sources: Holder) -> AsyncIterator[list[Seeder]]:
    """One chunk server per source, each on its own port; all closed at the end."""
    started: list[Seeder] = []
    try:
        for source in sources:
            server = Server(Identity.generate(), source)
            started.append(Seeder(server, await server.start("127.0.0.1", 0)))
        yield started
    finally:
        for seeder in started:
            await seeder.server.aclose()


class Watched:
    """A real connection as the download sees it, watched by the test.

    It records what the download sent and signals each kind of message it
    received (set before the download handles it, which it does at once, so a
    test woken by it sees the message handled). With ``deaf`` our Requests never
    reach the peer: a peer that claims chunks and never sends them.
    """

    def __init__(self, inner: Connection, *, deaf: bool = False,
                 deaf_to: Container[int] = ()) -> None:
        self._inner = inner
        self.deaf = deaf
        self.deaf_to = deaf_to
        """Chunk indexes whose Requests never reach the peer (the others do)."""
        self.sent: list[Message] = []
        self._sent: collections.defaultdict[type, asyncio.Event] = \
            collections.defaultdict(asyncio.Event)
        self._received: collections.defaultdict[type, asyncio.Event] = \
            collections.defaultdict(asyncio.Event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __aiter__(self) -> Watched:
        return self

    async def __anext__(self) -> Message:
        message = await self._inner.__anext__()
        self._received[type(message)].set()
        return message

    def record_sent(self, message: Message) -> None:
        """Note ``message`` as sent by the download (the dialler sent it with the handshake)."""
        self.sent.append(message)
        self._sent[type(message)].set()

    async def send(self, message: Message) -> None:
        self.record_sent(message)
        if isinstance(message, Request) and (self.deaf or message.index in self.deaf_to):
            return
        await self._inner.send(message)

    async def deliver(self, message: Message) -> None:
        """Send ``message`` to the peer past the deafness: a held-back Request, answered late."""
        await self._inner.send(message)

    def sent_one(self, kind: type) -> asyncio.Event:
        """Set once the download sent a message of type ``kind`` on this connection."""
        return self._sent[kind]

    def received(self, kind: type) -> asyncio.Event:
        """Set once a message of type ``kind`` came in on this connection."""
        return self._received[kind]


class Dialer:
    """The download's connector: real dials, each connection :class:`Watched` (or the
    subclass a test names in :attr:`watched`)."""

    watched: type[Watched] = Watched

    def __init__(self, deaf: Iterable[Address] = (),
                 deaf_to: Mapping[Address, Container[int]] | None = None) -> None:
        self.identity = Identity.generate()
        self.deaf = set(deaf)
        self.deaf_to = dict(deaf_to or {})
        """Per address, the chunks whose Requests never reach that peer."""
        self.connections: collections.defaultdict[Address, list[Watched]] = \
            collections.defaultdict(list)
        self._dialled: collections.defaultdict[Address, asyncio.Event] = \
            collections.defaultdict(asyncio.Event)

    async def __call__(self, addr: Address, peer: PeerId | None,
                       first: Sequence[Message] = ()) -> Watched:
        # The first messages (GetManifest, GetBitfield, speculative Requests) go out with
        # the handshake, past the deafness: recorded as sent, as the download's own are.
        deaf = addr in self.deaf
        deaf_to = self.deaf_to.get(addr, ())
        heard = [m for m in first if not (isinstance(m, Request) and (deaf or m.index in deaf_to))]
        conn = await connect(addr[0], addr[1], self.identity, expected_peer=peer, first=heard)
        watched = self.watched(conn, deaf=deaf, deaf_to=deaf_to)
        for message in first:
            watched.record_sent(message)
        self.connections[addr].append(watched)
        self._dialled[addr].set()
        return watched

    async def connection(self, addr: Address) -> Watched:
        """The first connection made to ``addr`` (waits for it)."""
        await self._dialled[addr].wait()
        return self.connections[addr][0]


class RecordingPool(ThreadPoolExecutor):
    """A one-thread pool that remembers what it was given (the download's progress records)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.calls: list[tuple[str, Future[Any]]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.calls.append((getattr(fn, "__name__", repr(fn)), future))
        return future

    def named(self, name: str) -> list[Future[Any]]:
        return [f for n, f in self.calls if n == name]


@dataclass
class Rig:
    """A download being run by hand, and what it runs on."""

    download: Download
    run: asyncio.Task[Path]
    events: Subscription
    store: Store
    dialer: Dialer
    sync_pool: RecordingPool


@contextlib.asynccontextmanager
async def running_download(base: Path, content_id: ContentId, clock: FakeClock, *,
                           peers: Sequence[Address] = (), dialer: Dialer | Any = None,
                           providers: ProviderSource | None = None, timeout: float = 30.0,
                           publisher: PeerId | None = None, name: str = "dl",
                           on_have: Callable[[bytes, int], None] = lambda cid, index: None,
                           ) -> AsyncIterator[Rig]:
    """A :class:`Download` on ``clock`` with its state under ``base / name``, started.

    Its events are subscribed before it starts. At the end it is cancelled (paused)
    if still running, and its store and pools are closed.
    """
    dial = dialer if dialer is not None else Dialer()
    with Store(base / name / "state") as store, ThreadPoolExecutor(2) as pool, \
            RecordingPool() as sync_pool:
        options = FetchOptions(content_id, None, base / name / "downloads", publisher,
                               tuple(peers), timeout)
        download = Download(options, store=store, events=EventBus(), connect=dial,
                            providers=providers, self_peer=dial.identity.peer_id,
                            self_addrs=lambda: (), on_have=on_have,
                            on_manifest=lambda manifest: None, pool=pool, sync_pool=sync_pool,
                            clock=clock)
        with download.events.subscribed() as events:
            run = asyncio.create_task(download.run())
            try:
                yield Rig(download, run, events, store, dial, sync_pool)
            finally:
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
