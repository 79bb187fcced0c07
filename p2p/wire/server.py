"""The chunk server: accepts connections and answers manifest, bitfield and chunk requests.

Each accepted connection is served by one owned task (a reader) plus one owned
worker task that sends chunks in request order; :meth:`Server.aclose` cancels
and awaits them all. A peer that breaks the protocol is dropped; the server goes on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import ContentChanged, NetworkError, NotFound, RemoteProtocolError
from ..identity import Identity, PeerId
from .errors import ClosedByUs, ConnectionLost
from .messages import (
    PROTOCOL_VERSION,
    Bitfield,
    Cancel,
    Data,
    GetBitfield,
    GetManifest,
    Have,
    Hello,
    Manifest,
    Message,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
)
from .session import Session
from .transport import Connection, WireProtocol

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """What the server serves from (implemented by the store)."""

    def manifest(self, content_id: bytes) -> bytes | None:
        """The encoded signed manifest, or None if unknown."""

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        """(chunk_count, bits MSB-first) of the chunks we can serve; None if unknown."""

    def read_chunk(self, content_id: bytes, index: int) -> bytes | memoryview:
        """The chunk's bytes; raises NotFound if not held, ContentChanged if the file changed."""


@dataclass(frozen=True)
class ServerLimits:
    """Limits that keep one server safe from many or hostile peers."""

    max_connections: int = 256
    """Connections in total (handshaking ones included)."""
    max_connections_per_ip: int = 16
    """Connections from one IP address."""
    max_inflight_requests: int = 32
    """Requests a peer may have outstanding; more are rejected with TOO_MANY_IN_FLIGHT."""
    idle_timeout: float = 120.0
    """Seconds without any message from a peer before it is dropped."""
    handshake_timeout: float = 10.0
    """Seconds from TCP accept to the peer's Hello."""
    send_timeout: float = 30.0
    """Seconds a send may wait for a peer that does not read; then the peer is dropped, so a
    stalled reader cannot hold its buffers for good."""
    max_frame: int = 64 * 1024
    """Largest frame a server accepts: it only receives small control messages, and a frame
    buffer is allocated as soon as its header arrives."""
    max_interested: int = 256
    """Content ids per peer that get Have messages pushed (the ones it asked about)."""
    max_send_buffer: int = 4 << 20
    """Write-buffer high-water mark per connection; a slower reader pauses its requests."""
    max_receive_queue: int = 1 << 20
    """Decoded-but-unhandled bytes per connection before the socket is no longer read."""
    receive_buffer: int = 256 << 10
    """Ciphertext receive buffer per connection (requests are small; chunks flow out)."""


@dataclass(frozen=True)
class PeerConnected:
    """A peer finished the handshake."""

    peer: PeerId
    address: tuple[str, int]


@dataclass(frozen=True)
class PeerDisconnected:
    """A peer's connection ended; ``reason`` is for logs and UIs."""

    peer: PeerId | None
    address: tuple[str, int]
    reason: str


@dataclass(frozen=True)
class Uploaded:
    """A chunk was handed to a peer's connection."""

    peer: PeerId
    content_id: bytes
    index: int
    nbytes: int


@dataclass(frozen=True)
class Backpressure:
    """Sending to a peer paused (it reads slower than we send) or resumed."""

    peer: PeerId | None
    address: tuple[str, int]
    paused: bool


ServerEvent = PeerConnected | PeerDisconnected | Uploaded | Backpressure


@dataclass(frozen=True)
class ConnectionInfo:
    """A snapshot of one connection, for UIs and tests."""

    peer: PeerId
    address: tuple[str, int]
    bytes_sent: int
    bytes_received: int
    listen_addrs: tuple[tuple[str, int], ...]
    """Where the peer accepts connections (from its Hello)."""
    write_buffer: int
    """Bytes in the transport's write buffer."""
    receive_buffered: int
    """Bytes held on the receive side (queued messages, partial records and frames)."""
    pending_requests: int


@dataclass
class _Peer:
    conn: Connection
    pending: collections.deque[tuple[bytes, int]] = field(default_factory=collections.deque)
    inflight: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    interested: set[bytes] = field(default_factory=set)


