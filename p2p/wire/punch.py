"""TCP hole punching over a relayed session (libp2p DCUtR semantics).

Two peers behind NATs that hold a relayed session (a circuit through a relay, Noise end to
end) try to open a direct TCP connection: both dial each other at the same moment from their
listen port, so that each NAT sees an outbound SYN before the other's arrives, and the SYNs
cross (a TCP simultaneous open) or one lands on the other's listener. docs/PROTOCOL.md, Hole
punching, has the conversation, the timing, the limits and the threats.

Two parts, as everywhere in the wire layer:

* :class:`Coordinator` -- the sans-IO state machine: feed it the messages from the peer,
  the outcome of each dial and the time (``now``); it returns what to do (:class:`Send`,
  :class:`Dial`) and when to call it again (:meth:`Coordinator.next_deadline`). No
  sockets, no clock: the unit tests drive it with a :class:`~p2p.testing.FakeClock`.
* :func:`punch` -- the asyncio shell: runs a coordinator, dials from the listen port
  (:func:`~p2p.wire.transport.bound_socket`), claims the peer's connections that reach our
  listener (:meth:`~p2p.wire.server.Server.claim_inbound`), and runs the normal Noise XX
  handshake on the first socket that opens, checking the peer id.

How the relay integration calls it (both peers, once their relayed session is up)::

    # The relayed session carries the punch messages. On the dialler it is our own
    # Connection through the circuit: its reader hands every HolePunchConnect and
    # HolePunchSync to channel.deliver(msg), and calls channel.close() when it ends.
    # On the target it is served by our chunk server: Server(on_punch=...) gets them,
    # with the connection they came on, to deliver to that connection's channel.
    channel = PunchChannel(relayed.send)
    try:
        direct = await punch(
            Role.DIALLER,                        # or Role.TARGET on the other side
            listen_port=node.port,               # the chunk server's port
            identity=identity, expected_peer=peer_id, signal=channel,
            own_addrs=[observed_by_relay, *listen_addrs],  # what we tell the peer to dial
            peer_observed=[peer_seen_by_relay],  # where the relay saw the peer (dialled first)
            public=reachability.reachable,       # a dial-back proved we are reachable
            listener=chunk_server,               # claims the peer's SYN that hits our listener
        )
    except PunchFailed as exc:
        ...                                      # stay on the relay; exc.reason says why

``observed_by_relay`` is only the listen port's public mapping if the connection to the relay
left from the listen port: dial the relay with ``connect(..., local_port=node.port)``.

The target side (the peer the relay connected to, which holds the reservation) calls it with
``Role.TARGET``: it starts the exchange and times the round trip. The dialler is the Noise
initiator on the direct connection, whichever side's SYN opened it. :func:`punch` returns the
authenticated :class:`~p2p.wire.transport.Connection` (its ``remote_peer`` is
``expected_peer``) or raises :class:`PunchFailed` within :meth:`PunchConfig.bound` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ipaddress
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..address import Address, format_address, normalize_host
from ..errors import BadInput, NetworkError, RemoteProtocolError
from ..identity import Identity, PeerId
from ..tasks import TaskOwner
from .bandwidth import Throttle
from .errors import ClosedByUs, ConnectionLost, LocalProtocolError
from .messages import (
    MAX_PUNCH_ADDRS,
    MAX_PUNCH_ROUND,
    PROTOCOL_VERSION,
    Hello,
    HolePunchConnect,
    HolePunchSync,
    Message,
)
from .session import RECV_BUFFER, Session
from .transport import Connection, WireProtocol, bound_socket, handshake, secure

__all__ = [
    "DEFAULT_CONFIG",
    "Coordinator",
    "Dial",
    "InboundClaims",
    "PunchChannel",
    "PunchConfig",
    "PunchFailed",
    "PunchMessage",
    "Role",
    "Send",
    "Signal",
    "punch",
]

log = logging.getLogger(__name__)

# -- limits (docs/PROTOCOL.md, Hole punching, explains each) --------------------------------

MAX_ROUNDS = 3
"""Connect/Sync exchanges tried before giving up: libp2p measured 97.6% of successful punches
on the first, and a NAT pair that failed three times is not going to open."""
DIAL_WINDOW = 5.0
"""Seconds each round dials for: routers that drop an early SYN open at once; routers that
answer it with a reset need retries until two SYNs cross within one round trip (reported
within 6 s, median 0.4 s, across real latency)."""
RETRY_INTERVAL = 0.2
"""Least time between two connection attempts to one address: a refused or failed SYN is
retried this soon (the lab's pace), and never faster, whatever the peer sends."""
ATTEMPT_TIMEOUT = 1.0
"""Seconds one SYN may wait unanswered before a fresh one replaces it: the kernel's own first
retransmission comes at 1 s; the peer's SYN reaches a socket still connecting."""
SIGNAL_TIMEOUT = 10.0
"""Seconds to wait for the peer's next message over the relay (a relayed round trip across
continents with a loaded relay is well under this)."""
HANDSHAKE_TIMEOUT = 5.0
"""Seconds the Noise handshake may take on a socket the punch opened."""
MAX_CANDIDATES = 4
"""Distinct addresses one punch dials: the relay's observation of the peer first, then the
peer's own claims. Bounds how many hosts a hostile peer can make us send SYNs to."""
MAX_ATTEMPTS = 150
"""Connection attempts (SYNs) per punch, all addresses and rounds together: 25 per address and
round at the fastest pace, so a peer naming a victim gets it at most this many SYNs."""
MAX_QUEUED_SIGNALS = 8
"""Punch messages held for a punch that has not read them: more is a flood."""


class Role(enum.Enum):
    """Which end of the relayed session this is (DCUtR's A and B)."""

    DIALLER = "dialler"
    """A: it asked the relay to connect it to the peer. Answers the target's Connect, dials
    on Sync, and is the Noise initiator on the direct connection."""
    TARGET = "target"
    """B: the relay connected the dialler to it. Starts the punch (sends Connect, times the
    round trip, sends Sync, dials half a round trip later)."""


PunchMessage = HolePunchConnect | HolePunchSync
"""The messages a punch exchanges over the relayed session."""


@dataclass(frozen=True)
class PunchConfig:
    """The timing and limits of one punch; the defaults are the protocol's (tests shorten
    them). Both peers should use the same values."""

    rounds: int = MAX_ROUNDS
    """Connect/Sync exchanges before giving up (at most 255: the round travels as u8)."""
    dial_window: float = DIAL_WINDOW
    """Seconds each round dials (and accepts) for."""
    retry_interval: float = RETRY_INTERVAL
    """Least seconds between two attempts to one address."""
    attempt_timeout: float = ATTEMPT_TIMEOUT
    """Seconds one connection attempt may take."""
    signal_timeout: float = SIGNAL_TIMEOUT
    """Seconds to wait for the peer's next punch message."""
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    """Seconds the Noise handshake may take on an opened socket."""
    max_candidates: int = MAX_CANDIDATES
    """Distinct addresses of the peer dialled in the whole punch."""
    max_attempts: int = MAX_ATTEMPTS
    """Connection attempts per punch, over all addresses and rounds."""

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= MAX_PUNCH_ROUND:
            raise LocalProtocolError(f"rounds must be in [1, {MAX_PUNCH_ROUND}]")
        if min(self.dial_window, self.retry_interval, self.attempt_timeout,
               self.signal_timeout, self.handshake_timeout) <= 0:
            raise LocalProtocolError("punch timings must be positive")
        if self.max_candidates < 1 or self.max_attempts < 1:
            raise LocalProtocolError("a punch must be allowed an address and an attempt")

    def bound(self) -> float:
        """The longest a punch can take, in seconds, before it fails: every round waits out
        its signals (two for the target: Connect answered, then its own Sync timer of at most
        half of that; one for the dialler) and its window, and the last handshake may end
        after it."""
        per_round = 1.5 * self.signal_timeout + self.dial_window + self.attempt_timeout
        return self.rounds * per_round + self.signal_timeout + self.handshake_timeout


DEFAULT_CONFIG = PunchConfig()
"""The protocol's timing and limits."""


class PunchFailed(NetworkError):
    """No direct connection came of the punch; the relayed session is still there to use.

    ``reason`` is for logs and UIs: what the last round saw (each address and how its last
    attempt ended), or that the peer stopped answering.
    """

    def __init__(self, reason: str, *, rounds: int = 0, attempts: int = 0) -> None:
        super().__init__(f"hole punch failed: {reason}")
        self.reason = reason
        self.rounds = rounds
        """Rounds begun."""
        self.attempts = attempts
        """Connection attempts made."""


# -- the sans-IO coordinator -----------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``message`` to the peer over the relayed session."""

    message: PunchMessage


@dataclass(frozen=True)
class Dial:
    """Open one TCP connection to ``address`` from the listen port, giving up after
    ``timeout`` seconds; report the outcome with :meth:`Coordinator.dial_failed` or
    :meth:`Coordinator.dial_succeeded`."""

    address: Address
    timeout: float


Action = Send | Dial


class _Phase(enum.Enum):
    AWAIT_CONNECT = "waiting for the peer's Connect"
    AWAIT_SYNC = "waiting for the peer's Sync"
    TIMER = "waiting half a round trip"
    WINDOW = "dialling"
    DONE = "done"
    FAILED = "failed"


@dataclass
class _Target:
    """One address being dialled this round."""

    address: Address
    next_attempt: float
    in_flight: bool = False
    opened: bool = False
    attempts: int = 0
    last_error: str = "not tried"


@dataclass
class _Round:
    number: int
    sent_at: float = 0.0
    """When the target sent its Connect (the round trip is timed from here)."""
    rtt: float | None = None
    dials: bool = True
    """This side dials in this round (not when it is public and the peer is not)."""
    timed: bool = True
    """Both sides dial at once (not a reversal, where only the NATed side dials)."""
    window_end: float = math.inf
    targets: list[_Target] = field(default_factory=list)


class Coordinator:
    """The punch of one side, as a pure state machine (no I/O, no clock).

    Call :meth:`start`, then feed :meth:`receive` (punch messages from the peer),
    :meth:`dial_failed` / :meth:`dial_succeeded` (outcomes of :class:`Dial` actions),
    :meth:`handle_timer` (whenever :meth:`next_deadline` has passed) and finally
    :meth:`connected` (a Noise session opened on a dialled or accepted socket). Each returns
    the actions to carry out, in order. It ends :attr:`done` (:attr:`failure` None) or
    failed (:attr:`failure` says why).
    """

    def __init__(self, role: Role, *, own_addrs: Sequence[Address] = (), public: bool = False,
                 peer_observed: Sequence[Address] = (), config: PunchConfig = DEFAULT_CONFIG) -> None:
        """``own_addrs``: what we tell the peer to dial (observed first, at most
        :data:`~p2p.wire.messages.MAX_PUNCH_ADDRS`); ``public``: whether a dial-back proved us
        reachable; ``peer_observed``: where a party we trust (the relay) saw the peer."""
        self.role = role
        self.config = config
        self.public = public
        self.own_addrs: tuple[Address, ...] = _addresses(own_addrs)[:MAX_PUNCH_ADDRS]
        self.peer_observed: tuple[Address, ...] = _addresses(peer_observed)
        self.peer_claimed: tuple[Address, ...] = ()
        """The addresses the peer's Connects named, first seen first (a later round's new
        ones come after the earlier ones, so the candidates never change once full)."""
        self.failure: str | None = None
        """Why the punch failed; None while it runs and once it succeeded."""
        self.attempts = 0
        """Connection attempts made so far (at most ``config.max_attempts``)."""
        self._phase = _Phase.AWAIT_CONNECT
        self._deadline = math.inf
        self._round = _Round(0)
        self._started = False
        self._signal_lost: str | None = None
        """Why the relayed session ended, if it did during a round."""
        self._last_attempt: dict[Address, float] = {}
        """When each address was last dialled: the pace holds across rounds too."""

    # -- what it is doing ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Finished: succeeded (:attr:`failure` is None) or failed."""
        return self._phase in (_Phase.DONE, _Phase.FAILED)

    @property
    def round(self) -> int:
        """The round under way (0 before the first Connect)."""
        return self._round.number

    @property
    def dialling(self) -> bool:
        """Within a round's dial window."""
        return self._phase is _Phase.WINDOW

    @property
    def rtt(self) -> float | None:
        """The round trip the target measured this round (None on the dialler)."""
        return self._round.rtt

    def candidates(self) -> tuple[Address, ...]:
        """The peer's addresses this side dials, in order: observed by the relay first, then
        the peer's claims; at most ``config.max_candidates`` over the whole punch, no
        duplicates, nothing that cannot be dialled (an unspecified or multicast address)."""
        out: list[Address] = []
        for address in (*self.peer_observed, *self.peer_claimed):
            if address not in out and _dialable(address):
                out.append(address)
            if len(out) == self.config.max_candidates:
                break
        return tuple(out)

    def claims(self, address: Address) -> bool:
        """Whether an inbound connection from ``address`` is taken as the peer's punch: while
        the punch runs, from the IP of an address we would dial (any port: a NAT may have
        rewritten it)."""
        if self.done:
            return False
        try:
            ip = normalize_host(address[0])
        except BadInput:
            return False
        return any(ip == host for host, _port in (*self.peer_observed, *self.candidates()))

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next; None when nothing is due."""
        if self.done:
            return None
        times = [self._deadline]
        if self._phase is _Phase.WINDOW:
            times.append(self._round.window_end)
            if self.attempts < self.config.max_attempts:
                times.extend(t.next_attempt for t in self._round.targets
                             if not t.in_flight and not t.opened)
        soonest = min(times)
        return None if soonest == math.inf else soonest

    # -- inputs ------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin: the target sends its first Connect; the dialler waits for it."""
        if self._started:
            raise LocalProtocolError("a punch starts once")
        self._started = True
        if self.role is Role.TARGET:
            return self._send_connect(1, now)
        self._await(_Phase.AWAIT_CONNECT, now)
        return []

    def receive(self, message: Message, now: float) -> list[Action]:
        """A punch message arrived from the peer. One it may not send now fails the punch
        (a peer that breaks the protocol is not dialled on)."""
        if self.done:
            return []
        match message:
            case HolePunchConnect(round=number) if self.role is Role.DIALLER:
                if number != self._round.number + 1 or number > self.config.rounds:
                    return self._fail_remote(f"Connect for round {number} in round "
                                             f"{self._round.number}")
                self._round = _Round(number)
                self._take_claims(message)
                actions: list[Action] = [Send(HolePunchConnect(number, self.own_addrs,
                                                               self.public))]
                self._plan(message.public)
                if self._round.timed:
                    self._await(_Phase.AWAIT_SYNC, now)
                else:
                    actions += self._open_window(now)
                return actions
            case HolePunchConnect(round=number):  # the target: the answer to ours
                if self._phase is not _Phase.AWAIT_CONNECT or number != self._round.number:
                    return self._fail_remote(f"unexpected Connect for round {number}")
                rtt = self._round.rtt = max(0.0, now - self._round.sent_at)
                self._take_claims(message)
                self._plan(message.public)
                if not self._round.timed:
                    return self._open_window(now)
                # Sync takes half a round trip to arrive; the dialler dials on it. Dialling
                # after the same half the SYNs leave together.
                self._phase = _Phase.TIMER
                self._deadline = now + rtt / 2
                return [Send(HolePunchSync(number))]
            case HolePunchSync(round=number) if self.role is Role.DIALLER:
                if self._phase is not _Phase.AWAIT_SYNC or number != self._round.number:
                    return self._fail_remote(f"unexpected Sync for round {number}")
                return self._open_window(now)
            case HolePunchSync():
                return self._fail_remote("a Sync sent to the target")
        raise LocalProtocolError(f"not a punch message: {type(message).__name__}")

    def handle_timer(self, now: float) -> list[Action]:
        """Apply what is due at ``now``: a signal that did not come, the half round trip,
        retries, the end of a round."""
        if self.done:
            return []
        match self._phase:
            case _Phase.AWAIT_CONNECT | _Phase.AWAIT_SYNC if now >= self._deadline:
                what = "Connect" if self._phase is _Phase.AWAIT_CONNECT else "Sync"
                self._fail(f"the peer sent no {what} within {self.config.signal_timeout:g} s "
                           f"(round {max(1, self._round.number)})")
                return []
            case _Phase.TIMER if now >= self._deadline:
                return self._open_window(now)
            case _Phase.WINDOW:
                if now >= self._round.window_end:
                    return self._end_round(now)
                return self._due_dials(now)
        return []

    def dial_failed(self, address: Address, error: str, now: float) -> list[Action]:
        """A :class:`Dial` to ``address`` ended without a connection (refused, timed out,
        unreachable): it is tried again, no sooner than ``retry_interval`` after it began."""
        target = self._target(address)
        if target is None:
            return []  # a dial of an earlier round
        target.in_flight = False
        target.last_error = error
        return self._due_dials(now) if self._phase is _Phase.WINDOW else []

    def dial_succeeded(self, address: Address, now: float) -> list[Action]:
        """A :class:`Dial` to ``address`` opened a TCP connection (the shell now runs the
        handshake on it): that address is not dialled again this round."""
        target = self._target(address)
        if target is not None:
            target.in_flight = False
            target.opened = True
            target.last_error = "opened"
        return []

    def handshake_failed(self, address: Address, error: str) -> None:
        """The Noise handshake on a socket from ``address`` failed (wrong peer, timeout):
        recorded for :attr:`failure`; the round goes on."""
        target = self._target(address)
        if target is not None:
            target.last_error = f"opened, then {error}"

    def connected(self) -> None:
        """A Noise session with the expected peer opened: the punch succeeded (even when
        that handshake ended after the last round did)."""
        self._phase = _Phase.DONE
        self.failure = None

    def abort(self, reason: str) -> None:
        """Fail now (the shell gave up)."""
        if not self.done:
            self._fail(reason)

    def signal_lost(self, reason: str) -> None:
        """The relayed session ended (the peer may have given up a moment before us). Dials
        under way or due need no signal: a round being dialled (or about to be) runs to its
        end, then the punch fails; waiting for a message fails now."""
        if self.done:
            return
        if self._phase in (_Phase.TIMER, _Phase.WINDOW):
            self._signal_lost = reason
        else:
            self._fail(reason)

    # -- internals ---------------------------------------------------------------------------

    def _send_connect(self, number: int, now: float) -> list[Action]:
        self._round = _Round(number, sent_at=now)
        self._await(_Phase.AWAIT_CONNECT, now)
        return [Send(HolePunchConnect(number, self.own_addrs, self.public))]

    def _await(self, phase: _Phase, now: float) -> None:
        self._phase = phase
        self._deadline = now + self.config.signal_timeout

    def _take_claims(self, message: HolePunchConnect) -> None:
        self.peer_claimed = _addresses((*self.peer_claimed, *message.addrs))[:MAX_PUNCH_ADDRS]

    def _plan(self, peer_public: bool) -> None:
        """Who dials this round: both, timed, when neither is public; else only the NATed
        side, at once (connection reversal); the dialler when both are."""
        r = self._round
        if not self.public and not peer_public:
            r.dials, r.timed = True, True
        elif self.public and peer_public:
            r.dials, r.timed = self.role is Role.DIALLER, False
        else:
            r.dials, r.timed = not self.public, False

    def _open_window(self, now: float) -> list[Action]:
        r = self._round
        self._phase = _Phase.WINDOW
        self._deadline = math.inf
        r.window_end = now + self.config.dial_window
        retry = self.config.retry_interval
        r.targets = [_Target(a, max(now, self._last_attempt.get(a, -math.inf) + retry))
                     for a in self.candidates()] if r.dials else []
        return self._due_dials(now)

    def _due_dials(self, now: float) -> list[Action]:
        actions: list[Action] = []
        timeout = self.config.attempt_timeout
        for target in self._round.targets:
            if self.attempts >= self.config.max_attempts:
                break
            if target.in_flight or target.opened or target.next_attempt > now:
                continue
            target.in_flight = True
            target.attempts += 1
            target.next_attempt = now + self.config.retry_interval
            self._last_attempt[target.address] = now
            self.attempts += 1
            # An attempt never outlives the window: the next round starts clean.
            actions.append(Dial(target.address, max(0.0, min(timeout, self._round.window_end - now))))
        return actions

    def _end_round(self, now: float) -> list[Action]:
        summary = self._summary()
        if self._round.number >= self.config.rounds:
            self._fail(f"no direct connection after {self._round.number} "
                       f"round{'s' if self._round.number != 1 else ''} of "
                       f"{self.config.dial_window:g} s: {summary}")
            return []
        if self._signal_lost is not None:
            self._fail(f"{self._signal_lost} (after round {self._round.number}: {summary})")
            return []
        log.debug("punch round %d over: %s", self._round.number, summary)
        if self.role is Role.TARGET:
            return self._send_connect(self._round.number + 1, now)
        self._await(_Phase.AWAIT_CONNECT, now)
        return []

    def _summary(self) -> str:
        r = self._round
        if not r.dials:
            return "the peer did not reach us (we are public: it dials)"
        if not r.targets:
            return "the peer named no address we can dial"
        parts = [f"{format_address(t.address)} {t.last_error} ({t.attempts} attempts)"
                 for t in r.targets]
        if self.attempts >= self.config.max_attempts:
            parts.append(f"attempt limit {self.config.max_attempts} reached")
        return "; ".join(parts)

    def _target(self, address: Address) -> _Target | None:
        for target in self._round.targets:
            if target.address == address:
                return target
        return None

    def _fail(self, reason: str) -> None:
        self._phase = _Phase.FAILED
        self.failure = reason

    def _fail_remote(self, what: str) -> list[Action]:
        self._fail(f"the peer broke the punch protocol: {what}")
        return []


def _addresses(addrs: Iterable[Address]) -> tuple[Address, ...]:
    """Normalised IP-literal addresses, first occurrence kept; anything else dropped (a
    punch never resolves a name)."""
    out: list[Address] = []
    for host, port in addrs:
        try:
            address = (normalize_host(host), int(port))
        except (BadInput, ValueError):
            continue
        if address not in out:
            out.append(address)
    return tuple(out)


def _dialable(address: Address) -> bool:
    host, port = address
    if not 0 < port <= 0xFFFF:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast
                or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")))


# -- the signalling channel ------------------------------------------------------------------


class Signal(Protocol):
    """Where punch messages travel: a send and a receive over the relayed session."""

    async def send(self, message: PunchMessage) -> None:
        """Send one punch message to the peer."""

    async def receive(self) -> PunchMessage:
        """The next punch message from the peer; raises
        :class:`~p2p.wire.errors.ConnectionLost` once the session is gone."""


class PunchChannel:
    """A :class:`Signal` over a session that carries other messages too (the relayed one,
    over which chunks may flow meanwhile): its reader hands punch messages to
    :meth:`deliver`; :meth:`send` goes out through ``send``."""

    def __init__(self, send: Callable[[Message], Awaitable[None]], *,
                 capacity: int = MAX_QUEUED_SIGNALS) -> None:
        self._send = send
        self._queue: collections.deque[PunchMessage] = collections.deque()
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        self._closed: Exception | None = None

    def deliver(self, message: PunchMessage) -> None:
        """A punch message came in on the session. Raises :class:`RemoteProtocolError`
        when more than ``capacity`` wait unread (a flood: drop the peer)."""
        if self._closed is not None:
            return
        if len(self._queue) >= self._capacity:
            raise RemoteProtocolError(f"more than {self._capacity} unread hole punch messages")
        self._queue.append(message)
        self._wake()

    def close(self, reason: str = "connection closed") -> None:
        """The session is gone: a waiting :meth:`receive` raises ConnectionLost. Idempotent."""
        if self._closed is None:
            self._closed = ConnectionLost(reason)
            self._wake()

    async def send(self, message: PunchMessage) -> None:
        """Send through the session."""
        if self._closed is not None:
            raise self._closed
        await self._send(message)

    async def receive(self) -> PunchMessage:
        """The next delivered punch message."""
        while not self._queue:
            if self._closed is not None:
                raise self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @classmethod
    def pair(cls) -> tuple[PunchChannel, PunchChannel]:
        """Two channels joined in memory (what one sends the other receives): for tests."""
        channels: list[PunchChannel] = []

        async def to_second(message: Message) -> None:
            channels[1].deliver(_punch_message(message))

        async def to_first(message: Message) -> None:
            channels[0].deliver(_punch_message(message))

        channels.extend((cls(to_second), cls(to_first)))
        return channels[0], channels[1]


def _punch_message(message: Message) -> PunchMessage:
    if not isinstance(message, HolePunchConnect | HolePunchSync):
        raise LocalProtocolError(f"not a punch message: {type(message).__name__}")
    return message


class InboundClaims(Protocol):
    """Our listener, as a punch sees it (:meth:`p2p.wire.server.Server.claim_inbound`)."""

    def claim_inbound(self, claim: Callable[[WireProtocol], bool]) -> Callable[[], None]:
        """Offer every accepted connection to ``claim`` first; returns its remover."""


# -- the asyncio shell -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Received:
    message: PunchMessage


@dataclass(frozen=True)
class _SignalLost:
    reason: str


@dataclass(frozen=True)
class _Dialled:
    address: Address
    sock: socket.socket | None
    error: str = ""


@dataclass(frozen=True)
class _Claimed:
    proto: WireProtocol


@dataclass(frozen=True)
class _Secured:
    address: Address
    conn: Connection | None
    error: str = ""


_Event = _Received | _SignalLost | _Dialled | _Claimed | _Secured


async def punch(role: Role, *, listen_port: int, identity: Identity, expected_peer: PeerId,
                signal: Signal, own_addrs: Sequence[Address] = (),
                peer_observed: Sequence[Address] = (), public: bool = False,
                listener: InboundClaims | None = None, config: PunchConfig = DEFAULT_CONFIG,
                clock: Callable[[], float] | None = None, source: str | None = None,
                listen_addrs: Sequence[Address] = (), agent: str = "p2p/0.1",
                up: Sequence[Throttle] = (), down: Sequence[Throttle] = ()) -> Connection:
    """Punch a direct TCP connection to ``expected_peer`` and return it, authenticated.

    ``role``: :attr:`Role.DIALLER` on the side that asked the relay for the circuit,
    :attr:`Role.TARGET` on the other. ``listen_port``: our chunk server's port; every dial
    leaves from it. ``signal``: the relayed session (:class:`PunchChannel`). ``own_addrs``:
    what the peer should dial (where the relay and other observers saw us first, then our
    listen addresses). ``peer_observed``: where the relay saw the peer. ``public``: a
    dial-back proved us reachable (then only the peer dials: reversal). ``listener``: our
    chunk server, so that the peer's SYN that reaches it is taken for the punch instead of
    being served; without one only our own dials can succeed. ``clock``: the time source
    for the coordinator (default: the event loop's). ``source``: the local address dials
    leave from (default: any; give the listener's when it listens on one address only).
    ``listen_addrs`` and ``agent`` go in our Hello on the direct connection. ``up`` and
    ``down``: the bandwidth limits a connection we dialled counts against (one our listener
    accepted already counts against the listener's).

    Raises :class:`PunchFailed` (a :class:`~p2p.errors.NetworkError`) with the reason,
    within ``config.bound()`` seconds. Everything it started is closed when it returns.
    """
    shell = _Shell(role, listen_port, identity, expected_peer, signal, config,
                   Coordinator(role, own_addrs=own_addrs, public=public,
                               peer_observed=peer_observed, config=config),
                   clock, source, listen_addrs, agent, (tuple(up), tuple(down)))
    remove_claim = listener.claim_inbound(shell.claim) if listener is not None else None
    try:
        return await shell.run()
    finally:
        if remove_claim is not None:
            remove_claim()
        await shell.aclose()


class _Shell:
    """The I/O of one punch: carries out a :class:`Coordinator`'s actions and feeds it what
    happens, one event at a time from one queue."""

    def __init__(self, role: Role, listen_port: int, identity: Identity, expected_peer: PeerId,
                 signal: Signal, config: PunchConfig, coord: Coordinator,
                 clock: Callable[[], float] | None, source: str | None,
                 listen_addrs: Sequence[Address], agent: str,
                 throttles: tuple[tuple[Throttle, ...], tuple[Throttle, ...]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.now = clock if clock is not None else self.loop.time
        self.coord = coord
        self.config = config
        self.listen_port = listen_port
        self.source = source
        self.up, self.down = throttles
        self.identity = identity
        self.expected_peer = expected_peer
        self.signal = signal
        self.initiator = role is Role.DIALLER
        self.listen_addrs = tuple(listen_addrs)
        self.agent = agent
        self.hello = Hello(PROTOCOL_VERSION, identity.peer_id, self.listen_addrs, agent)
        self.events: asyncio.Queue[_Event] = asyncio.Queue()
        self.tasks = TaskOwner(f"hole punch to {expected_peer.short()}", log)
        self.handshaking = 0
        """Noise handshakes under way. The dialler (the Noise initiator) runs one at a time,
        so that both ends settle on the same connection: the target answers on every socket,
        and only one of them is ever spoken to."""
        self.backlog: collections.deque[_Dialled] = collections.deque()
        """Sockets the dialler opened while a handshake ran on another."""
        self.result: Connection | None = None

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> Connection:
        coord = self.coord
        self.tasks.spawn(self._read_signals(), "signals")
        await self._perform(coord.start(self.now()))
        # A handshake that began before the last round ended may still bring it home.
        while not coord.done or (coord.failure is not None and self.handshaking
                                 and self.result is None):
            deadline = coord.next_deadline()
            wait = None if deadline is None else max(0.0, deadline - self.now())
            try:
                async with asyncio.timeout(wait):
                    event = await self.events.get()
            except TimeoutError:
                await self._perform(coord.handle_timer(self.now()))
                continue
            actions = self._handle(event)
            if not coord.done:
                await self._perform([*actions, *coord.handle_timer(self.now())])
            elif actions:
                await self._perform(actions)
        if self.result is None:
            raise PunchFailed(coord.failure or "gave up", rounds=coord.round,
                              attempts=coord.attempts)
        return self.result

    def _handle(self, event: _Event) -> list[Action]:
        coord, now = self.coord, self.now()
        match event:
            case _Received(message=message):
                return coord.receive(message, now)
            case _SignalLost(reason=reason):
                coord.signal_lost(reason)
            case _Dialled(address=address, sock=None, error=error):
                return coord.dial_failed(address, error, now)
            case _Dialled(address=address) as dialled:
                actions = coord.dial_succeeded(address, now)
                if self.initiator and self.handshaking:
                    self.backlog.append(dialled)
                else:
                    self._secure(dialled)
                return actions
            case _Claimed(proto=proto):
                # Its session was attached (and counted) when the listener handed it over.
                self.tasks.spawn(self._handshake(proto), f"handshake {format_address(proto.address)}")
            case _Secured(conn=None, address=address, error=error):
                self.handshaking -= 1
                log.info("hole punch: handshake with %s failed: %s", format_address(address), error)
                coord.handshake_failed(address, error)
                if self.initiator and self.backlog and not coord.done:
                    self._secure(self.backlog.popleft())
            case _Secured(conn=conn) if conn is not None:
                self.handshaking -= 1
                if self.result is None:
                    conn.punched = True
                    self.result = conn
                    coord.connected()
                else:
                    conn.abort("another punched connection was chosen")
        return []

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send(message=message):
                    try:
                        await self.signal.send(message)
                    except (ConnectionLost, ClosedByUs) as exc:
                        self.coord.signal_lost(f"the relayed session ended: {exc}")
                        return
                case Dial(address=address, timeout=timeout):
                    self.tasks.spawn(self._dial(address, timeout), f"dial {format_address(address)}")

    # -- the listener's connections ----------------------------------------------------------

    def claim(self, proto: WireProtocol) -> bool:
        """Our listener accepted ``proto`` (nothing read yet): take it if it comes from the
        peer, attaching the session of our punch role."""
        if not self.coord.claims(proto.address):
            return False
        if self.initiator and self.handshaking:
            return False  # one handshake at a time; the listener serves this one as usual
        proto.attach(Session(self.identity, self.hello, initiator=self.initiator,
                             expected_peer=self.expected_peer, recv_buffer=RECV_BUFFER))
        self.handshaking += 1
        self.events.put_nowait(_Claimed(proto))
        return True

    # -- tasks -------------------------------------------------------------------------------

    async def _read_signals(self) -> None:
        try:
            while True:
                self.events.put_nowait(_Received(await self.signal.receive()))
        except (ConnectionLost, ClosedByUs) as exc:
            self.events.put_nowait(_SignalLost(f"the relayed session ended: {exc}"))

    async def _dial(self, address: Address, timeout: float) -> None:
        try:
            sock = bound_socket(address[0], self.listen_port, source=self.source)
        except OSError as exc:
            self.events.put_nowait(_Dialled(address, None, _error_text(exc)))
            return
        try:
            async with asyncio.timeout(timeout):
                await self.loop.sock_connect(sock, address)
        except TimeoutError:
            sock.close()
            self.events.put_nowait(_Dialled(address, None, "timed out"))
            return
        except OSError as exc:
            sock.close()
            self.events.put_nowait(_Dialled(address, None, _error_text(exc)))
            return
        except BaseException:
            sock.close()
            raise
        self.events.put_nowait(_Dialled(address, sock))

    def _secure(self, dialled: _Dialled) -> None:
        assert dialled.sock is not None
        self.handshaking += 1
        self.tasks.spawn(self._secure_socket(dialled.address, dialled.sock),
                         f"handshake {format_address(dialled.address)}")

    async def _secure_socket(self, address: Address, sock: socket.socket) -> None:
        try:
            conn = await secure(sock, self.identity, initiator=self.initiator,
                                expected_peer=self.expected_peer, listen_addrs=self.listen_addrs,
                                agent=self.agent, timeout=self.config.handshake_timeout,
                                up=self.up, down=self.down)
        except (NetworkError, RemoteProtocolError, OSError) as exc:
            self.events.put_nowait(_Secured(address, None, str(exc)))
            return
        self.events.put_nowait(_Secured(address, conn))

    async def _handshake(self, proto: WireProtocol) -> None:
        try:
            conn = await handshake(proto, timeout=self.config.handshake_timeout)
        except (NetworkError, RemoteProtocolError) as exc:
            self.events.put_nowait(_Secured(proto.address, None, str(exc)))
            return
        self.events.put_nowait(_Secured(proto.address, conn))

    async def aclose(self) -> None:
        """Stop every task; close whatever they opened that is not the result."""
        await self.tasks.aclose()
        while not self.events.empty():
            event = self.events.get_nowait()
            if isinstance(event, _Secured) and event.conn is not None \
                    and event.conn is not self.result:
                event.conn.abort("another punched connection was chosen")
            elif isinstance(event, _Dialled) and event.sock is not None:
                event.sock.close()
            elif isinstance(event, _Claimed):
                event.proto.abort(ClosedByUs("the hole punch is over"))
        for dialled in self.backlog:
            if dialled.sock is not None:
                dialled.sock.close()
        self.backlog.clear()


def _error_text(exc: OSError) -> str:
    """An OSError as a short phrase: "refused", else the system's words."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
