"""The chunk server's rules for one connection, as a pure object: no I/O, no clock.

A :class:`ServedPeer` is what the server holds one accepted connection to: the
handshake deadline, the idle timeout, the stalled-reader timeout, the cap on
requests in flight, Cancel, and the content the peer gets Have messages for. The
asyncio shell in ``server.py`` tells it what happened, always with ``now``, and
does what it answers; it keeps one timer armed at :meth:`ServedPeer.next_deadline`
and calls :meth:`ServedPeer.handle_timer` when that fires (aioquic's pattern), so
tests drive every timeout by hand-setting ``now``.

The life of a connection, as the shell feeds it:

1. Accepted: ``ServedPeer(limits, now)``. The peer has ``handshake_timeout`` to
   finish the Noise handshake and send its Hello, or it is dropped.
2. :meth:`~ServedPeer.handshake_done`. From now on ``idle_timeout`` without a
   message drops the peer, with a Goodbye.
3. Every message: :meth:`~ServedPeer.receive` answers with nothing or one
   :data:`Action`. A Request within the cap is queued; the shell's chunk sender
   takes the queue in order with :meth:`~ServedPeer.next_request` and reports
   each one sent with :meth:`~ServedPeer.request_done`.
4. Whenever the connection's write buffer is above its high-water mark
   (:meth:`~ServedPeer.write_paused` until :meth:`~ServedPeer.write_resumed`),
   the peer has ``send_timeout`` to read it down, or it is dropped without a
   Goodbye (it would not read one).
5. Messages that change nothing (a Ping, a Cancel of nothing, a request over the cap
   or for a chunk we lack, a repeated GetManifest or GetBitfield, anything only a
   server sends) are charged to the peer's :class:`~p2p.wire.budget.Budget`; once it
   is overdrawn, :meth:`~ServedPeer.receive` answers :class:`Drop`. They do not count
   as activity either: a peer that only chatters is still idle, and evictable.
6. After a :class:`Drop` or :meth:`~ServedPeer.close` nothing is due any more.

Before any of this, admission: :class:`Admission` counts connections per IP and per
/24 or /48 (:func:`address_prefix`), and when every slot is taken
:func:`choose_eviction` names the connection that makes room for a newcomer (the
oldest handshake, then the session idle the longest), or none.
"""

from __future__ import annotations

import collections
import enum
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from .budget import NOOP_BURST, NOOP_RATE, Budget
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import (
    Cancel,
    Data,
    GetBitfield,
    GetManifest,
    HolePunchConnect,
    HolePunchSync,
    Message,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
)

__all__ = [
    "EVICTED",
    "STOPPED_READING",
    "TIMED_OUT",
    "Action",
    "Admission",
    "Drop",
    "PunchSignal",
    "Reply",
    "SendBitfield",
    "SendManifest",
    "ServedPeer",
    "ServerLimits",
    "State",
    "address_prefix",
    "choose_eviction",
]

TIMED_OUT = "timed out"
"""Drop reason: no Hello within ``handshake_timeout``, or no message within ``idle_timeout``."""
STOPPED_READING = "dropped: the peer stopped reading"
"""Drop reason: the write buffer stayed above its high-water mark for ``send_timeout``."""
EVICTED = "evicted: server full"
"""Drop reason: every slot was taken and this connection was the one least worth keeping
(:func:`choose_eviction`), so a newcomer got its slot."""


