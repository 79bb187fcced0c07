"""The relay's clients: a dialler opening a circuit, and a node keeping a reservation.

:func:`open_circuit` dials a peer through a relay (docs/PROTOCOL.md, Relays): Connect on a
new connection to the relay, then, once the relay answers OK, a fresh Noise XX handshake
with the target over the same socket, checking the target's peer id. The returned
:class:`~p2p.wire.transport.Connection` is an ordinary one (``via`` names the relay).

:class:`HeldReservation` keeps a reservation on one relay for as long as it runs: it
reserves, pings every :data:`~p2p.wire.circuits.KEEPALIVE_INTERVAL`, refreshes before the
reservation expires, reconnects when the relay goes away, and for each Stop the relay
sends it opens the target's side of the circuit and hands the socket to ``on_circuit``
(the node's chunk server, which then runs the responder's handshake on it).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..address import Address, RelayHint, format_address
from ..errors import NetworkError
from ..identity import Identity, PeerId
from ..tasks import TaskOwner
from .bandwidth import Throttle
from .circuits import KeepaliveRules
from .errors import ClosedByUs, ConnectionLost, RemoteProtocolError
from .messages import Accept, Connect, Message, Ping, Pong, RelayCode, RelayStatus, Reserve, Stop
from .transport import Connection, bound_socket, connect, connect_over

__all__ = ["RETRY_MAX", "RETRY_MIN", "HeldReservation", "RelayRefused", "open_circuit"]

log = logging.getLogger(__name__)

RETRY_MIN = 1.0
"""Seconds before a node tries its relay again after losing or failing a reservation."""
RETRY_MAX = 60.0
"""The longest wait between reservation attempts (doubling from :data:`RETRY_MIN`)."""
RELAY_TIMEOUT = 10.0
"""Seconds for the relay to answer a Reserve, Connect or Accept (the relay waits up to
ACCEPT_TIMEOUT, 10 s, for a target; a dialler waits that and the handshake)."""

MAX_ACCEPTING = 8
"""Circuits a node opens its side of at once: a relay that sends a flood of Stops cannot
make it open a connection for each (the rest are ignored; their diallers time out)."""

OnCircuit = Callable[[asyncio.Transport, bytes, PeerId, PeerId], None]
"""``(socket, bytes already read, relay, source)``: the target's side of a new circuit."""


class RelayRefused(NetworkError):
    """A relay said no (its reason says which limit, or that the peer holds no reservation
    there): try another relay or address."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _refused(status: RelayStatus, relay: str) -> RelayRefused:
    try:
        name = RelayCode(status.code).name
    except ValueError:
        name = f"code {status.code}"
    return RelayRefused(f"relay {relay} refused: {name}: {status.reason}", status.code)


async def _status(conn: Connection, relay: str) -> RelayStatus:
    """The relay's RelayStatus (the next message); raises :class:`RelayRefused` unless OK."""
    try:
        async with asyncio.timeout(RELAY_TIMEOUT):
            msg = await conn.receive()
    except TimeoutError:
        conn.abort("relay did not answer")
        raise NetworkError(f"relay {relay} did not answer within {RELAY_TIMEOUT} s") from None
    except (ConnectionLost, ClosedByUs) as exc:
        raise NetworkError(f"relay {relay}: {exc}") from None
    if not isinstance(msg, RelayStatus):
        conn.abort("expected RelayStatus")
        raise RemoteProtocolError(f"relay {relay} sent {type(msg).__name__}, not RelayStatus")
    if msg.code != RelayCode.OK:
        await conn.aclose("refused")
        raise _refused(msg, relay)
    return msg


