"""The asyncio shell around :class:`~p2p.wire.session.Session`: one TCP connection.

Only this module and ``server.py`` touch sockets. The receive path is an
``asyncio.BufferedProtocol`` whose buffer is the session's own ciphertext buffer
(no copy between socket and decryption); about 4x faster than streams here.

Memory is bounded both ways:

* receiving: decoded messages wait in a queue; when it holds more than
  ``max_receive_queue`` bytes the socket is no longer read (TCP flow control
  then slows the peer down);
* sending: :meth:`Connection.send` awaits while more than ``max_send_buffer`` bytes wait
  to be sent.

Sending copies nothing the kernel does not: sealed records wait in our own queue as views
of the buffers they were sealed into, and are handed to the transport :data:`WRITE_PIECE`
bytes at a time, only when the transport's own buffer is empty (its limits are set to 0,
so ``pause_writing``/``resume_writing`` say exactly that). The socket takes most pieces
whole; at most the tail of one piece per "socket full" is copied into the transport's
buffer (Python 3.11's transport copies everything it cannot send at once: a 1 MiB chunk
written whole into a full socket cost a second copy of every byte served).

Bandwidth limits (:mod:`p2p.wire.bandwidth`) apply here, where ciphertext meets the
socket, so encryption overhead, handshakes and every peer count: a protocol given upload
throttles writes a piece only when each allows it (and charges it); one given download
throttles charges every read and pauses reading while one of them is overdrawn. Without a
limit set, this costs one attribute test per piece or read.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence

from ..address import format_address, from_sockaddr
from ..errors import NetworkError
from ..identity import Identity, PeerId
from .bandwidth import Throttle
from .errors import ClosedByUs, ConnectionLost, LocalProtocolError, RemoteProtocolError
from .messages import PROTOCOL_VERSION, Bitfield, Data, Goodbye, Hello, Manifest, Message
from .session import RECV_BUFFER, Session, State

log = logging.getLogger(__name__)

MAX_SEND_BUFFER = 4 << 20
"""Default write-buffer high-water mark: a few chunks, enough to keep a fast link busy."""
MAX_RECEIVE_QUEUE = 2 << 20
"""Default bytes of decoded messages held before reading stops: two 1 MiB chunks ahead of the
app is enough to keep it busy; more only grows memory (a download talks to up to 16 peers)."""
READ_BATCH = 64
"""Messages a reader takes from its queue in a row before it lets the event loop run the
others: a peer that queued thousands of small messages cannot hold the loop (and every
other connection) until they are all handled. 64 keeps the switch cost (one loop turn,
microseconds) far below the work of the batch."""
WRITE_PIECE = 128 * 1024
"""Bytes handed to the transport at a time: two full records. Small enough that the part a
full socket does not take (and the transport copies) is a small fraction of what is
sent; large enough that a chunk costs a handful of ``send`` calls."""
COALESCE_BELOW = 16 * 1024
"""Sealed messages smaller than this are gathered until the end of the event-loop turn and
written together: a scheduling pass's requests, a folder's small chunks. One write and one
wake-up of the peer for all of them, at the cost of a loop turn's delay (microseconds)."""
CLOSE_TIMEOUT = 2.0
"""How long aclose() lets a Goodbye and buffered data drain before it aborts the socket."""


def _size(msg: Message) -> int:
    """What a queued message costs, for the receive-queue bound (payloads counted in full)."""
    if type(msg) is Data:
        return len(msg.payload) + 64
    if type(msg) is Manifest and msg.data is not None:
        return len(msg.data) + 64
    if type(msg) is Bitfield:
        return len(msg.bits) + 64
    if type(msg) is Hello:
        return 64 + sum(len(h) + 16 for h, _ in msg.listen_addrs) + len(msg.agent)
    return 64