@dataclass(frozen=True)
class ServerLimits:
    """Limits that keep one server safe from many or hostile peers.

    docs/PROTOCOL.md lists them with the wire's other limits.
    """

    max_connections: int = 256
    """Connections in total, handshaking ones included. Each may hold its receive buffer,
    a receive queue, a write buffer and a frame or two (about 6 MiB at the defaults;
    docs/PROTOCOL.md adds them up), so this bounds the server's memory and descriptors."""
    max_connections_per_ip: int = 16
    """Connections from one IP address: room for a few nodes behind one NAT, too few for
    one host to take every slot."""
    max_connections_per_prefix: int = 32
    """Connections from one /24 (IPv4) or /48 (IPv6) network: one operator usually holds a
    whole such block, so a per-IP cap alone lets it take every slot with a handful of
    addresses (16 addresses x 16 = 256); this makes it need eight networks. Two full
    per-IP allowances fit, for a few NATs in one block."""
    eviction_grace: float = 2.0
    """Seconds a connection is safe from eviction when the server is full: a handshake
    younger than this, or a session that was active more recently. A handshake takes one
    and a half round trips and a downloader asks again within milliseconds, so honest
    peers are not evicted mid-step, while an attacker must open every slot anew within
    the grace to keep newcomers out."""
    max_inflight_requests: int = 512
    """Requests a peer may have queued or being sent; more are rejected with
    TOO_MANY_IN_FLIGHT. A queued request is a content id and an index (no bytes are read
    until it is answered, and the write buffer bounds those), so this is sized for the
    path, not for memory: 512 x 64 KiB is twice the bandwidth-delay product of 500 Mbit/s
    at 250 ms (a downloader keeps about that in flight), and 512 entries are what one peer
    can make us keep. Cancel and answering are O(1) per request whatever the queue."""
    idle_timeout: float = 120.0
    """Seconds without any message from a peer before it is dropped (with a Goodbye): a peer
    silent that long is gone or idle, and its slot and buffers are better used."""
    handshake_timeout: float = 10.0
    """Seconds from TCP accept to the peer's Hello. A handshake is one and a half round
    trips, so this allows slow links while a socket that never speaks (slow loris) frees
    its slot soon."""
    send_timeout: float = 30.0
    """Seconds the write buffer may stay above ``max_send_buffer`` (the peer reads too
    little to bring it down); then the peer is dropped without a Goodbye, so a stalled
    reader cannot hold its buffers and its slot for good."""
    max_frame: int = 64 * 1024
    """Largest frame a server accepts: it only receives small control messages, and a frame
    buffer is allocated as soon as its header arrives."""
    max_interested: int = 256
    """Content ids per peer that get Have messages pushed (ones it asked a Bitfield of and
    that we hold): bounds the per-peer set and what one new chunk fans out to."""
    max_send_buffer: int = 4 << 20
    """Write-buffer high-water mark per connection: a few 1 MiB chunks keep a fast link
    busy; above it the senders wait, and the ``send_timeout`` clock runs."""
    max_receive_queue: int = 1 << 20
    """Decoded-but-unhandled bytes per connection before the socket is no longer read:
    requests are tiny, so this is thousands of them; TCP then slows the peer down."""
    receive_buffer: int = 256 << 10
    """Ciphertext receive buffer per connection, allocated once it is admitted: requests
    are small and chunks flow out, so the client's 1 MiB is not needed."""
    noop_burst: float = NOOP_BURST
    """Messages that change nothing (:mod:`p2p.wire.budget`) a peer may send at once
    before it is dropped."""
    noop_rate: float = NOOP_RATE
    """... and per second after that."""
    flood_penalty: float = 60.0
    """Seconds an IP whose connection overdrew its budget is refused at admission (before
    any cryptography). Without it a flooder reconnects with a fresh key and floods again at
    the cost of one handshake; a NATed honest neighbour loses a minute."""
    max_penalised: int = 4096
    """IPs remembered as flooders: bounds the table whatever the number of sources."""


class State(enum.Enum):
    """Where a served connection is in its life."""

    HANDSHAKE = "handshake"
    """Accepted; the peer's Hello has not arrived."""
    OPEN = "open"
    """The peer is authenticated and may send requests."""
    CLOSED = "closed"
    """Dropped or closed: nothing more is due, nothing more is served."""


# -- what the shell is told to do ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message`` to the peer now (a Pong, or the Reject of a request over the cap)."""

    message: Message


