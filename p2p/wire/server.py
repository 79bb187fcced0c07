"""The chunk server: accepts connections and answers manifest, bitfield and chunk requests.

This is the asyncio shell. The rules each connection is held to (handshake, idle
and stalled-reader timeouts, the in-flight cap, Cancel, who gets Haves) are a pure
:class:`~p2p.wire.serving.ServedPeer` per connection; the shell feeds it what
happens, with the time from an injected clock, does what it answers, and keeps one
timer per connection armed at its next deadline.

Each admitted connection is served by one task owned by the server; once the
handshake is done that task runs a reader and a chunk sender in a task group
scoped to the connection. :meth:`Server.aclose` cancels and awaits them all. A
peer that breaks the protocol is dropped; the server goes on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, overload

from ..address import Address, format_address, from_sockaddr
from ..errors import (
    ContentChanged,
    LocalProtocolError,
    NetworkError,
    NotFound,
    PortInUse,
    RemoteProtocolError,
)
from ..identity import Identity, PeerId
from ..tasks import TaskOwner
from .bandwidth import Bandwidth
from .errors import ClosedByUs, ConnectionLost
from .messages import (
    PROTOCOL_VERSION,
    RELAY_MESSAGES,
    Accept,
    Bitfield,
    Connect,
    Data,
    Have,
    Hello,
    HolePunchConnect,
    HolePunchSync,
    Manifest,
    Message,
    Reject,
    RejectReason,
    RelayCode,
    RelayStatus,
    Request,
)
from .serving import (
    EVICTED,
    Admission,
    Drop,
    PunchSignal,
    Reply,
    SendBitfield,
    SendManifest,
    ServedPeer,
    ServerLimits,
    choose_eviction,
)
from .serving import State as ServedState
from .session import Session
from .transport import REUSE_PORT, Connection, WireProtocol, adopt

if TYPE_CHECKING:
    from .relay import RelayService

__all__ = [
    "DEFAULT_LIMITS",
    "PORT_ATTEMPTS",
    "Backpressure",
    "ChunkSource",
    "ConnectionInfo",
    "PeerConnected",
    "PeerDisconnected",
    "Server",
    "ServerEvent",
    "ServerLimits",
    "Uploaded",
]

log = logging.getLogger(__name__)

DEFAULT_LIMITS = ServerLimits()
"""The limits a server gets unless it is given others."""
PORT_ATTEMPTS = 8
"""Free ports tried when listening on several hosts at port 0: the first bind picks a port
the others may find taken in their address family; another is then picked."""


class ChunkSource(Protocol):
    """What the server serves from (implemented by the store)."""

    def manifest(self, content_id: bytes) -> bytes | None:
        """The encoded signed manifest, or None if unknown."""

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        """(chunk_count, bits MSB-first) of the chunks we can serve; None if unknown."""

    def read_chunk(self, content_id: bytes, index: int) -> bytes | memoryview:
        """The chunk's bytes; raises NotFound if not held, ContentChanged if the file changed."""


@dataclass(frozen=True)
class PeerConnected:
    """A peer finished the handshake."""

    peer: PeerId
    address: tuple[str, int]
    via: PeerId | None = None
    """The relay the connection came through (a circuit), None when direct."""
    connection: Connection | None = None
    """The connection itself (for a direct-path upgrade over a circuit)."""


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


@dataclass(frozen=True)
class Withdrawn:
    """A chunk of ``content_id`` could not be served because its file changed on disk: the
    content is no longer served (the store dropped it); ``reason`` says which file."""

    content_id: bytes
    reason: str


ServerEvent = PeerConnected | PeerDisconnected | Uploaded | Backpressure | Withdrawn


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
    via: PeerId | None = None
    """The relay this connection runs through (a circuit); None when direct."""
    punched: bool = False
    """Opened by a hole punch (:meth:`Server.serve`)."""