class WireProtocol(asyncio.BufferedProtocol):
    """Moves bytes between a socket and a Session; queues messages for :class:`Connection`.

    A dialler passes its ``session`` up front. A listener passes none: its ``on_made``
    callback sees the peer's address first, then gives the connection a session
    (:meth:`attach`) or refuses it (:meth:`abort`), so a refused connection costs no key
    and no buffer.

    ``up`` and ``down`` are the bandwidth limits the connection's bytes count against
    (the node's, and a download's own); ``on_write_paused`` is told when bytes wait because
    the peer does not take them, not while a limit of ours holds them.
    """

    def __init__(self, session: Session | None = None, *, max_send_buffer: int = MAX_SEND_BUFFER,
                 max_receive_queue: int = MAX_RECEIVE_QUEUE,
                 on_made: Callable[[WireProtocol], None] | None = None,
                 on_write_paused: Callable[[WireProtocol, bool], None] | None = None,
                 up: Sequence[Throttle] = (), down: Sequence[Throttle] = ()) -> None:
        loop = asyncio.get_running_loop()
        self._session = session
        self.transport: asyncio.Transport | None = None
        self.address: tuple[str, int] = ("", 0)
        """The remote socket address, normalised (an IPv4-mapped IPv6 address is IPv4)."""
        self.ready: asyncio.Future[None] = loop.create_future()
        """Resolves when the remote Hello has arrived; fails with the reason the session died."""
        self.closed: asyncio.Future[None] = loop.create_future()
        """Resolves when the socket is gone (connection_lost)."""
        self.queue: collections.deque[Message] = collections.deque()
        self.queued_bytes = 0
        self.error: Exception | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.write_paused = False
        self.reading_paused = False
        self._max_send = max_send_buffer
        self._max_queue = max_receive_queue
        self._on_made = on_made
        self._on_write_paused = on_write_paused
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._pending: collections.deque[memoryview] = collections.deque()
        self._small = bytearray()
        """Small messages of this loop turn, written together at its end (:data:`COALESCE_BELOW`)."""
        self._small_soon = False
        """Sealed bytes not yet handed to the transport (views of the sealing buffers)."""
        self.pending_bytes = 0
        self._transport_busy = False
        """The transport holds bytes the socket has not taken (its buffer is not empty)."""
        self._streak = 0
        """Messages handed out since the reader last waited or yielded."""
        self._up = tuple(up)
        self._down = tuple(down)
        self._write_held = False
        """Waiting for an upload limit's turn (the peer is not to blame)."""
        self._write_grant = 0
        """Bytes left of the upload limits' turn this connection was given (0: none)."""
        """A turn came: the next piece goes whatever the balance (each waiter woken in a
        round moves one turn, so the first in the queue cannot starve the others)."""
        self._read_held = False
        """Reading paused until a download limit's turn."""
        self._stall_reported = False
        """What ``on_write_paused`` was last told."""
        self.via: PeerId | None = None
        """The relay this connection runs through (a circuit), or None when direct."""
        self._detached = False

    @property
    def session(self) -> Session:
        """The connection's session (raises :class:`LocalProtocolError` before :meth:`attach`)."""
        if self._session is None:
            raise LocalProtocolError("this connection has no session yet")
        return self._session

    def attach(self, session: Session) -> None:
        """Give an accepted connection its session (once the listener admitted it)."""
        if self._session is not None:
            raise LocalProtocolError("this connection already has a session")
        self._session = session
        self._flush()

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake (the initiator's first message is already queued)."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.address = from_sockaddr(peer)
        # 0 and 0: pause_writing as soon as the transport buffers anything, resume_writing
        # once it is empty again (see the module docstring).
        transport.set_write_buffer_limits(high=0, low=0)
        if self._on_made is not None:
            self._on_made(self)
        if self._session is None:
            if self.error is None:  # nobody attached a session nor refused the connection
                self._fail(LocalProtocolError("an accepted connection was given no session"))
            return
        self._flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        """The session's receive buffer: the socket writes ciphertext straight into it (at
        most one turn's worth under a download limit)."""
        buf = self.session.get_buffer(sizehint)
        if self._down:
            for throttle in self._down:
                if throttle.limit.rate > 0 and len(buf) > throttle.quantum:
                    buf = buf[:throttle.quantum]
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        """Decrypt what arrived and queue the messages it completed."""
        self.bytes_received += nbytes
        if self._down:
            self._charge_read(nbytes)
        try:
            msgs = self.session.buffer_updated(nbytes)
        except RemoteProtocolError as exc:
            self._flush()  # a Goodbye for an unsupported version, if the session queued one
            self._fail(exc)
            return
        self._flush()
        if not self.ready.done() and self.session.remote_hello is not None:
            self.ready.set_result(None)
        self._queue_messages(msgs)
        if self.session.stopped and not self.reading_paused and self.transport is not None:
            # What follows is not this session's: leave it in the kernel until detach().
            self.transport.pause_reading()
            self.reading_paused = True

    def feed(self, data: bytes) -> None:
        """Bytes another protocol read from this socket before handing it over: processed
        as if they had just arrived."""
        view = memoryview(data)
        while len(view) and self.error is None:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            if n == 0:
                self._fail(LocalProtocolError("no room for handed-over bytes"))
                return
            buf[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Give up the socket after the session stopped (:attr:`Session.stop_on`): returns
        the transport (reading paused) and the bytes already read past the session's last
        record, for the protocol that runs next on it (a relay circuit's spliced stream).
        Raises :class:`RemoteProtocolError` if the peer cut a frame at that point."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.error is not None:
            raise ConnectionLost("cannot hand over: the connection is closed")
        self._send_small()  # anything this session still had to say goes first
        self.hand_over_pending()
        unread = self.session.take_unread()
        if not self.reading_paused:
            transport.pause_reading()
            self.reading_paused = True
        self._detached = True
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        return transport, unread

    def _queue_messages(self, msgs: list[Message]) -> None:
        if msgs:
            self.queue.extend(msgs)
            for msg in msgs:
                self.queued_bytes += _size(msg)
            self._wake()
        if (self.queued_bytes > self._max_queue or self.session.stalled) and not self.reading_paused:
            assert self.transport is not None
            if not self._read_held:
                self.transport.pause_reading()
            self.reading_paused = True

    def eof_received(self) -> bool:
        """The peer closed its side: clean if on a record and frame boundary."""
        if self._session is None or self._detached:
            return False
        try:
            self._session.receive_eof()
        except RemoteProtocolError as exc:
            self._fail(exc)
            return False
        self._set_error(ConnectionLost("the peer closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: wake everyone waiting."""
        if self._detached:
            return
        if exc is not None:
            self._set_error(ConnectionLost(f"connection lost: {exc}"))
        else:
            self._set_error(ConnectionLost("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)
        self._pending.clear()  # nobody will send them: free their buffers
        self._small.clear()
        self.pending_bytes = 0
        self._resume_drain()
        for throttle in self._up:
            throttle.discard(self._write_turn)
        for throttle in self._down:
            throttle.discard(self._read_turn)

    def pause_writing(self) -> None:
        """The socket did not take everything: the transport holds the rest."""
        self._transport_busy = True

    def resume_writing(self) -> None:
        """The transport's buffer is empty again: hand it the next pieces."""
        self._transport_busy = False
        self._push()

    def _push(self) -> None:
        """Hand queued pieces to the transport while it sends them straight away."""
        transport = self.transport
        pending = self._pending
        if transport is None:
            return
        if transport.is_closing():
            pending.clear()
            self.pending_bytes = 0
        else:
            write = transport.write
            up = self._up
            size = WRITE_PIECE
            while pending and not self._transport_busy:
                if up and not (size := self._write_allowance()):
                    break  # an upload limit's turn comes later (_write_turn)
                view = pending[0]
                if len(view) <= size:
                    pending.popleft()
                    piece = view
                else:
                    piece = view[:size]
                    pending[0] = view[size:]
                self.pending_bytes -= len(piece)
                write(piece)  # may call pause_writing() (-> _transport_busy) at once
                if up:
                    self._charge_write(len(piece))
        self._check_paused()

    # -- bandwidth limits ----------------------------------------------------------------

    def _write_allowance(self) -> int:
        """Bytes the next write may carry under the upload limits; 0: wait for a turn.

        A turn is worth one quantum of bytes, whatever the sizes of the queued pieces: two
        connections under one limit move the same bytes per round (deficit round robin), not
        the same number of writes."""
        size = WRITE_PIECE
        for throttle in self._up:
            if throttle.limit.rate > 0:
                if self._write_grant <= 0 and not throttle.allows():
                    if not self._write_held:
                        self._write_held = True
                        throttle.wait(self._write_turn)
                    return 0
                size = min(size, throttle.quantum)
        if self._write_grant > 0:
            size = min(size, self._write_grant)
        return size

    def _charge_write(self, nbytes: int) -> None:
        for throttle in self._up:
            if throttle.limit.rate > 0:
                throttle.charge(nbytes)
        if self._write_grant:
            self._write_grant = max(0, self._write_grant - nbytes)

    def _write_turn(self) -> None:
        """An upload limit's turn came: write on, one quantum's worth."""
        self._write_held = False
        self._write_grant = min((t.quantum for t in self._up if t.limit.rate > 0),
                                default=WRITE_PIECE)
        self._push()

    def _charge_read(self, nbytes: int) -> None:
        """Charge a read to the download limits; pause reading while one is overdrawn."""
        for throttle in self._down:
            if throttle.limit.rate > 0:
                throttle.charge(nbytes)
        self._hold_reading()

    def _hold_reading(self) -> None:
        if self._read_held:
            return
        for throttle in self._down:
            if throttle.limit.rate > 0 and not throttle.allows():
                self._read_held = True
                if not self.reading_paused and self.transport is not None:
                    self.transport.pause_reading()
                throttle.wait(self._read_turn)
                return

    def _read_turn(self) -> None:
        """A download limit's turn came: read on, unless another limit (or the queue) holds it."""
        self._read_held = False  # this turn's read goes; the next charge checks again
        transport = self.transport
        if not (self._read_held or self.reading_paused) and transport is not None \
                and not transport.is_closing():
            transport.resume_reading()

    def hand_over_pending(self) -> None:
        """Give the transport everything queued at once (before closing it: the transport
        sends its buffer before it closes, our queue it would drop)."""
        transport = self.transport
        self._take_small()
        if transport is not None and not transport.is_closing():
            while self._pending:
                piece = self._pending.popleft()
                transport.write(piece)
                if self._up:
                    self._charge_write(len(piece))
        self._pending.clear()
        self.pending_bytes = 0

    def _check_paused(self) -> None:
        """Backpressure on what waits to be sent (ours plus the transport's): paused above
        ``max_send_buffer``, resumed below a quarter of it."""
        queued = self.pending_bytes
        if self._transport_busy and self.transport is not None:
            queued += self.transport.get_write_buffer_size()
        if not self.write_paused and queued > self._max_send:
            self.write_paused = True
        elif self.write_paused and queued <= self._max_send // 4:
            self.write_paused = False
            self._resume_drain()
        # The peer is to blame only for bytes it does not take, not for those our own upload
        # limit holds (a slow limit must not look like a stalled reader).
        stalled = self.write_paused and not self._write_held
        if stalled is not self._stall_reported:
            self._stall_reported = stalled
            if self._on_write_paused is not None:
                self._on_write_paused(self, stalled)

    # -- used by Connection ----------------------------------------------------------------

    def write_message(self, msg: Message) -> None:
        """Encrypt and hand ``msg`` to the transport (no waiting; see :meth:`drain`)."""
        if self.error is not None:
            raise self.error
        if self.transport is None or self.transport.is_closing() \
                or self.session.state is not State.OPEN:
            raise ConnectionLost("cannot send: the connection is closed")
        session = self.session
        session.send(msg)
        if session.sealed_pending:
            self._flush()
        elif not self._small_soon:
            # Only small frames gathered: sealed together, in one record, at the end of
            # this loop turn (Session.data_to_send via _send_small).
            self._small_soon = True
            asyncio.get_running_loop().call_soon(self._send_small)

    async def drain(self) -> None:
        """Wait until the transport buffer is below its high-water mark."""
        while self.write_paused:
            if self.error is not None:
                raise self.error
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    async def next_message(self) -> Message:
        """The next queued message; raises the connection's error once the queue is empty.

        Yields to the event loop every :data:`READ_BATCH` messages even when more are queued.
        """
        if self._streak >= READ_BATCH:
            self._streak = 0
            await asyncio.sleep(0)
        while not self.queue:
            self._streak = 0
            if self._session is not None and self._session.stalled and self.error is None:
                # Records wait undecoded (DECODE_AHEAD): decode the next batch now that
                # the queue is empty, before reading more from the socket.
                try:
                    self._queue_messages(self._session.decode_more())
                except RemoteProtocolError as exc:
                    self._fail(exc)
                self._flush()
                self._maybe_resume()
                continue
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        msg = self.queue.popleft()
        self._streak += 1
        self.queued_bytes -= _size(msg)
        self._maybe_resume()
        return msg

    def _maybe_resume(self) -> None:
        """Read the socket again once the queue is down to half its bound and no records
        wait undecoded."""
        if self.reading_paused and self.queued_bytes <= self._max_queue // 2 \
                and not self.session.stalled:
            self.reading_paused = False
            if self.transport is not None and not self.transport.is_closing() \
                    and not self._read_held:
                self.transport.resume_reading()

    def abort(self, exc: Exception) -> None:
        """Drop the connection at once, recording ``exc`` as the reason."""
        self._fail(exc)

    # -- internals -----------------------------------------------------------------------

    def _flush(self) -> None:
        if self._session is None:
            return
        data = self._session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.bytes_sent += len(data)
            self.pending_bytes += len(data)
            if len(data) < COALESCE_BELOW:
                # Small (a request, a small chunk): gathered with the others of this loop
                # turn into one write, one system call and one wake-up of the peer.
                self._small += data
                if len(self._small) < WRITE_PIECE:
                    if not self._small_soon:
                        self._small_soon = True
                        asyncio.get_running_loop().call_soon(self._send_small)
                    return
                self._take_small()
            else:
                self._take_small()  # what was gathered goes first: order is kept
                self._pending.append(data if type(data) is memoryview else memoryview(data))
            self._push()

    def _take_small(self) -> None:
        """Queue the gathered small messages (already counted in :attr:`pending_bytes`)."""
        if self._small:
            self._pending.append(memoryview(bytes(self._small)))
            self._small.clear()

    def _send_small(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._small_soon = False
            return
        self._flush()  # the session's gathered frames (no new callback: _small_soon is set)
        self._small_soon = False
        self._take_small()
        self._push()

    @property
    def send_buffered(self) -> int:
        """Bytes waiting to be sent: queued here and in the transport's buffer."""
        t = self.transport
        return self.pending_bytes + (t.get_write_buffer_size() if t is not None else 0)

    def _set_error(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if not self.ready.done():
            self.ready.set_exception(self.error)
            self.ready.exception()  # mark retrieved: nobody may be waiting for it any more
        self._wake()
        self._resume_drain()

    def _fail(self, exc: Exception) -> None:
        self._set_error(exc)
        if self.transport is not None:
            if self._small and not self.transport.is_closing():
                self._take_small()  # a last Goodbye goes out now, not after the abort
                self._push()
            self.transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _resume_drain(self) -> None:
        if self._drain is not None:
            if not self._drain.done():
                self._drain.set_result(None)
            self._drain = None


class Connection:
    """One authenticated, encrypted session over TCP (either side)."""

    def __init__(self, protocol: WireProtocol) -> None:
        session = protocol.session
        assert session.remote_peer is not None and session.remote_hello is not None
        self._p = protocol
        self.remote_peer: PeerId = session.remote_peer
        """The peer id the remote proved in the handshake."""
        self.remote_hello: Hello = session.remote_hello
        """The remote's Hello (version, listen addresses, agent)."""
        self.remote_address: tuple[str, int] = protocol.address
        """The remote socket address (a relay's, for a circuit)."""
        self.via: PeerId | None = protocol.via
        """The relay's peer id when this connection is a relay circuit; None when direct."""
        local = protocol.transport.get_extra_info("sockname") if protocol.transport else None
        self.local_address: tuple[str, int] = \
            from_sockaddr(local) if isinstance(local, tuple) else ("", 0)
        """Our end's socket address (its port is the listen port on a punched connection)."""
        self.punched = False
        """Opened by a hole punch (:func:`p2p.wire.punch.punch`), not by a plain dial."""
        self.observed: tuple[str, int] | None = None
        """On a circuit we dialled: where the relay saw our connection to it come from (what
        a hole punch tells the peer to dial), when the relay said."""
        self._closed = False

    @property
    def path(self) -> str:
        """``relayed`` (a relay circuit), ``punched`` (opened by a hole punch) or ``direct``."""
        if self.via is not None:
            return "relayed"
        return "punched" if self.punched else "direct"

    @property
    def protocol(self) -> WireProtocol:
        """The shell under this connection (a relay hands its socket over through it)."""
        return self._p

    @property
    def bytes_sent(self) -> int:
        """Ciphertext bytes written to the socket (handshake included)."""
        return self._p.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Ciphertext bytes read from the socket (handshake included)."""
        return self._p.bytes_received

    @property
    def write_buffer_size(self) -> int:
        """Bytes waiting to be sent (for memory accounting and UIs)."""
        return self._p.send_buffered

    @property
    def receive_buffered(self) -> int:
        """Bytes held on the receive side: queued messages and incomplete records/frames."""
        return self._p.queued_bytes + self._p.session.pending_receive

    async def send(self, msg: Message) -> None:
        """Send ``msg``; waits while the peer is slower than us (backpressure).

        Raises :class:`ConnectionLost` when the peer went away, :class:`ClosedByUs` after
        :meth:`aclose` or :meth:`abort`.
        """
        self._p.write_message(msg)
        if self._p.write_paused:
            await self._p.drain()

    def abort(self, reason: str) -> None:
        """Drop the connection at once, without a Goodbye (a peer that stopped reading)."""
        self._closed = True
        self._p.abort(ClosedByUs(f"dropped: {reason}", reason=reason))

    def send_nowait(self, msg: Message) -> bool:
        """Send a small message unless the write side is paused; returns whether it was sent."""
        if self._p.write_paused or self._closed:
            return False
        try:
            self._p.write_message(msg)
        except (ConnectionLost, ClosedByUs):
            return False
        return True

    async def receive(self) -> Message:
        """The next message from the peer.

        Raises :class:`ConnectionLost` at the end (Goodbye, EOF, reset), :class:`ClosedByUs`
        once we closed it, and :class:`RemoteProtocolError` when the peer sent something
        forbidden.
        """
        msg = await self._p.next_message()
        if type(msg) is Goodbye:
            lost = ConnectionLost(f"the peer said goodbye: {msg.reason}", reason=msg.reason)
            self._p.abort(lost)
            raise lost
        return msg

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except (ConnectionLost, ClosedByUs):
            raise StopAsyncIteration from None

    def close_nowait(self, reason: str = "") -> None:
        """Start closing: queue a Goodbye when the session is open, stop receiving, and let the
        socket close once what is buffered has been sent. :meth:`aclose` waits for that.

        Receivers and senders waiting on this connection get :class:`ClosedByUs` at once.
        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        p = self._p
        transport = p.transport
        if transport is None:
            return
        if p.error is None and p.session.state is State.OPEN and not transport.is_closing():
            p.session.close(reason)
            p._flush()
            p._set_error(ClosedByUs(reason=reason))
            p.hand_over_pending()
            transport.close()  # flushes the buffer, then closes
        else:
            p._set_error(ClosedByUs(reason=reason))
            transport.abort()

    async def aclose(self, reason: str = "") -> None:
        """Close the connection, sending Goodbye when possible, and wait until the socket is gone
        (aborting it after :data:`CLOSE_TIMEOUT` if the peer does not take what is buffered).
        Idempotent."""
        self.close_nowait(reason)
        p = self._p
        transport = p.transport
        if transport is None or p.closed.done():
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(p.closed)
        except TimeoutError:
            transport.abort()


async def connect(host: str, port: int, identity: Identity, *, expected_peer: PeerId | None = None,
                  listen_addrs: Sequence[tuple[str, int]] = (), agent: str = "p2p/0.1",
                  timeout: float = 10.0, cipher: str = "AESGCM",  # the API shape the download engine asked for
                  max_send_buffer: int = MAX_SEND_BUFFER,
                  max_receive_queue: int = MAX_RECEIVE_QUEUE,
                  source: str | None = None, first: Sequence[Message] = (),
                  up: Sequence[Throttle] = (), down: Sequence[Throttle] = (),
                  stop_on: tuple[type, ...] = (),
                  local_port: int | None = None) -> Connection:
    """Dial ``host:port``, run the handshake and the Hello exchange, and return the connection.

    ``first`` are sent right after our Hello, with the last handshake message, without
    waiting for the remote Hello (their answers may be queued on the connection already).

    ``host`` is an IPv4 or IPv6 literal (``::1``, no brackets) or a name. Raises :class:`~p2p.errors.NetworkError` when the peer cannot be reached or the
    handshake takes longer than ``timeout``, :class:`WrongPeer` when it proves
    another identity than ``expected_peer``, :class:`RemoteProtocolError` on garbage.
    ``source`` binds the local end to that address (any port) first; ``local_port`` binds
    it to that port (our listen port) with :func:`bound_socket`, so that a NAT maps this
    connection to the public port others see us at (a relay reservation, a hole punch's
    signalling). ``up`` and ``down``: the bandwidth limits its bytes count against
    (:class:`WireProtocol`). ``stop_on``:
    message types after which the session stops (:attr:`Session.stop_on`, relay circuits).
    """
    loop = asyncio.get_running_loop()
    hello = Hello(PROTOCOL_VERSION, identity.peer_id, tuple(listen_addrs), agent)
    session = Session(identity, hello, initiator=True, expected_peer=expected_peer,
                      cipher=cipher, recv_buffer=RECV_BUFFER, first=first)
    session.stop_on = stop_on
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                def factory() -> WireProtocol:
                    return WireProtocol(session, max_send_buffer=max_send_buffer,
                                        max_receive_queue=max_receive_queue, up=up, down=down)
                if local_port is None:
                    _raw, proto = await loop.create_connection(
                        factory, host, port, local_addr=None if source is None else (source, 0))
                else:
                    sock = bound_socket(host, local_port, source=source)
                    try:
                        await loop.sock_connect(sock, (host, port))
                    except BaseException:
                        sock.close()
                        raise
                    _raw, proto = await loop.create_connection(factory, sock=sock)
                transport = proto.transport
            except OSError as exc:
                raise NetworkError(f"cannot connect to {format_address((host, port))}: {exc}") from None
            await proto.ready
    except TimeoutError:
        if transport is not None:
            transport.abort()
        raise NetworkError(f"no handshake with {format_address((host, port))} within {timeout} s") from None
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
    return Connection(proto)


REUSE_PORT: int | None = getattr(socket, "SO_REUSEPORT", None)
"""``SO_REUSEPORT`` where the platform has it (not on Windows). The chunk server's listener
sets it, so that outbound sockets may bind the same port (:func:`bound_socket`): a NAT then
maps the connections we open to the public port observers saw, which a hole punch needs."""


def bound_socket(toward: str, port: int, *, source: str | None = None) -> socket.socket:
    """A non-blocking TCP socket bound to local ``port`` (our listen port), ready to dial
    ``toward`` (an IP literal: it picks the address family).

    SO_REUSEADDR and SO_REUSEPORT let it share the port with our listener and with other
    outbound connections (each has its own remote end). Connections opened this way leave a
    port-preserving NAT from the port others already saw us at, which TCP hole punching
    needs (docs/PROTOCOL.md, Hole punching). Raises ``OSError`` (``EADDRINUSE`` when the port
    is held by a socket without SO_REUSEPORT, ``EADDRNOTAVAIL`` when a connection to that
    same remote end already uses it).
    """
    try:
        v6 = ipaddress.ip_address(toward.strip("[]")).version == 6
    except ValueError:
        v6 = ":" in toward
    family = socket.AF_INET6 if v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if REUSE_PORT is not None:
            sock.setsockopt(socket.SOL_SOCKET, REUSE_PORT, 1)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((source or ("::" if v6 else "0.0.0.0"), port))
    except BaseException:
        sock.close()
        raise
    return sock


async def secure(sock: socket.socket, identity: Identity, *, initiator: bool,
                 expected_peer: PeerId | None, listen_addrs: Sequence[tuple[str, int]] = (),
                 agent: str = "p2p/0.1", timeout: float = 10.0, cipher: str = "AESGCM",
                 max_send_buffer: int = MAX_SEND_BUFFER,
                 max_receive_queue: int = MAX_RECEIVE_QUEUE,
                 up: Sequence[Throttle] = (), down: Sequence[Throttle] = ()) -> Connection:
    """Run the handshake and the Hello exchange over ``sock``, a TCP connection already open
    (a hole punch's, which either side may have dialled), in the Noise role given by
    ``initiator``; the connection then owns the socket.

    Raises as :func:`connect` does after the TCP connect: :class:`~p2p.errors.NetworkError`
    (no handshake within ``timeout``, connection lost), :class:`WrongPeer`,
    :class:`RemoteProtocolError`. The socket is closed on failure.
    """
    loop = asyncio.get_running_loop()
    hello = Hello(PROTOCOL_VERSION, identity.peer_id, tuple(listen_addrs), agent)
    session = Session(identity, hello, initiator=initiator, expected_peer=expected_peer,
                      cipher=cipher, recv_buffer=RECV_BUFFER)
    try:
        _raw, proto = await loop.create_connection(
            lambda: WireProtocol(session, max_send_buffer=max_send_buffer,
                                 max_receive_queue=max_receive_queue, up=up, down=down),
            sock=sock)
    except BaseException:
        sock.close()
        raise
    return await handshake(proto, timeout=timeout)


async def handshake(proto: WireProtocol, *, timeout: float = 10.0,
                    who: str | None = None) -> Connection:
    """Wait until ``proto`` (which has its session) finished the handshake and the Hello
    exchange; the :class:`Connection` then. Aborts the socket on failure or timeout. ``who``
    names the far end in the timeout's message (default: its address)."""
    try:
        async with asyncio.timeout(timeout):
            await proto.ready
    except TimeoutError:
        proto.abort(ConnectionLost("handshake timed out"))
        where = who or format_address(proto.address)
        raise NetworkError(f"no handshake with {where} within {timeout} s") from None
    except BaseException:
        proto.abort(ConnectionLost("handshake failed"))
        raise
    return Connection(proto)


async def connect_over(transport: asyncio.Transport, unread: bytes, identity: Identity, *,
                       expected_peer: PeerId, via: PeerId,
                       listen_addrs: Sequence[tuple[str, int]] = (), agent: str = "p2p/0.1",
                       timeout: float = 10.0, cipher: str = "AESGCM",
                       first: Sequence[Message] = (),
                       up: Sequence[Throttle] = (), down: Sequence[Throttle] = ()) -> Connection:
    """Run the dialler's side of the handshake over a socket another protocol handed over
    (a relay circuit: ``via`` is the relay), as :func:`connect` does over a fresh one.

    Raises as :func:`connect` does; the transport is closed on failure.
    """
    hello = Hello(PROTOCOL_VERSION, identity.peer_id, tuple(listen_addrs), agent)
    session = Session(identity, hello, initiator=True, expected_peer=expected_peer,
                      cipher=cipher, recv_buffer=RECV_BUFFER, first=first)
    proto = WireProtocol(session, up=up, down=down)
    proto.via = via
    adopt(transport, proto, unread)
    return await handshake(proto, timeout=timeout,
                           who=f"{expected_peer.short()} through relay {via.short()}")


def adopt(transport: asyncio.Transport, proto: WireProtocol, unread: bytes) -> None:
    """Make ``proto`` the protocol of a handed-over socket: it sees ``unread`` first, then
    reads on."""
    transport.set_protocol(proto)
    proto.connection_made(transport)
    if unread:
        proto.feed(unread)
    if not transport.is_closing() and not proto.reading_paused:
        transport.resume_reading()