@dataclass(frozen=True, slots=True)
class SendManifest:
    """Answer with our manifest of ``content_id``, or None: looking it up is the shell's I/O."""

    content_id: bytes


@dataclass(frozen=True, slots=True)
class SendBitfield:
    """Answer with our bitfield of ``content_id``, then report whether we hold it with
    :meth:`ServedPeer.bitfield_sent` (that decides whether the peer gets our Haves)."""

    content_id: bytes


@dataclass(frozen=True, slots=True)
class PunchSignal:
    """Hand a hole punch message to the punch running over this connection, if any
    (:mod:`p2p.wire.punch`; on a relayed session). Charged as a message that changes nothing."""

    message: HolePunchConnect | HolePunchSync


Action = Reply | SendManifest | SendBitfield | PunchSignal
"""What :meth:`ServedPeer.receive` asks the shell to do for one message."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop the peer (from :meth:`ServedPeer.handle_timer`, or from :meth:`ServedPeer.receive`
    when the peer overdrew its budget of messages that change nothing)."""

    reason: str
    """For logs and UIs: :data:`TIMED_OUT`, :data:`STOPPED_READING` or the flood's
    :meth:`~p2p.wire.budget.Budget.reason`."""
    goodbye: bool
    """Close with a Goodbye (the peer still reads) rather than abort the socket."""
    flooded: bool = False
    """The peer overdrew its budget: its IP is refused for a while (:meth:`Admission.penalise`)."""


# -- the rules -------------------------------------------------------------------------------