class _Link:
    """The shell of one admitted connection: its socket, its rules and its one timer."""

    def __init__(self, proto: WireProtocol, rules: ServedPeer, loop: asyncio.AbstractEventLoop,
                 clock: Callable[[], float]) -> None:
        self.proto = proto
        self.rules = rules
        self.conn: Connection | None = None
        """Set once the handshake is done."""
        self.reason: str | None = None
        """Why the connection ended (the first reason wins); None while it is served."""
        self.wake = asyncio.Event()
        """Set when requests were queued or the connection ended: wakes the chunk sender."""
        self._loop = loop
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def now(self) -> float:
        return self._clock()

    def arm(self) -> None:
        """Keep the timer armed at or before the rules' next deadline.

        A timer that would fire early is kept (most events only push the idle deadline
        later): it finds nothing due, and re-arms for the new deadline.
        """
        deadline = self.rules.next_deadline()
        if deadline is None:
            self.disarm()
            return
        if self._timer is not None:
            if self._armed_for <= deadline:
                return
            self._timer.cancel()
        self._armed_for = deadline
        # The deadline is in the injected clock's time; the timer runs on the loop's.
        when = self._loop.time() + max(0.0, deadline - self._clock())
        self._timer = self._loop.call_at(when, self.expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = math.inf

    def expire(self) -> bool:
        """Apply what is due now (the timer's callback); returns whether the peer was dropped."""
        self.disarm()
        drop = self.rules.handle_timer(self._clock())
        if drop is not None:
            self.end(drop.reason, goodbye=drop.goodbye)
            return True
        self.arm()
        return False

    def end(self, reason: str, *, goodbye: bool) -> None:
        """End the connection for ``reason`` (no-op if it already ended): with a Goodbye when
        ``goodbye`` and the session can still carry one, else by aborting the socket. The
        connection's tasks then see it closed and finish."""
        if self.reason is not None:
            return
        self.reason = reason
        self.rules.close()
        self.disarm()
        self.wake.set()
        if goodbye and self.conn is not None:
            self.conn.close_nowait(reason)
        else:
            self.proto.abort(ClosedByUs(reason))


class Server:
    """Serves chunks from a :class:`ChunkSource` to any peer that completes the handshake."""

    def __init__(self, identity: Identity, source: ChunkSource, limits: ServerLimits = DEFAULT_LIMITS,
                 *, listen_addrs: Sequence[tuple[str, int]] = (), agent: str = "p2p/0.1",
                 on_event: Callable[[ServerEvent], None] | None = None,
                 cipher: str = "AESGCM", clock: Callable[[], float] | None = None,
                 bandwidth: Bandwidth | None = None,
                 on_punch: Callable[[Connection, HolePunchConnect | HolePunchSync], object]
                 | None = None, relay: RelayService | None = None) -> None:
        """``clock`` is where every deadline's time comes from (default: the event loop's);
        a test passes a :class:`p2p.testing.FakeClock` and calls :meth:`handle_timers`.
        ``bandwidth``: the node's limits, which every accepted connection counts against.
        ``on_punch``: given the hole punch messages a peer sends (on a relayed session, to
        the punch's :meth:`p2p.wire.punch.PunchChannel.deliver`); without it they are
        ignored. It may raise :class:`RemoteProtocolError` to drop the peer.
        ``relay``: serves the connections whose first request is a relay request
        (docs/PROTOCOL.md, Relays); without one they are refused PERMISSION_DENIED."""
        self.identity = identity
        self.source = source
        self.limits = limits
        self._hello = Hello(PROTOCOL_VERSION, identity.peer_id, tuple(listen_addrs), agent)
        self._on_event = on_event
        self._cipher = cipher
        self._clock_arg = clock
        self._clock: Callable[[], float] = clock if clock is not None else _unstarted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._addresses: tuple[Address, ...] = ()
        self._tasks = TaskOwner("chunk server", log)
        self._links: dict[WireProtocol, _Link] = {}
        self._admission = Admission(limits)
        self._closed = False
        self._bandwidth = bandwidth
        self.relay = relay
        self._on_punch = on_punch
        self._claims: list[Callable[[WireProtocol], bool]] = []

    # -- listening -------------------------------------------------------------------------

    # A str is also a Sequence[str]; the str form is matched first, so the overlap is intended.
    @overload
    async def start(self, hosts: str, port: int) -> tuple[str, int]: ...  # type: ignore[overload-overlap]
    @overload
    async def start(self, hosts: Sequence[str], port: int) -> int: ...

    async def start(self, hosts: str | Sequence[str], port: int) -> tuple[str, int] | int:
        """Listen on every one of ``hosts`` at the same ``port``; returns once listening.

        ``hosts`` are IP literals or names, e.g. ``("0.0.0.0", "::")`` for dual stack (an
        IPv6 socket is bound IPv6-only, so each family has its own). With port 0 the first
        bind picks a free port and the others reuse it. Returns the port; given a single
        host as a string, returns the bound ``(host, port)`` instead (the older form).
        Raises :class:`~p2p.errors.NetworkError` when an address cannot be bound; then
        nothing is left listening.
        """
        single = isinstance(hosts, str)
        host_list = [hosts] if isinstance(hosts, str) else list(hosts)
        if self._closed or self._servers:
            raise LocalProtocolError("a server starts once, and not after aclose()")
        if not host_list:
            raise LocalProtocolError("no host to listen on")
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self._clock_arg is None:
            self._clock = loop.time
        sockets = await self._bind(loop, host_list, port)
        try:
            for sock in sockets:
                self._servers.append(await loop.create_server(self._make_protocol, sock=sock))
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers = []
            for sock in sockets:
                sock.close()
            raise
        self._addresses = tuple(from_sockaddr(sock.getsockname()) for sock in sockets)
        return self._addresses[0] if single else self._addresses[0][1]

    @property
    def addresses(self) -> tuple[Address, ...]:
        """The addresses listened on (empty before :meth:`start` and after :meth:`aclose`)."""
        return self._addresses

    async def _bind(self, loop: asyncio.AbstractEventLoop, hosts: list[str],
                    port: int) -> list[socket.socket]:
        """Bound (not yet listening) sockets for every address of ``hosts``, on one port."""
        targets: list[tuple[socket.AddressFamily, int, tuple[Any, ...]]] = []
        for host in hosts:
            try:
                infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                               flags=socket.AI_PASSIVE)
            except OSError as exc:
                raise NetworkError(f"cannot listen on {host!r}: {exc}") from None
            for family, _type, proto, _name, sockaddr in infos:
                if (family, proto, sockaddr) not in targets:
                    targets.append((family, proto, sockaddr))
        attempts = PORT_ATTEMPTS if port == 0 and len(targets) > 1 else 1
        for attempt in range(1, attempts + 1):
            try:
                return _bind_on_one_port(targets, port)
            except NetworkError as exc:
                cause = exc.__cause__
                taken = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
                if not (taken and attempt < attempts):
                    raise
        return []  # not reached: the last attempt returns or raises

    # -- admission -------------------------------------------------------------------------

    def _make_protocol(self) -> WireProtocol:
        # No session yet: _accept creates it only for a connection it admits.
        bandwidth = self._bandwidth
        return WireProtocol(max_send_buffer=self.limits.max_send_buffer,
                            max_receive_queue=self.limits.max_receive_queue,
                            on_made=self._accept, on_write_paused=self._write_paused,
                            up=() if bandwidth is None else (bandwidth.up,),
                            down=() if bandwidth is None else (bandwidth.down,))

    def claim_inbound(self, claim: Callable[[WireProtocol], bool]) -> Callable[[], None]:
        """Let ``claim`` see each accepted connection first, before admission; returns the
        function that takes it away again.

        ``claim`` is called with the new connection (its address known, no session yet). If
        it returns True it has attached a session of its own (:meth:`WireProtocol.attach`)
        and owns the connection: the server neither counts nor serves it. A hole punch in
        progress uses this for its peer's SYN that reached our listener, whose Noise role
        the punch decides (:mod:`p2p.wire.punch`).
        """
        self._claims.append(claim)

        def remove() -> None:
            if claim in self._claims:
                self._claims.remove(claim)
        return remove

    def _accept(self, proto: WireProtocol) -> None:
        if not self._closed:
            for claim in tuple(self._claims):
                if claim(proto):
                    return
        ip = proto.address[0]
        relayed = proto.via is not None
        if relayed:
            # A circuit: the socket is the relay's, so per-IP limits would count the relay;
            # the relay holds its own per-peer and per-IP limits. Only the total applies.
            full = self._closed or len(self._links) >= self.limits.max_connections
            refusal = "connection limit reached" if full else None
        else:
            refusal = "connection limit reached" if self._closed else self._admission.refusal(ip, self._clock())
        if relayed or refusal is not None:
            pass
        elif self._admission.full and not self._admission.could_evict_for(ip):
            refusal = "connection limit reached"  # its network holds its share already
        elif self._admission.full:
            # Full: the oldest handshake, else the longest idle session, of a network that
            # holds at least two more connections than the newcomer's, makes room.
            now = self._clock()
            heavier = [link for link in self._links.values() if link.reason is None
                       and self._admission.may_evict(ip, link.proto.address[0])]
            victim = choose_eviction(((link, link.rules) for link in heavier),
                                     now, self.limits.eviction_grace)
            if victim is None:
                # None old enough: a handshake of a network over its share goes anyway.
                victim = choose_eviction(((link, link.rules) for link in heavier
                                          if link.rules.state is ServedState.HANDSHAKE
                                          and self._admission.over_share(link.proto.address[0], ip)),
                                         now, 0.0)
            if victim is None:
                refusal = "connection limit reached"
            else:
                log.info("evicting %s: server full", format_address(victim.proto.address))
                victim.end(EVICTED, goodbye=False)
                self._forget(victim)  # its slot is free now, not when its task has finished
        if refusal is not None:
            # Refused before any cryptography or buffer is spent on it.
            proto.abort(ClosedByUs(refusal))
            return
        assert self._loop is not None
        session = Session(self.identity, self._hello, initiator=False, cipher=self._cipher,
                          recv_buffer=self.limits.receive_buffer, max_frame=self.limits.max_frame)
        if not relayed:
            # A dialler's Connect and a target's Accept end this session: the bytes after
            # them are a relay circuit's (p2p.wire.relay), not ours to decrypt.
            session.stop_on = (Connect, Accept)
        proto.attach(session)
        link = _Link(proto, ServedPeer(self.limits, self._clock()), self._loop, self._clock)
        self._links[proto] = link
        if not relayed:
            self._admission.add(ip)
        link.arm()
        self._tasks.spawn(self._run(link), f"serve {format_address(proto.address)}")

    def _forget(self, link: _Link) -> None:
        if self._links.pop(link.proto, None) is None:
            return
        if link.proto.via is None:
            self._admission.remove(link.proto.address[0])

    def adopt(self, transport: asyncio.Transport, unread: bytes, via: PeerId) -> None:
        """Serve a relay circuit's socket (our side of it, :mod:`p2p.wire.reservation`) as an
        accepted connection: the responder's handshake runs on it, then chunks as usual."""
        proto = self._make_protocol()
        proto.via = via
        adopt(transport, proto, unread)

    def serve(self, conn: Connection) -> None:
        """Serve an authenticated connection opened elsewhere (a hole punch's, to a peer we
        serve through a relay): chunks as on any accepted connection, under the same limits.
        A punched connection counts against the peer's address like an accepted one."""
        if self._closed or len(self._links) >= self.limits.max_connections:
            conn.abort("connection limit reached")
            return
        assert self._loop is not None
        proto = conn.protocol
        link = _Link(proto, ServedPeer(self.limits, self._clock()), self._loop, self._clock)
        link.conn = conn
        self._links[proto] = link
        if proto.via is None:
            self._admission.add(proto.address[0])
        link.rules.handshake_done(link.now())
        link.arm()
        self._tasks.spawn(self._run(link), f"serve {format_address(proto.address)}")

    def _write_paused(self, proto: WireProtocol, paused: bool) -> None:
        link = self._links.get(proto)
        if link is not None:
            if paused:
                link.rules.write_paused(link.now())
            else:
                link.rules.write_resumed(link.now())
            link.arm()
        self._emit(Backpressure(proto.session.remote_peer, proto.address, paused))

    def _emit(self, event: ServerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    # -- one connection --------------------------------------------------------------------

    async def _run(self, link: _Link) -> None:
        """The per-connection task: handshake, then the reader and the chunk sender."""
        cancelled = False
        try:
            await self._guarded(link, self._handshake_and_serve(link))
        except asyncio.CancelledError:
            cancelled = True
            link.end("server closed", goodbye=False)
            raise
        finally:
            link.end("closed", goodbye=True)  # only if nothing ended it before
            self._forget(link)
            try:
                if link.conn is not None and not cancelled:
                    try:
                        await link.conn.aclose(link.reason or "")
                    except asyncio.CancelledError:
                        link.proto.abort(ClosedByUs("server closed"))
                        raise
            finally:
                assert link.reason is not None
                self._emit(PeerDisconnected(link.proto.session.remote_peer, link.proto.address,
                                            link.reason))

    async def _handshake_and_serve(self, link: _Link) -> None:
        proto = link.proto
        if link.conn is None:
            await proto.ready  # the timer drops the peer if its Hello is late
            link.conn = Connection(proto)
            link.rules.handshake_done(link.now())
            link.arm()
        conn = link.conn
        self._emit(PeerConnected(conn.remote_peer, proto.address, proto.via, conn))
        async with asyncio.TaskGroup() as group:
            group.create_task(self._guarded(link, self._send_chunks(link, conn)))
            await self._guarded(link, self._read_requests(link, conn))

    async def _guarded(self, link: _Link, work: Coroutine[Any, Any, None]) -> None:
        """Run one part of serving a peer; whatever ends it ends the connection, with a reason.

        The per-peer edge: the one place a peer's failure is caught and logged.
        """
        try:
            await work
        except (ConnectionLost, ClosedByUs) as exc:
            link.end(str(exc), goodbye=True)
        except RemoteProtocolError as exc:
            log.info("dropping peer %s: %s", format_address(link.proto.address), exc)
            link.end(f"protocol violation: {exc}", goodbye=True)
        except Exception as exc:  # the per-peer edge: log it, drop the peer, keep serving
            log.exception("error serving %s", format_address(link.proto.address))
            link.end(f"internal error: {exc!r}", goodbye=True)

    async def _relay(self, link: _Link, conn: Connection, first: Message) -> None:
        """Hand the connection to the relay: it is no longer the chunk server's (no slot,
        no idle timer: the relay holds it to its own limits)."""
        link.disarm()
        self._forget(link)
        if self.relay is None or conn.via is not None:
            reason = "this node does not relay" if self.relay is None else "no relaying over a circuit"
            await conn.send(RelayStatus(int(RelayCode.PERMISSION_DENIED), reason))
            link.end(reason, goodbye=True)
            return
        await self.relay.handle(conn, first)
        link.end("relay connection ended", goodbye=True)

    async def _read_requests(self, link: _Link, conn: Connection) -> None:
        rules, source = link.rules, self.source
        first = True
        while link.reason is None:
            msg = await conn.receive()
            if link.reason is not None:
                return  # ended while this message was queued: it is not served
            if first and isinstance(msg, RELAY_MESSAGES):
                await self._relay(link, conn, msg)
                return
            first = False
            action = rules.receive(msg, link.now())
            link.arm()
            if rules.queued:
                link.wake.set()
            match action:
                case None:
                    pass
                case Drop(reason=reason, goodbye=goodbye, flooded=flooded):
                    log.info("dropping peer %s: %s", format_address(link.proto.address), reason)
                    if flooded:
                        self._admission.penalise(link.proto.address[0], link.now())
                    link.end(reason, goodbye=goodbye)
                    return
                case Reply(message=reply):
                    await conn.send(reply)
                case SendManifest(content_id=cid):
                    await conn.send(Manifest(cid, source.manifest(cid)))
                case SendBitfield(content_id=cid):
                    held = source.bitfield(cid)
                    rules.bitfield_sent(cid, held is not None)
                    count, bits = held if held is not None else (0, b"")
                    await conn.send(Bitfield(cid, count, bits))
                case PunchSignal(message=signal):
                    if self._on_punch is not None:
                        self._on_punch(conn, signal)

    async def _send_chunks(self, link: _Link, conn: Connection) -> None:
        """Answers queued requests in order, one at a time (a slow reader slows only itself)."""
        rules = link.rules
        while link.reason is None:
            request = rules.next_request()
            if request is None:
                link.wake.clear()
                await link.wake.wait()
                continue
            reply = self._answer(rules, request)
            await conn.send(reply)
            rules.request_done(link.now())
            if type(reply) is Data:
                self._emit(Uploaded(conn.remote_peer, reply.content_id, reply.index,
                                    len(reply.payload)))

    def _answer(self, rules: ServedPeer, request: Request) -> Data | Reject:
        cid, index = request.content_id, request.index
        try:
            # A synchronous pread from the page cache (~100 us per MiB) is cheaper
            # than a thread hop; the store may still block on a cold disk.
            chunk = self.source.read_chunk(cid, index)
        except NotFound:
            # Past the last chunk is BAD_INDEX, else NOT_HELD. The bitfield costs at most
            # one bit per chunk (16 KiB), less than the chunk a valid request reads.
            held = self.source.bitfield(cid)
            return rules.unavailable(request, None if held is None else held[0])
        except ContentChanged as exc:
            self._emit(Withdrawn(cid, str(exc)))
            return Reject(cid, index, RejectReason.CHANGED)
        except OSError:
            log.warning("cannot read chunk %d of %s", index, cid.hex()[:16], exc_info=True)
            return Reject(cid, index, RejectReason.INTERNAL)
        return Data(cid, index, chunk)

    # -- the public surface ----------------------------------------------------------------

    def handle_timers(self) -> int:
        """Apply every connection's deadlines that the clock has passed; returns how many
        connections that dropped.

        Each connection's own timer does this for it; call it after moving an injected
        clock so that the move takes effect at once.
        """
        return sum(link.expire() for link in list(self._links.values()) if link.reason is None)

    def announce_have(self, content_id: bytes, index: int) -> None:
        """Tell connected peers that asked about ``content_id`` that chunk ``index`` can be served.

        Best effort: a peer whose write side is paused does not get it (it can ask
        for a Bitfield again); nothing is buffered without bound.
        """
        for link in list(self._links.values()):
            if link.conn is not None and link.rules.is_interested(content_id):
                link.conn.send_nowait(Have(content_id, index))

    @property
    def connection_count(self) -> int:
        """Connections holding a slot, handshaking ones included (at most
        ``limits.max_connections``)."""
        return self._admission.total

    def connections(self) -> list[ConnectionInfo]:
        """A snapshot of the connections that finished the handshake and are still served."""
        return [ConnectionInfo(c.remote_peer, c.remote_address, c.bytes_sent, c.bytes_received,
                               c.remote_hello.listen_addrs, c.write_buffer_size,
                               c.receive_buffered, link.rules.inflight, c.via, c.punched)
                for link in self._links.values()
                if (c := link.conn) is not None and link.reason is None]

    async def aclose(self) -> None:
        """Stop listening and close every connection and task this server owns. Idempotent."""
        self._closed = True
        for server in self._servers:
            server.close()
        await self._tasks.aclose()
        # A connection whose task was cancelled before it first ran has nothing to close it.
        for link in list(self._links.values()):
            link.end("server closed", goodbye=False)
            self._forget(link)
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        self._addresses = ()


def _bind_on_one_port(targets: Sequence[tuple[socket.AddressFamily, int, tuple[Any, ...]]],
                      port: int) -> list[socket.socket]:
    """One socket bound per target, all on ``port`` (0: the first bind picks it).

    Raises :class:`NetworkError` (caused by the ``OSError``) and closes what it bound.
    """
    sockets: list[socket.socket] = []
    chosen = port
    where = ""
    try:
        for family, proto, sockaddr in targets:
            where = format_address((sockaddr[0], chosen))
            if REUSE_PORT is not None:
                # With SO_REUSEPORT a second listener on the port would bind too (and share
                # our connections): a probe without it finds the port taken first, or picks
                # the free port (port 0) the real socket then binds.
                probe = _tcp_socket(family, proto, reuse_port=False)
                try:
                    probe.bind((sockaddr[0], chosen, *sockaddr[2:]))
                    if chosen == 0:
                        chosen = int(probe.getsockname()[1])
                        where = format_address((sockaddr[0], chosen))
                finally:
                    probe.close()
            sock = _tcp_socket(family, proto, reuse_port=True)
            sockets.append(sock)
            sock.bind((sockaddr[0], chosen, *sockaddr[2:]))
            if chosen == 0:
                chosen = int(sock.getsockname()[1])
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"cannot listen on {where}: the port is in use", chosen, "tcp") from exc
        raise NetworkError(f"cannot listen on {where}: {exc}") from exc
    return sockets


def _tcp_socket(family: socket.AddressFamily, proto: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket for listening: SO_REUSEADDR (restart over TIME_WAIT), SO_REUSEPORT when
    asked and available, IPv6-only for AF_INET6."""
    # The protocol number matters: asyncio turns Nagle's algorithm off only on
    # sockets that say IPPROTO_TCP (else each small reply can wait 40 ms for an ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and REUSE_PORT is not None:
            sock.setsockopt(socket.SOL_SOCKET, REUSE_PORT, 1)
        if family == socket.AF_INET6:
            # One socket per family: an IPv4 peer arrives on the IPv4 socket, as IPv4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def _unstarted() -> float:
    raise LocalProtocolError("the server's clock is the event loop's: start() it first")
