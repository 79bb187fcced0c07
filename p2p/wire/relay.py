"""The relay: reservations and circuits over our own wire, then spliced bytes.

The chunk server hands a connection here when its first message after the Hello is a
relay request (:data:`~p2p.wire.messages.RELAY_MESSAGES`); the rules are
:class:`~p2p.wire.circuits.RelayTable`'s. The conversation (docs/PROTOCOL.md, Relays):

1. A node that others cannot reach keeps one connection to the relay and sends
   ``Reserve``; the relay answers ``RelayStatus`` (OK, lifetime, its addresses, where it sees
   the node). Pings keep the connection (and the node's NAT mapping) alive; a second
   ``Reserve`` on it refreshes the reservation.
2. A dialler opens a new connection to the relay and sends ``Connect(target)``. The relay
   sends ``Stop(source, token)`` over the target's reservation.
3. The target opens another new connection to the relay and sends ``Accept(token)``. The
   relay answers OK on both connections and from then on copies bytes between the two
   sockets, as they come, in both directions: no session of the relay's runs on them any
   more. The dialler and the target run a fresh Noise XX handshake inside the circuit;
   the dialler checks the target's peer id. The relay sees ciphertext only, and never
   decrypts or re-encrypts it.

Limits (reservations, circuits, per peer, per IP, per-circuit time and bytes) are refused
with a reason; the splice's bytes count against a global rate (:class:`Throttle`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ..address import Address, format_address
from ..identity import PeerId
from ..tasks import TaskOwner
from .bandwidth import Throttle
from .circuits import Circuit, Refusal, RelayLimits, RelayTable
from .errors import ClosedByUs, ConnectionLost, RemoteProtocolError
from .messages import (
    MAX_RELAY_ADDRS,
    Accept,
    Connect,
    Message,
    Ping,
    Pong,
    RelayCode,
    RelayStatus,
    Reserve,
    Stop,
)
from .transport import Connection

__all__ = ["SPLICE_HIGH", "SPLICE_LOW", "TIMER_TICK", "RelayService"]

log = logging.getLogger(__name__)

SPLICE_HIGH = 1 << 20
"""Bytes a circuit's socket may hold unsent before the relay stops reading the other side:
a few records of ciphertext in flight, so one circuit costs the relay at most about 2 MiB."""
SPLICE_LOW = 256 * 1024
"""The other side is read again once the write buffer is below this."""
TIMER_TICK = 1.0
"""Seconds between the relay's checks of its deadlines (reservation expiry and idleness,
accept timeouts, circuit durations): all are many seconds long."""

Tap = Callable[[Circuit, bytes], None]


class _Failed(Exception):
    """A pending circuit did not come about (the target did not accept, or went away)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class _End(asyncio.Protocol):
    """One socket of a splice: what it reads goes to the other socket."""

    def __init__(self, splice: _Splice) -> None:
        self.splice = splice
        self.transport: asyncio.Transport | None = None
        self.other: _End | None = None
        self.held_by_peer = False
        """Not read: the other socket does not take what we send it."""
        self.held_by_rate = False
        """Not read: the relay's rate limit is overdrawn."""
        self.eof = False
        """This side closed its sending half."""

    def start(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=SPLICE_HIGH, low=SPLICE_LOW)

    def data_received(self, data: bytes) -> None:
        self.splice.forward(self, data)

    def eof_received(self) -> bool:
        # A half-close goes through: the other side sees EOF where this side sent it. Once
        # both sides have closed their halves, the circuit is over.
        self.eof = True
        other = self.other
        if other is None or other.eof or other.transport is None \
                or not other.transport.can_write_eof():
            self.splice.end("closed")
            return False
        other.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.end("closed")

    def pause_writing(self) -> None:
        if self.other is not None:
            self.other.hold(peer=True)

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.release(peer=True)

    def hold(self, *, peer: bool = False, rate: bool = False) -> None:
        was = self.held_by_peer or self.held_by_rate
        self.held_by_peer |= peer
        self.held_by_rate |= rate
        if not was and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def release(self, *, peer: bool = False, rate: bool = False) -> None:
        if peer:
            self.held_by_peer = False
        if rate:
            self.held_by_rate = False
        if not (self.held_by_peer or self.held_by_rate) and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.resume_reading()

    def rate_turn(self) -> None:
        self.release(rate=True)