class ServedPeer:
    """The server's side of one connection: its deadlines and its queue of requests."""

    def __init__(self, limits: ServerLimits, now: float) -> None:
        self.limits = limits
        self.state = State.HANDSHAKE
        self.accepted_at = now
        """When the connection was accepted (the oldest handshake is evicted first)."""
        self._handshake_deadline = now + limits.handshake_timeout
        self._last_message = now
        self._last_active = now
        self._paused_since: float | None = None
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self._queued: collections.Counter[tuple[bytes, int]] = collections.Counter()
        """Live (not cancelled) queued requests by (content id, index)."""
        self._cancelled: collections.Counter[tuple[bytes, int]] = collections.Counter()
        """Cancelled requests still in ``_queue``, skipped when they come up (O(1) Cancel)."""
        self._live = 0
        """Requests queued and not cancelled."""
        self._serving = 0
        self._interested: set[bytes] = set()
        self._asked: set[tuple[int, bytes]] = set()
        """(message type, content id) of the GetManifest and GetBitfield already answered:
        asking again is allowed (a client may) but charged. Bounded like ``_interested``."""
        self.budget = Budget(now, rate=limits.noop_rate, burst=limits.noop_burst)
        """What the peer may still spend on messages that change nothing."""

    # -- events ------------------------------------------------------------------------------

    def handshake_done(self, now: float) -> None:
        """The peer's Hello arrived: it is authenticated, and the idle clock starts."""
        if self.state is State.HANDSHAKE:
            self.state = State.OPEN
            self._last_message = now
            self._last_active = now

    def receive(self, msg: Message, now: float) -> Action | Drop | None:
        """The peer sent ``msg``; returns what to answer, if anything.

        Raises :class:`RemoteProtocolError` for a message a client may not send to a
        server (the connection is then closed). Messages that were still queued when the
        connection closed are ignored. Returns :class:`Drop` when the message overdrew the
        peer's budget of messages that change nothing.
        """
        if self.state is State.CLOSED:
            return None
        if self.state is State.HANDSHAKE:
            raise LocalProtocolError("a message was fed before the handshake was done")
        if self.budget.exhausted:  # overdrawn by requests for chunks we lack
            return self._flooded()
        self._last_message = now
        action: Action | None = None
        useful = False
        match msg:
            case Request(content_id=cid, index=index):
                if self.inflight >= self.limits.max_inflight_requests:
                    action = Reply(Reject(cid, index, RejectReason.TOO_MANY_IN_FLIGHT))
                else:
                    self._queue.append((cid, index))
                    self._queued[cid, index] += 1
                    self._live += 1
                    useful = True
            case Cancel(content_id=cid, index=index):
                if self._queued[cid, index] > 0:
                    self._queued[cid, index] -= 1
                    self._cancelled[cid, index] += 1
                    self._live -= 1
                    useful = True
                    if len(self._queue) > 2 * self.limits.max_inflight_requests:
                        self._compact()  # cancel-and-ask-again must not grow the queue
                # else: being sent, already sent, or never asked: nothing to undo
            case GetManifest(content_id=cid):
                action = SendManifest(cid)
                useful = self._first_ask(2, cid)
            case GetBitfield(content_id=cid):
                action = SendBitfield(cid)
                useful = self._first_ask(4, cid)
            case Ping(nonce=nonce):
                action = Reply(Pong(nonce))
            case HolePunchConnect() | HolePunchSync():
                action = PunchSignal(msg)
            case Data():
                self.state = State.CLOSED
                raise RemoteProtocolError("unsolicited Data")
            case _:
                pass  # Pong, Have, Bitfield, Manifest, Reject: nothing for a server to do
        if useful:
            self._last_active = now
        elif not self.budget.spend(now):
            return self._flooded()
        return action

    def _compact(self) -> None:
        """Drop the cancelled entries from the queue (amortised O(1) per Cancel)."""
        skip = self._cancelled
        kept: collections.deque[tuple[bytes, int]] = collections.deque()
        for key in self._queue:
            if skip[key] > 0:
                skip[key] -= 1
            else:
                kept.append(key)
        self._queue = kept
        self._cancelled = collections.Counter()

    def _first_ask(self, kind: int, content_id: bytes) -> bool:
        key = (kind, content_id)
        if key in self._asked or len(self._asked) >= 2 * self.limits.max_interested:
            return False
        self._asked.add(key)
        return True

    def _flooded(self) -> Drop:
        self.state = State.CLOSED
        return Drop(self.budget.reason(), goodbye=False, flooded=True)

    def bitfield_sent(self, content_id: bytes, held: bool) -> None:
        """We answered the peer's GetBitfield; if we hold the content, it gets our Haves for
        it from now on (up to ``max_interested`` content ids)."""
        if held and len(self._interested) < self.limits.max_interested:
            self._interested.add(content_id)

    def next_request(self) -> Request | None:
        """The oldest queued request, now being served; None if there is none (or closed).

        It counts as in flight until :meth:`request_done`.
        """
        if self.state is not State.OPEN:
            return None
        while self._queue:
            key = self._queue.popleft()
            if self._cancelled[key] > 0:  # cancelled while queued: skipped, not answered
                self._cancelled[key] -= 1
                if not self._cancelled[key]:
                    del self._cancelled[key]
                continue
            self._queued[key] -= 1
            if not self._queued[key]:
                del self._queued[key]
            self._live -= 1
            self._serving += 1
            return Request(*key)
        return None

    def unavailable(self, request: Request, chunk_count: int | None) -> Reject:
        """The Reject for a request whose chunk the source could not give us.

        ``chunk_count`` is how many chunks the content has, if we know the content at
        all (None otherwise). An index at or past it is ``BAD_INDEX``; anything else we
        do not hold is ``NOT_HELD`` (docs/PROTOCOL.md, Reject reasons).
        """
        cid, index = request.content_id, request.index
        # Charged like a message that changed nothing; an overdrawn budget shows at the
        # peer's next message (:meth:`receive` answers Drop).
        self.budget.spend(self._last_message)
        if chunk_count is not None and index >= chunk_count:
            return Reject(cid, index, RejectReason.BAD_INDEX)
        return Reject(cid, index, RejectReason.NOT_HELD)

    def request_done(self, now: float | None = None) -> None:
        """The answer (Data or Reject) to the request from :meth:`next_request` was sent
        (at ``now``, if given: the peer counts as idle only from then)."""
        if self._serving <= 0:
            raise LocalProtocolError("request_done() without a request being served")
        self._serving -= 1
        if now is not None:
            self._last_active = max(self._last_active, now)

    def write_paused(self, now: float) -> None:
        """The write buffer went above its high-water mark: the stalled-reader clock starts."""
        if self._paused_since is None:
            self._paused_since = now

    def write_resumed(self, now: float) -> None:
        """The write buffer drained below its low-water mark: the peer is reading."""
        self._paused_since = None

    def close(self) -> None:
        """The connection ended (or is ending) for any other reason: nothing more is due."""
        self.state = State.CLOSED

    # -- time --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called; None once closed."""
        if self.state is State.CLOSED:
            return None
        if self.state is State.HANDSHAKE:
            deadline = self._handshake_deadline
        else:
            deadline = self._last_message + self.limits.idle_timeout
        if self._paused_since is not None:
            deadline = min(deadline, self._paused_since + self.limits.send_timeout)
        return deadline

    def handle_timer(self, now: float) -> Drop | None:
        """Apply what is due at ``now``; returns the :class:`Drop` if the peer must go.

        Calling it early (or again) is harmless: nothing happens before a deadline.
        """
        if self.state is State.CLOSED:
            return None
        drop: Drop | None = None
        if (self._paused_since is not None
                and now >= self._paused_since + self.limits.send_timeout):
            drop = Drop(STOPPED_READING, goodbye=False)
        elif self.state is State.HANDSHAKE:
            if now >= self._handshake_deadline:
                drop = Drop(TIMED_OUT, goodbye=False)
        elif now >= self._last_message + self.limits.idle_timeout:
            drop = Drop(TIMED_OUT, goodbye=True)
        if drop is not None:
            self.state = State.CLOSED
        return drop

    # -- views -------------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Requests queued or being sent (what ``max_inflight_requests`` caps)."""
        return self._live + self._serving

    @property
    def queued(self) -> int:
        """Requests waiting for :meth:`next_request` (cancelled ones not counted)."""
        return self._live

    def idle_since(self) -> float | None:
        """Since when an open session has had no request in flight and none queued (its
        last message or its last answer sent, whichever was later); None while it is
        handshaking, busy or closed."""
        if self.state is not State.OPEN or self.inflight:
            return None
        return self._last_active

    def is_interested(self, content_id: bytes) -> bool:
        """Whether the peer gets our Have messages for ``content_id``."""
        return self.state is State.OPEN and content_id in self._interested