class Server:
    """Serves chunks from a :class:`ChunkSource` to any peer that completes the handshake."""

    def __init__(self, identity: Identity, source: ChunkSource, limits: ServerLimits = ServerLimits(),
                 *, listen_addrs: Sequence[tuple[str, int]] = (), agent: str = "p2p/0.1",
                 on_event: Callable[[ServerEvent], None] | None = None,
                 cipher: str = "AESGCM") -> None:
        self.identity = identity
        self.source = source
        self.limits = limits
        self._hello = Hello(PROTOCOL_VERSION, identity.peer_id, tuple(listen_addrs), agent)
        self._on_event = on_event
        self._cipher = cipher
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._protocols: set[WireProtocol] = set()
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._peers: dict[WireProtocol, _Peer] = {}
        self._closed = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free port); returns the bound address."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._make_protocol, host, port)
        except OSError as exc:
            raise NetworkError(f"cannot listen on {host}:{port}: {exc}") from None
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def _make_protocol(self) -> WireProtocol:
        session = Session(self.identity, self._hello, initiator=False, cipher=self._cipher,
                          recv_buffer=self.limits.receive_buffer, max_frame=self.limits.max_frame)
        return WireProtocol(session, max_send_buffer=self.limits.max_send_buffer,
                            max_receive_queue=self.limits.max_receive_queue,
                            on_made=self._accept, on_write_paused=self._write_paused)

    def _accept(self, proto: WireProtocol) -> None:
        ip = proto.address[0]
        if (self._closed or len(self._protocols) >= self.limits.max_connections
                or self._per_ip[ip] >= self.limits.max_connections_per_ip):
            # Refused before any cryptography is spent on it.
            proto.abort(ClosedByUs("connection limit reached"))
            return
        self._protocols.add(proto)
        self._per_ip[ip] += 1
        task = asyncio.get_running_loop().create_task(self._run(proto))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write_paused(self, proto: WireProtocol, paused: bool) -> None:
        self._emit(Backpressure(proto.session.remote_peer, proto.address, paused))

    def _emit(self, event: ServerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    async def _run(self, proto: WireProtocol) -> None:
        """The per-connection task: the one place where a peer's failure is caught and logged."""
        peer: _Peer | None = None
        reason = "closed"
        cancelled = False
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                await proto.ready
            peer = _Peer(Connection(proto))
            self._peers[proto] = peer
            self._emit(PeerConnected(peer.conn.remote_peer, proto.address))
            await self._serve(peer)
        except (ConnectionLost, ClosedByUs) as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            reason, cancelled = "server closed", True
            raise
        except TimeoutError:
            reason = "timed out"
        except RemoteProtocolError as exc:
            reason = f"protocol violation: {exc}"
            log.info("dropping peer %s: %s", proto.address, exc)
        except Exception as exc:  # the per-peer edge: log it, drop the peer, keep serving
            reason = f"internal error: {exc!r}"
            log.exception("error serving %s", proto.address)
        finally:
            self._peers.pop(proto, None)
            self._protocols.discard(proto)
            ip = proto.address[0]
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
            if peer is not None and not cancelled:
                await peer.conn.aclose(reason)
            else:
                proto.abort(ClosedByUs(reason))
            self._emit(PeerDisconnected(proto.session.remote_peer, proto.address, reason))

    async def _serve(self, peer: _Peer) -> None:
        worker = asyncio.get_running_loop().create_task(self._send_chunks(peer))
        try:
            await self._read_requests(peer, worker)
        finally:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass

    async def _read_requests(self, peer: _Peer, worker: asyncio.Task[None]) -> None:
        conn, limits, source = peer.conn, self.limits, self.source
        while True:
            if worker.done():
                worker.result()  # re-raise what ended the worker
            async with asyncio.timeout(limits.idle_timeout):
                msg = await conn.receive()
            match msg:
                case Request(cid, index):
                    if peer.inflight >= limits.max_inflight_requests:
                        await self._send(conn, Reject(cid, index, RejectReason.TOO_MANY_IN_FLIGHT))
                    else:
                        peer.inflight += 1
                        peer.pending.append((cid, index))
                        peer.wake.set()
                case Cancel(cid, index):
                    try:
                        peer.pending.remove((cid, index))
                        peer.inflight -= 1
                    except ValueError:
                        pass  # already sent or never asked: nothing to do
                case GetManifest(cid):
                    await self._send(conn, Manifest(cid, source.manifest(cid)))
                case GetBitfield(cid):
                    held = source.bitfield(cid)
                    if held is not None and len(peer.interested) < limits.max_interested:
                        peer.interested.add(cid)  # it gets our Haves from now on
                    count, bits = held if held is not None else (0, b"")
                    await self._send(conn, Bitfield(cid, count, bits))
                case Ping(nonce):
                    await self._send(conn, Pong(nonce))
                case Data():
                    raise RemoteProtocolError("unsolicited Data")
                case _:
                    pass  # Pong, Have, Bitfield, Manifest, Reject: nothing for a server to do

    async def _send_chunks(self, peer: _Peer) -> None:
        conn, source = peer.conn, self.source
        while True:
            while not peer.pending:
                peer.wake.clear()
                await peer.wake.wait()
            cid, index = peer.pending.popleft()
            try:
                # A synchronous pread from the page cache (~100 us per MiB) is cheaper
                # than a thread hop; the store may still block on a cold disk.
                chunk = source.read_chunk(cid, index)
            except NotFound:
                reply: Data | Reject = Reject(cid, index, RejectReason.NOT_HELD)
            except ContentChanged:
                reply = Reject(cid, index, RejectReason.CHANGED)
            except OSError:
                log.warning("cannot read chunk %d of %s", index, cid.hex()[:16], exc_info=True)
                reply = Reject(cid, index, RejectReason.INTERNAL)
            else:
                reply = Data(cid, index, chunk)
            try:
                await self._send(conn, reply)
            except TimeoutError:
                conn.abort("the peer stopped reading")  # the reader then sees the close
                return
            peer.inflight -= 1
            if isinstance(reply, Data):
                self._emit(Uploaded(conn.remote_peer, cid, index, len(chunk)))

    async def _send(self, conn: Connection, msg: Message) -> None:
        async with asyncio.timeout(self.limits.send_timeout):
            await conn.send(msg)

    def announce_have(self, content_id: bytes, index: int) -> None:
        """Tell connected peers that asked about ``content_id`` that chunk ``index`` can be served.

        Best effort: a peer whose write side is paused does not get it (it can ask
        for a Bitfield again); nothing is buffered without bound.
        """
        for peer in list(self._peers.values()):
            if content_id in peer.interested:
                peer.conn.send_nowait(Have(content_id, index))

    def connections(self) -> list[ConnectionInfo]:
        """A snapshot of the connections that finished the handshake."""
        return [ConnectionInfo(p.conn.remote_peer, p.conn.remote_address, p.conn.bytes_sent,
                               p.conn.bytes_received, p.conn.remote_hello.listen_addrs,
                               p.conn.write_buffer_size,
                               p.conn.receive_buffered, p.inflight)
                for p in self._peers.values()]

    async def aclose(self) -> None:
        """Stop listening and close every connection and task this server owns. Idempotent."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for proto in list(self._protocols):
            proto.abort(ClosedByUs("server closed"))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