async def open_circuit(relay: Address, relay_peer: PeerId | None, target: PeerId,
                       identity: Identity, *, listen_addrs: Sequence[Address] = (),
                       agent: str = "p2p/0.1", timeout: float = 10.0,
                       first: Sequence[Message] = (), up: Sequence[Throttle] = (),
                       down: Sequence[Throttle] = (), local_port: int | None = None) -> Connection:
    """Connect to ``target`` through the relay at ``relay`` (whose peer id, when known, is
    checked). ``first`` are the messages sent with our Hello inside the circuit, as with
    :func:`~p2p.wire.transport.connect`.

    Raises :class:`RelayRefused` (NO_RESERVATION, a limit...), :class:`~p2p.errors.NetworkError`
    when the relay or the target cannot be reached, :class:`WrongPeer` when the far end is
    not ``target``.

    ``local_port``: dial the relay from that port (our listen port, when it can be shared:
    :func:`shareable_port`), so that the relay's observation of us, which the returned
    connection's ``observed`` holds, is the NAT's mapping of the listen port.
    """
    where = format_address(relay)
    outer, local_port = await _dial_relay(relay, local_port, identity, expected_peer=relay_peer,
                                          agent=agent, timeout=timeout, first=(Connect(target),),
                                          stop_on=(RelayStatus,))
    status = await _status(outer, where)
    transport, unread = outer.protocol.detach()
    conn = await connect_over(transport, unread, identity, expected_peer=target,
                              via=outer.remote_peer, listen_addrs=listen_addrs, agent=agent,
                              timeout=timeout, first=first, up=up, down=down)
    # From an ephemeral port the relay saw a mapping no punch can use.
    conn.observed = status.observed if local_port is not None else None
    return conn


async def _dial_relay(relay: Address, local_port: int | None, identity: Identity,
                      **options: Any) -> tuple[Connection, int | None]:
    """Connect to the relay from ``local_port`` when given, else (or when that four-tuple is
    taken already: another connection of ours to this relay left from the port) from an
    ephemeral port; returns the connection and the port it left from (None: ephemeral)."""
    if local_port is not None:
        try:
            return await connect(relay[0], relay[1], identity, local_port=local_port,
                                 **options), local_port
        except NetworkError as exc:
            cause = exc.__context__
            if not (isinstance(cause, OSError) and cause.errno in _PORT_TAKEN):
                raise
            log.info("cannot dial %s from the listen port %d (%s): using an ephemeral port",
                     format_address(relay), local_port, cause)
    return await connect(relay[0], relay[1], identity, **options), None


_PORT_TAKEN = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
"""What a dial from the shared listen port fails with when that four-tuple is taken."""


def shareable_port(toward: Address, port: int | None) -> int | None:
    """``port`` if a socket toward ``toward`` can be bound to it beside our listener, else
    None (an ephemeral port then: the relay sees that mapping, not the listen port's, and a
    hole punch is less likely to work). The reason is logged at info."""
    if port is None or port == 0:
        return None
    try:
        bound_socket(toward[0], port).close()
    except OSError as exc:
        log.info("cannot dial %s from the listen port %d (%s): using an ephemeral port",
                 format_address(toward), port, exc)
        return None
    return port