# -- admission -------------------------------------------------------------------------------

K = TypeVar("K")


@functools.lru_cache(maxsize=4096)
def address_prefix(host: str) -> str:
    """The network ``host`` is counted in for ``max_connections_per_prefix``: its /24 for
    IPv4, its /48 for IPv6. ``host`` is normalised already (:func:`p2p.address.from_sockaddr`
    makes an IPv4-mapped address IPv4); a scoped address is counted without its scope, and
    anything that is not an IP is its own prefix."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


class Admission:
    """How many connections the server holds in total, per IP and per prefix; which a
    newcomer would exceed. Pure: the shell calls :meth:`add` and :meth:`remove`."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.total = 0
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._per_prefix: collections.Counter[str] = collections.Counter()
        self._penalised: dict[str, float] = {}
        """IP -> until when it is refused (it flooded), oldest first."""

    def refusal(self, ip: str, now: float) -> str | None:
        """Why a newcomer from ``ip`` is refused whatever is evicted (it flooded us lately,
        or its IP or its prefix holds its share already), or None. The total is not
        checked here: a full server may evict instead (:func:`choose_eviction`)."""
        until = self._penalised.get(ip)
        if until is not None:
            if now < until:
                return "refused: flooded lately"
            del self._penalised[ip]
        if self._per_ip[ip] >= self.limits.max_connections_per_ip:
            return "connection limit reached"
        if self._per_prefix[address_prefix(ip)] >= self.limits.max_connections_per_prefix:
            return "connection limit reached"
        return None

    @property
    def full(self) -> bool:
        """Every slot is taken: a newcomer needs an eviction."""
        return self.total >= self.limits.max_connections

    def add(self, ip: str) -> None:
        self.total += 1
        self._per_ip[ip] += 1
        self._per_prefix[address_prefix(ip)] += 1

    def remove(self, ip: str) -> None:
        self.total -= 1
        for counter, key in ((self._per_ip, ip), (self._per_prefix, address_prefix(ip))):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def penalise(self, ip: str, now: float) -> None:
        """``ip``'s connection was dropped for flooding: refuse it for ``flood_penalty``, so
        a fresh key buys a flooder one more budget per penalty, not one per handshake.
        At most ``max_penalised`` IPs are remembered (the oldest go first)."""
        self._penalised.pop(ip, None)
        self._penalised[ip] = now + self.limits.flood_penalty
        while len(self._penalised) > self.limits.max_penalised:
            del self._penalised[next(iter(self._penalised))]

    def could_evict_for(self, newcomer: str) -> bool:
        """Whether any connection at all :meth:`may_evict` for ``newcomer`` (O(networks)):
        the common refusal, a crowd knocking again, costs no walk over the connections."""
        light = self._per_prefix[address_prefix(newcomer)]
        return max(self._per_prefix.values(), default=0) >= light + 2

    def may_evict(self, newcomer: str, victim: str) -> bool:
        """Whether a full server may drop a connection from ``victim`` to admit one from
        ``newcomer``: only when the victim's prefix holds at least two more connections
        than the newcomer's, so every eviction leaves the slots more evenly spread. A
        newcomer from a network that holds its share already is refused instead of
        evicting: a crowd re-opening what it lost churns nobody's slots but would
        otherwise take every connection the moment it passes ``eviction_grace``, and an
        honest newcomer from a light network would never find one to replace."""
        light = self._per_prefix[address_prefix(newcomer)]
        return self._per_prefix[address_prefix(victim)] >= light + 2

    def over_share(self, ip: str, newcomer: str) -> bool:
        """Whether ``ip``'s prefix holds more than an even split of ``max_connections``
        among the prefixes present and ``newcomer``'s: such a network's handshakes may be
        evicted for a lighter newcomer even inside ``eviction_grace``, so a crowd that just
        opened every slot cannot keep an honest newcomer out until its connections age."""
        networks = len(self._per_prefix) + (address_prefix(newcomer) not in self._per_prefix)
        return self._per_prefix[address_prefix(ip)] * networks > self.limits.max_connections

    def count(self, ip: str) -> tuple[int, int]:
        """(connections from ``ip``, connections from its prefix)."""
        return self._per_ip[ip], self._per_prefix[address_prefix(ip)]


def choose_eviction(peers: Iterable[tuple[K, ServedPeer]], now: float,
                    grace: float) -> K | None:
    """Whom a full server drops to admit a newcomer, or None if no one may go.

    First the connection longest in its handshake (unauthenticated: it has shown
    nothing), then the open session idle the longest (no request in flight or queued).
    A connection younger than ``grace``, or active within it, is kept; so is one that
    is busy. Ties go to the first in ``peers`` order (the shell's: oldest first).
    """
    oldest: tuple[float, K] | None = None
    idlest: tuple[float, K] | None = None
    for key, peer in peers:
        if peer.state is State.HANDSHAKE:
            if now - peer.accepted_at >= grace and (oldest is None or peer.accepted_at < oldest[0]):
                oldest = (peer.accepted_at, key)
            continue
        since = peer.idle_since()
        if since is not None and now - since >= grace and (idlest is None or since < idlest[0]):
            idlest = (since, key)
    if oldest is not None:
        return oldest[1]
    return idlest[1] if idlest is not None else None