class _Splice:
    """Two sockets joined byte for byte, under the circuit's limits and the relay's rate."""

    def __init__(self, service: RelayService, circuit: Circuit) -> None:
        self.service = service
        self.circuit = circuit
        self.a = _End(self)
        self.b = _End(self)
        self.a.other, self.b.other = self.b, self.a
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Resolves with why the circuit ended."""

    def join(self, dialler: Connection, target: Connection) -> None:
        """Take both sockets over (their sessions stopped) and start copying."""
        ta, unread_a = dialler.protocol.detach()
        tb, unread_b = target.protocol.detach()
        for end, transport in ((self.a, ta), (self.b, tb)):
            transport.set_protocol(end)
            end.start(transport)
        if unread_a:
            self.forward(self.a, unread_a)
        if unread_b:
            self.forward(self.b, unread_b)
        for end in (self.a, self.b):
            if end.transport is not None and not end.transport.is_closing() \
                    and not (end.held_by_peer or end.held_by_rate):
                end.transport.resume_reading()

    def forward(self, source: _End, data: bytes) -> None:
        if self.done.done():
            return
        service = self.service
        if service.tap is not None:
            service.tap(self.circuit, data)
        if not service.table.charge(self.circuit, len(data)):
            self.end("bytes")
            return
        dest = source.other
        assert dest is not None
        if dest.transport is not None and not dest.transport.is_closing():
            dest.transport.write(data)
        throttle = service.throttle
        if throttle.rate > 0:
            throttle.charge(len(data))
            if not throttle.allows() and not source.held_by_rate:
                source.hold(rate=True)
                throttle.wait(source.rate_turn)

    def end(self, why: str) -> None:
        """Close both sockets (buffered bytes still go out) and free the circuit."""
        if self.done.done():
            return
        self.done.set_result(why)
        self.service.table.close(self.circuit, why)
        for end in (self.a, self.b):
            self.service.throttle.discard(end.rate_turn)
            if end.transport is not None:
                if why in ("bytes", "duration", "relay closed"):
                    end.transport.abort()
                else:
                    end.transport.close()


class RelayService:
    """Offers reservations and circuits to the peers that ask (see the module docstring).

    ``addresses`` names where the relay accepts connections (sent to reserving peers);
    ``clock`` is where deadlines' time comes from (default: the event loop's; tests pass a
    :class:`p2p.testing.FakeClock` and call :meth:`handle_timers`); ``tap``, for tests and
    diagnostics, sees every spliced byte (it must not keep a reference to them).
    """

    def __init__(self, limits: RelayLimits | None = None, *,
                 addresses: Callable[[], Sequence[Address]] = tuple,
                 clock: Callable[[], float] | None = None, tap: Tap | None = None) -> None:
        self.limits = limits or RelayLimits()
        self.table = RelayTable(self.limits)
        self.tap = tap
        self._addresses = addresses
        self._clock_arg = clock
        self.throttle = Throttle(self.limits.rate)
        self._reserved: dict[PeerId, Connection] = {}
        self._pending: dict[bytes, asyncio.Future[tuple[Connection, asyncio.Future[str]]]] = {}
        self._splices: dict[bytes, _Splice] = {}
        self._no_circuits = asyncio.Event()
        """Set while no circuit is spliced (:meth:`wait_no_circuits`)."""
        self._no_circuits.set()
        self._tasks = TaskOwner("relay", log)
        self._started = False
        self._closed = False

    def _now(self) -> float:
        if self._clock_arg is not None:
            return self._clock_arg()
        return asyncio.get_running_loop().time()

    def start(self) -> None:
        """Start checking deadlines (an owned task). Idempotent."""
        if not self._started:
            self._started = True
            self._tasks.spawn(self._tick(), "deadlines")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TIMER_TICK)
            self.handle_timers()

    def set_rate(self, rate: float) -> None:
        """Change the global relay rate (bytes per second; 0: none) now."""
        self.throttle.set_rate(rate)

    # -- the edge the chunk server calls -----------------------------------------------------

    async def handle(self, conn: Connection, first: Message) -> None:
        """Serve one connection whose first message was ``first`` (a relay request), until
        the reservation or the circuit it carries ends. Raises what the connection raises
        (the server's per-peer edge logs it and drops the peer)."""
        if self._closed:
            await self._status(conn, Refusal(RelayCode.PERMISSION_DENIED, "relay closing"))
            return
        match first:
            case Reserve():
                await self._serve_reservation(conn)
            case Connect(target=target):
                await self._connect(conn, target)
            case Accept(token=token):
                await self._accept(conn, token)
            case _:
                raise RemoteProtocolError(f"{type(first).__name__} is not a relay request")

    async def _status(self, conn: Connection, refusal: Refusal) -> None:
        log.info("relay refused %s (%s): %s", conn.remote_peer.short(),
                 format_address(conn.remote_address), refusal.reason)
        await conn.send(RelayStatus(int(refusal.code), refusal.reason))
        await conn.aclose(refusal.reason)

    # -- reservations --------------------------------------------------------------------

    async def _serve_reservation(self, conn: Connection) -> None:
        peer = conn.remote_peer
        granted = self.table.reserve(peer, conn.remote_address[0], self._now())
        if isinstance(granted, Refusal):
            await self._status(conn, granted)
            return
        old = self._reserved.get(peer)
        self._reserved[peer] = conn
        if old is not None and old is not conn:
            old.close_nowait("replaced by a newer reservation")
        try:
            await self._granted(conn)
            while True:
                msg = await conn.receive()
                self.table.seen(peer, self._now())
                match msg:
                    case Ping(nonce=nonce):
                        await conn.send(Pong(nonce))
                    case Reserve():
                        again = self.table.reserve(peer, conn.remote_address[0], self._now())
                        if isinstance(again, Refusal):  # pragma: no cover - a refresh is granted
                            await self._status(conn, again)
                            return
                        await self._granted(conn)
                    case Pong():
                        pass
                    case _:
                        raise RemoteProtocolError(
                            f"{type(msg).__name__} is not allowed on a reservation")
        finally:
            if self._reserved.get(peer) is conn:
                del self._reserved[peer]
                self.table.release(peer)

    async def _granted(self, conn: Connection) -> None:
        addrs = tuple(self._addresses())[:MAX_RELAY_ADDRS]
        await conn.send(RelayStatus(int(RelayCode.OK), "reserved", ttl=self.limits.reservation_ttl,
                                    relay_addrs=addrs, observed=conn.remote_address))

    # -- circuits -------------------------------------------------------------------------

    async def _connect(self, conn: Connection, target: PeerId) -> None:
        circuit = self.table.connect(conn.remote_peer, conn.remote_address[0], target, self._now())
        if isinstance(circuit, Refusal):
            await self._status(conn, circuit)
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[Connection, asyncio.Future[str]]] = loop.create_future()
        self._pending[circuit.token] = waiter
        try:
            reservation = self._reserved.get(target)
            try:
                if reservation is None:
                    raise ConnectionLost("the target's reservation ended")
                await reservation.send(Stop(conn.remote_peer, circuit.token))
                target_conn, finished = await waiter
            except (ConnectionLost, ClosedByUs):
                self.table.close(circuit, "failed")
                raise _Failed(Refusal(RelayCode.CONNECTION_FAILED,
                                      f"{target.short()} is no longer connected to the relay")
                              ) from None
        except _Failed as exc:
            self.table.refused[RelayCode(exc.refusal.code).name] += 1
            await self._status(conn, exc.refusal)
            return
        finally:
            self._pending.pop(circuit.token, None)
        splice = _Splice(self, circuit)
        self._splices[circuit.token] = splice
        self._no_circuits.clear()
        try:
            # Where we see the dialler: its side of a hole punch tells the target to dial it.
            await conn.send(self._circuit_status(observed=conn.remote_address))
            splice.join(conn, target_conn)
            why = await asyncio.shield(splice.done)
        except BaseException:
            splice.end("relay closed")
            raise
        finally:
            self._splices.pop(circuit.token, None)
            if not self._splices:
                self._no_circuits.set()
            if not finished.done():
                finished.set_result(splice.done.result() if splice.done.done() else "failed")
        log.debug("circuit %s -> %s ended (%s, %d bytes)", circuit.source.short(),
                  circuit.target.short(), why, circuit.bytes)

    async def _accept(self, conn: Connection, token: bytes) -> None:
        circuit = self.table.accept(token, conn.remote_peer, self._now())
        if isinstance(circuit, Refusal):
            await self._status(conn, circuit)
            return
        waiter = self._pending.get(token)
        if waiter is None or waiter.done():
            self.table.close(circuit, "failed")
            await self._status(conn, Refusal(RelayCode.CONNECTION_FAILED, "the dialler went away"))
            return
        finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await conn.send(self._circuit_status())
        waiter.set_result((conn, finished))
        # The dialler's task splices; this one (the server's, for the target's socket)
        # lives until the circuit ends, so the server does not close the socket under it.
        await finished

    def _circuit_status(self, observed: tuple[str, int] | None = None) -> RelayStatus:
        return RelayStatus(int(RelayCode.OK), "circuit open", observed=observed,
                           limit_seconds=self.limits.circuit_seconds,
                           limit_bytes=self.limits.circuit_bytes)

    # -- time ------------------------------------------------------------------------------

    def handle_timers(self) -> None:
        """Apply every deadline the clock has passed: expired or silent reservations are
        closed, diallers whose target never accepted are told CONNECTION_FAILED, circuits
        past their duration are cut."""
        expired = self.table.expire(self._now())
        for held in expired.reservations:
            conn = self._reserved.pop(held.peer, None)
            if conn is not None:
                conn.close_nowait("reservation expired")
        for circuit in expired.pending:
            waiter = self._pending.get(circuit.token)
            if waiter is not None and not waiter.done():
                waiter.set_exception(_Failed(Refusal(
                    RelayCode.CONNECTION_FAILED,
                    f"{circuit.target.short()} did not open the circuit in time")))
        for circuit in expired.circuits:
            splice = self._splices.get(circuit.token)
            if splice is not None:
                splice.end("duration")

    # -- for metrics and tests ---------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """Counts for metrics: gauges, refusals by code, circuits, bytes."""
        return {**self.table.counts(), "refused": dict(self.table.refused),
                "circuits_opened": self.table.circuits_opened,
                "circuits_closed": dict(self.table.circuits_closed),
                "bytes_relayed": self.table.bytes_relayed, "rate": self.throttle.rate}

    async def wait_no_circuits(self) -> None:
        """Return once no circuit is spliced (tests, and a shutdown that lets them finish)."""
        await self._no_circuits.wait()

    def reserved(self) -> list[PeerId]:
        """Peers holding a reservation now."""
        return list(self._reserved)

    async def aclose(self) -> None:
        """Close every reservation and circuit. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for splice in list(self._splices.values()):
            splice.end("relay closed")
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(_Failed(Refusal(RelayCode.CONNECTION_FAILED, "relay closing")))
        for conn in list(self._reserved.values()):
            conn.close_nowait("relay closing")
        await self._tasks.aclose()
        self.throttle.close()