class HeldReservation:
    """Keeps a reservation on the relay at ``address`` while :meth:`run` runs."""

    def __init__(self, identity: Identity, address: Address, on_circuit: OnCircuit, *,
                 agent: str = "p2p/0.1", relay_peer: PeerId | None = None,
                 clock: Callable[[], float] | None = None,
                 on_change: Callable[[], None] | None = None,
                 local_port: int | None = None) -> None:
        """``local_port``: our listen port, which the reservation connection leaves from
        when it can be shared (:func:`shareable_port`), so that the relay's ``observed`` is
        the NAT's mapping of the port peers dial."""
        self._identity = identity
        self._local_port = local_port
        self.address = address
        """The relay's address we dial (what our relay hints name)."""
        self._on_circuit = on_circuit
        self._agent = agent
        self.relay_peer = relay_peer
        """The relay's peer id (learnt from the first handshake when not given)."""
        self._clock = clock
        self._on_change = on_change
        """Told when the reservation is granted or lost (the node re-announces)."""
        self.status: RelayStatus | None = None
        """The relay's last OK to our Reserve (its addresses, where it sees us)."""
        self.error: str | None = None
        """Why the last attempt failed (None while reserved)."""
        self.reserved = asyncio.Event()
        """Set while a reservation is held."""
        self._tasks = TaskOwner(f"reservation {format_address(address)}", log)
        self.granted = False
        """The current attempt was granted (a reservation lost after that is retried soon)."""
        self.attempts = 0
        """Attempts that failed so far (one, and a waiting share knows there is no way in
        through this relay for now)."""
        self._accepting = 0
        """Circuits whose side we are opening now (at most :data:`MAX_ACCEPTING`)."""

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @property
    def hint(self) -> RelayHint | None:
        """Our relay hint while reserved, else None."""
        if self.reserved.is_set() and self.relay_peer is not None:
            return RelayHint(self.relay_peer, self.address)
        return None

    async def run(self) -> None:
        """Reserve, keep the reservation, and reserve again whenever it is lost; until
        cancelled."""
        wait = RETRY_MIN
        try:
            while True:
                self.granted = False
                try:
                    await self._hold()
                except (NetworkError, RemoteProtocolError, ConnectionLost, ClosedByUs) as exc:
                    self.error = str(exc)
                    self.attempts += 1
                    if self.granted:  # lost after it was held: try again soon
                        wait = RETRY_MIN
                    log.log(logging.INFO if self.attempts == 1 else logging.DEBUG,
                            "relay %s: %s", format_address(self.address), exc)
                    if isinstance(exc, RelayRefused) and exc.code == RelayCode.PERMISSION_DENIED:
                        wait = RETRY_MAX  # it does not relay: ask again only now and then
                finally:
                    self._lost()
                    self._changed()
                await asyncio.sleep(wait)
                wait = min(RETRY_MAX, wait * 2)
        finally:
            await self._tasks.aclose()

    async def _hold(self) -> None:
        where = format_address(self.address)
        conn, _ = await _dial_relay(self.address, shareable_port(self.address, self._local_port),
                                    self._identity, expected_peer=self.relay_peer,
                                    agent=self._agent, first=(Reserve(),), timeout=RELAY_TIMEOUT)
        try:
            status = await _status(conn, where)
            self.relay_peer = conn.remote_peer
            self.status = status
            self.error = None
            self.granted = True
            self.reserved.set()
            self._changed()
            log.info("reserved on relay %s for %d s (seen at %s)", where, status.ttl,
                     format_address(status.observed) if status.observed else "?")
            rules = KeepaliveRules(self._now(), status.ttl)
            loop = asyncio.get_running_loop()
            nonce = 0
            while True:
                delay = max(0.0, rules.next_deadline() - self._now())
                try:
                    async with asyncio.timeout_at(loop.time() + delay):
                        msg = await conn.receive()
                except TimeoutError:
                    msg = None
                if msg is not None:
                    rules.heard(self._now())
                    match msg:
                        case Stop(source=source, token=token):
                            if self._accepting < MAX_ACCEPTING:
                                self._accepting += 1
                                self._tasks.spawn(self._accept(source, token),
                                                  f"circuit from {source.short()}")
                            else:
                                log.info("relay %s: ignoring a Stop, %d circuits being opened",
                                         where, self._accepting)
                        case RelayStatus(code=code, ttl=ttl) if code == RelayCode.OK:
                            self.status = msg
                            rules.reserved(self._now(), ttl)
                        case RelayStatus():
                            raise _refused(msg, where)
                        case Ping(nonce=n):
                            await conn.send(Pong(n))
                        case Pong():
                            pass
                        case _:
                            raise RemoteProtocolError(
                                f"relay {where} sent {type(msg).__name__} on a reservation")
                match rules.due(self._now()):
                    case "dead":
                        raise NetworkError(f"relay {where} stopped answering")
                    case "refresh":
                        await conn.send(Reserve())
                    case "ping":
                        nonce += 1
                        await conn.send(Ping(nonce))
                    case _:
                        pass
        finally:
            self._lost()
            await conn.aclose("reservation ends")

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _lost(self) -> None:
        self.reserved.clear()

    async def _accept(self, source: PeerId, token: bytes) -> None:
        """Open our side of the circuit ``source`` asked for and hand it over."""
        try:
            await self._open_side(source, token)
        finally:
            self._accepting -= 1

    async def _open_side(self, source: PeerId, token: bytes) -> None:
        where = format_address(self.address)
        try:
            conn = await connect(self.address[0], self.address[1], self._identity,
                                 expected_peer=self.relay_peer, agent=self._agent,
                                 first=(Accept(token),), stop_on=(RelayStatus,),
                                 timeout=RELAY_TIMEOUT)
            await _status(conn, where)
            transport, unread = conn.protocol.detach()
        except (NetworkError, RemoteProtocolError, ConnectionLost, ClosedByUs) as exc:
            log.info("circuit from %s through %s failed: %s", source.short(), where, exc)
            return
        assert self.relay_peer is not None
        self._on_circuit(transport, unread, self.relay_peer, source)
