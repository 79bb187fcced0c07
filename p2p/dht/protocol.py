"""The hardened datagram layer: our RPCs on top of the library's ``KademliaProtocol``.

Wire framing (see ``docs/PROTOCOL.md`` (DHT section)): one datagram is ``type (1 byte) + msg_id (20 bytes) +
canonical msgpack``. A request's payload is ``[name, [sender_node_id, *args]]`` and a
response's payload is the handler's result.

What this class replaces in the library, and why (rows of the research table):

* ``datagram_received``/``_solve_datagram``: size gate, per-IP token bucket, guarded
  decoding, a whitelist of RPCs with exact arities, handlers run inline (no task per
  datagram), no exception reaches the event loop (rows 1, 11, 12).
* ``_accept_response``/``_timeout``: replies must come from the address asked, a
  cancelled caller leaks nothing, a late timer never hits a finished future (row 13).
* ``__getattr__``: the remote-stub magic is switched off; every request goes
  through :meth:`P2PProtocol._request`, which validates the address and caps the
  requests in flight (rows 1, 12).
* ``welcome_if_new``: a contact enters the table only after proving its key by a
  signed nonce round trip; a known contact that answers moves to most-recently-seen;
  nothing is handed to newcomers (rows 5, 7, 8, 16).
* eviction after :data:`MAX_FAILURES` consecutive failures, not one (row 10).
* anti-amplification (issue 12, item 8): an address that has not proven it receives our
  datagrams (it is no verified contact there and echoes no valid address token, see
  :class:`AddressTokens`) is sent at most :data:`AMPLIFICATION_FACTOR` times the bytes of its
  request, the ``identify`` challenge included; ``get``/``find_node`` replies are shaped to
  fit and hand out a token, which our requests echo (:class:`TokenCache`) to get the full
  answer.
* the library's single socket: one UDP socket per address family, all on one port
  (:class:`_Socket` hands each one's datagrams here); every source address passes
  through :func:`p2p.address.from_sockaddr` before the rate limit, the caps or the
  table see it, and a node met over IPv4 and IPv6 is one :class:`Contact` (row 19).

Time is a parameter: ``monotonic`` (seconds) dates requests, rate limits and
observations. Request timeouts are one armed timer for the oldest deadline; the
timer calls :meth:`P2PProtocol.handle_timer`, which tests call with a fake clock.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import logging
import math
import os
from collections.abc import Callable, Coroutine
from typing import Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from ..address import Address, from_sockaddr
from ..encoding import expect_bytes, expect_int, expect_list, pack, unpack
from ..errors import DecodeError, IntegrityError, NetworkError, RemoteProtocolError
from ..identity import NODE_ID_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, Identity, node_id_for
from ..tasks import TaskOwner
from .config import DHTConfig
from .errors import IdentityMismatch, InvalidContact, Overloaded, RPCTimeout
from .observed import AddressVote
from .records import KINDS, MAX_RECORD_SIZE, VerifyCache, check_address, decode_record
from .routing import (
    Contact,
    ExactRoutingTable,
    addresses_of,
    ip_group,
    ip_version,
    parse_contact,
)
from .store import PutStatus, RecordStore

log = logging.getLogger(__name__)

REQUEST = 0x10
"""Type byte of a request. The library uses 0x00/0x01: stock nodes and ours ignore each other."""
RESPONSE = 0x11
"""Type byte of a response."""
REQUEST_CLIENT = 0x12
"""Type byte of a request from a node in client mode (not known to be reachable, BEP 43's
read-only flag, libp2p's client mode): it is answered, but its sender never enters the
routing table."""
RESPONSE_CLIENT = 0x13
"""Type byte of a response from a node in client mode: used, but its sender never enters
the routing table (and leaves it, if it was there)."""
MAX_CLIENTS = 4096
"""Addresses remembered as client-mode senders (LRU): a datagram marked client from an
address keeps its node out of the table even when a later reply of it is unmarked."""
MSG_ID_LEN = 20
HEADER_LEN = 1 + MSG_ID_LEN
MAX_DATAGRAM = 8192
"""Largest datagram sent or accepted: the library's 8 KiB, below the 64 KiB UDP limit and small
enough that one reply of k contacts and 16 records always fits."""
MAX_FAILURES = 3
"""Consecutive unanswered requests before a contact is evicted (one lost datagram is not death)."""
NONCE_LEN = 32
IDENTIFY_TAG = b"p2p-dht-identify-v1\x00"
MAX_RECORDS_PER_REPLY = 16
"""Provider records in one ``get`` reply. With k = 20 dual-stack contacts (40 entries of at most
66 B) and 16 records of the largest valid size (330 B) a reply is under 8 KiB; a reply that
would still be larger (a larger k) sheds its farthest contact entries until it fits."""
MAX_CONTACT_ENTRIES = 64
"""Contact entries read from one reply: k <= 32 contacts, each with up to one address per family."""
CONTACT_ENTRY_SIZE = 66
"""Largest encoded contact entry: [bin20, 39-character IPv6 text, uint16]."""
MAX_REMEMBERED_HOSTS = 4096
"""Source hosts whose normalised form is remembered (the memo is emptied when full)."""

# name -> number of arguments including the sender's node id. Nothing else is callable.
RPC_ARITY: dict[str, int] = {"ping": 1, "identify": 2, "find_node": 2, "put": 3, "get": 3,
                             "dialback": 4}
TOKEN_RPCS = frozenset({"find_node", "get"})
"""RPCs that take one more, trailing argument, an address token, and whose reply to that shape
is ``[reply, token, complete]``: the two whose answer can exceed the amplification budget."""

AMPLIFICATION_FACTOR = 3
"""Most bytes sent to an unproven address per byte it sent us (QUIC's anti-amplification rule,
RFC 9000 section 8): a forged source address makes us send its victim at most three times
what the forger spent, so the DHT is no better than sending directly."""
TOKEN_SIZE = 8
"""Bytes of an address token we issue: a forger who cannot read our replies must guess 64 bits,
at a rate-limited request per guess, within one rotation."""
MAX_TOKEN_SIZE = 32
"""Longest token argument accepted (and token read from a reply): other nodes may choose longer
tokens than ours; longer is a bad argument."""
TOKEN_ROTATION = 300.0
"""Seconds between rotations of the token secret; tokens of the current and the previous secret
are accepted, so a token lives 5 to 10 minutes (BEP 5's tokens). A proof of address goes
stale with the address's owner (NAT mappings last minutes), and no state per source is kept."""
TOKEN_PERSON = b"p2p dht token v1"
"""BLAKE2b personalisation of address tokens (16 bytes): they are never confused with any other
keyed hash."""
TOKEN_CACHE_SIZE = 4096
"""Tokens held for other nodes' addresses (LRU): a few lookups' worth of nodes, about 1 MB."""
DIALBACK_ACCEPTED = 0
DIALBACK_REFUSED_ADDRESS = 1
"""The address to dial is not the requester's own source IP: a node dials back only the IP a
request came from, so nobody can aim our connections at a third party."""
DIALBACK_BUSY = 2
"""The per-IP or global dial-back budget is spent; ask again later."""
DIALBACK_UNAVAILABLE = 3
"""This node does not dial back (a DHT without a TCP dialer, in tests or tools)."""
DIALBACK_INTERVAL = 10.0
"""Seconds per dial-back one IP (an IPv4 address or IPv6 /64) earns: a check needs one per
server, a re-check every few minutes is plenty; a flood of requests gets BUSY."""
DIALBACK_BURST = 3.0
"""Dial-backs one IP may ask for at once (a netcheck right after the node's own start-up
check, with one retry)."""
DIALBACK_GLOBAL_RATE = 5.0
"""Dial-back requests per second accepted from everyone together: each one costs a TCP
handshake or two, which must stay a small share of a node's work."""
DIALBACK_MAX_RUNNING = 16
"""Dial-backs in progress at once (each bounded by its dialer's timeout)."""
MAX_OBSERVERS = 2
"""Extra observer endpoints a ``dialback`` reply names (see ``DHTConfig.observer``)."""

IDENTIFY_REQUEST_SIZE = HEADER_LEN + len(pack(["identify", [bytes(NODE_ID_LEN), bytes(NONCE_LEN)]]))
"""Bytes of our ``identify`` challenge (88): counted against the budget of the request that
made a sender a candidate contact."""


class AddressTokens:
    """Stateless proofs that an address receives our datagrams (BEP 5's ``get_peers`` tokens).

    A token is ``BLAKE2b(key=secret, person=TOKEN_PERSON, digest_size=TOKEN_SIZE)`` over the
    address (``ip`` as UTF-8 text, then ``port`` as two big-endian bytes). The secret is
    random and changes every ``rotation`` seconds of ``now`` (monotonic); a token made with the
    current or the previous secret is valid. Only the address's owner (or someone on its
    path) sees the token we send it, so echoing it proves the address; nothing is kept per
    address, so forged sources cannot grow our memory. Pure: time is a parameter.
    """

    def __init__(self, rotation: float = TOKEN_ROTATION,
                 entropy: Callable[[int], bytes] = os.urandom) -> None:
        self._rotation = rotation
        self._entropy = entropy
        self._epoch: int | None = None
        self._current = b""
        self._previous: bytes | None = None

    def _secrets(self, now: float) -> tuple[bytes, bytes | None]:
        epoch = math.floor(now / self._rotation)
        if self._epoch is None or epoch > self._epoch + 1:
            self._current, self._previous = self._entropy(32), None
            self._epoch = epoch
        elif epoch == self._epoch + 1:
            self._current, self._previous = self._entropy(32), self._current
            self._epoch = epoch
        return self._current, self._previous

    @staticmethod
    def _mac(secret: bytes, addr: Address) -> bytes:
        data = addr[0].encode("utf-8", "surrogatepass") + addr[1].to_bytes(2, "big")
        return hashlib.blake2b(data, digest_size=TOKEN_SIZE, key=secret,
                               person=TOKEN_PERSON).digest()

    def issue(self, addr: Address, now: float) -> bytes:
        """The token for ``addr`` (normalised ``(host, port)``) at ``now``."""
        return self._mac(self._secrets(now)[0], addr)

    def check(self, addr: Address, token: bytes, now: float) -> bool:
        """Whether ``token`` is one we issued to ``addr`` at most two rotations before ``now``."""
        if len(token) != TOKEN_SIZE:
            return False
        current, previous = self._secrets(now)
        if hmac.compare_digest(token, self._mac(current, addr)):
            return True
        return previous is not None and hmac.compare_digest(token, self._mac(previous, addr))


class TokenCache:
    """The address tokens other nodes gave us, by their address: bounded, least recently used
    out first. Our ``get``/``find_node`` requests echo them to get full answers."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self._size = size
        self._tokens: collections.OrderedDict[Address, bytes] = collections.OrderedDict()

    def get(self, addr: Address) -> bytes:
        """The token held for ``addr``, or ``b""`` (none: the request asks for one)."""
        token = self._tokens.get(addr)
        if token is None:
            return b""
        self._tokens.move_to_end(addr)
        return token

    def put(self, addr: Address, token: bytes) -> None:
        """Hold ``token`` for ``addr`` (the latest replaces)."""
        self._tokens[addr] = token
        self._tokens.move_to_end(addr)
        if len(self._tokens) > self._size:
            self._tokens.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tokens)


def _array_growth(length: int) -> int:
    """Bytes a msgpack array's header grows by when its ``length``-th item becomes one more."""
    return 2 if length == 15 else 0  # fixarray (1 byte) holds 15; array 16 takes 3 bytes


def fit(lists: list[list[Any]], budget: int) -> tuple[list[list[Any]], bool]:
    """The longest prefix of each of ``lists`` (in order, the first served first) such that
    the lists, encoded as msgpack arrays, take at most ``budget`` bytes in all; and whether
    nothing was left out. Pure: it only measures encodings."""
    kept_lists: list[list[Any]] = []
    used = len(lists)  # each empty array's one-byte header
    complete = True
    for items in lists:
        kept: list[Any] = []
        for item in items:
            size = len(pack(item)) + _array_growth(len(kept))
            if used + size > budget:
                complete = False
                break
            kept.append(item)
            used += size
        kept_lists.append(kept)
    return kept_lists, complete


class RateLimiter:
    """Per-IP token buckets for inbound datagrams (bounded number of tracked IPs)."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_sources
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def allow(self, ip: str, now: float) -> bool:
        """Take one token from ``ip``'s bucket at ``now`` (monotonic seconds); False when empty.

        ``ip`` is the source's group (:func:`p2p.dht.routing.ip_group`): an IPv4 address or an
        IPv6 /64.
        """
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[ip] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True


class Counters:
    """What the protocol counts, for ``DHT.summary()``."""

    def __init__(self) -> None:
        self.received: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()


class _Socket(asyncio.DatagramProtocol):
    """One bound UDP socket of the DHT (one per address family), feeding one :class:`P2PProtocol`."""

    def __init__(self, protocol: P2PProtocol, version: int) -> None:
        self._protocol = protocol
        self._version = version

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._protocol.socket_opened(self._version, transport)  # type: ignore[arg-type]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._protocol.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._protocol.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.socket_lost(self._version, exc)


class ObserverSocket(asyncio.DatagramProtocol):
    """A second UDP endpoint of a node (another address or port) that answers ``identify``
    only, from itself: a node that asked our main socket and this one learns whether its NAT
    maps one socket to one external port for every destination (endpoint-independent
    mapping) or not. Everything else sent here is dropped. Same size gate and rate limit as
    the main socket; the answer (about 150 bytes to an 88-byte request) stays within the
    anti-amplification factor."""

    def __init__(self, protocol: P2PProtocol) -> None:
        self._protocol = protocol
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def datagram_received(self, data: bytes, sockaddr: Any) -> None:
        proto = self._protocol
        try:
            addr = proto._source(sockaddr)
            reply = proto.observe_request(data, addr)
        except Exception:  # the per-datagram edge, as on the main socket
            proto.counters.rejected["internal_error"] += 1
            log.exception("DHT observer: error while handling a datagram from %s", sockaddr)
            return
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class P2PProtocol(KademliaProtocol):  # type: ignore[misc]
    """One node's UDP endpoint: answers our five RPCs and sends requests for the lookups.

    It serves every socket of the node (:meth:`socket_factory`), one per address family.
    """

    transport: asyncio.DatagramTransport | None
    """The first socket opened (the library's name; :attr:`transports` holds them all)."""

    def __init__(self, source_node: Any, storage: Any, ksize: int, *, identity: Identity,
                 config: DHTConfig, records: RecordStore, verify_cache: VerifyCache) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = config.rpc_timeout
        self.monotonic = config.monotonic_clock
        self.wall_clock = config.wall_clock
        self.router = ExactRoutingTable(self, ksize, source_node, config.max_contacts_per_ip,
                                        self.monotonic)
        self.identity = identity
        self.config = config
        self.records = records
        self.verify_cache = verify_cache
        self.counters = Counters()
        self.limiter = (RateLimiter(config.rate_limit_per_ip, config.rate_limit_burst)
                        if config.rate_limit_per_ip is not None else None)
        self.failures: dict[tuple[bytes, Address], int] = {}
        """Consecutive unanswered requests per (contact id, address)."""
        self.tokens = AddressTokens()
        """Issues and checks the address tokens we hand out (no state per source)."""
        self.held_tokens = TokenCache()
        """Tokens other nodes gave us, echoed in our ``get``/``find_node`` requests."""
        self.observed = AddressVote()
        """Where the nodes we verified saw us: a vote by observer network (see
        :mod:`p2p.dht.observed`); no single answer decides it."""
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        """The open sockets by IP version (4, 6)."""
        self.bound: dict[int, Address] = {}
        """The bound (host, port) of each socket by IP version."""
        self.closed = asyncio.Event()
        """Set once every socket is closed."""
        self._sockets = 0
        self._opened = 0
        self._hosts: dict[str, str] = {}
        self._verifying: set[tuple[bytes, Address]] = set()
        self._head_checks: set[bytes] = set()
        self._tasks = TaskOwner("DHT protocol", log)
        self.client_mode = config.client_mode
        """Mark our requests and replies as a client's (see :data:`REQUEST_CLIENT`)."""
        self.clients: collections.OrderedDict[Address, None] = collections.OrderedDict()
        """Addresses whose latest datagram was marked client: never admitted to the table."""
        self.dialer: Callable[[Address, bytes], Coroutine[Any, Any, None]] | None = None
        """Dials ``(ip, port)`` over TCP expecting the peer with that public key, from a
        source other than our DHT address (set by the node; None: we do not dial back)."""
        self.dial_attempts = 1
        """Distinct sources ``dialer`` dials from (told to the requester)."""
        self.observer_addresses: tuple[Address, ...] = ()
        """Our extra UDP endpoints that answer ``identify`` (named in ``dialback`` replies)."""
        self._dialback_ip = RateLimiter(1.0 / DIALBACK_INTERVAL, DIALBACK_BURST)
        self._dialback_all = RateLimiter(DIALBACK_GLOBAL_RATE, DIALBACK_GLOBAL_RATE)
        self._dialbacks = 0
        self._deadlines: collections.deque[tuple[float, bytes]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._shut = False

    # -- the library's stub magic is off ---------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # rpcudp turns any missing attribute into a remote call; a typo would become a timeout.
        raise AttributeError(name)

    # -- lifecycle -----------------------------------------------------------------------------

    def socket_factory(self, version: int) -> Callable[[], asyncio.DatagramProtocol]:
        """The protocol factory for ``create_datagram_endpoint`` of the IPv``version`` socket."""
        return lambda: _Socket(self, version)

    def socket_opened(self, version: int, transport: asyncio.DatagramTransport) -> None:
        """A socket is bound: requests to that family go out through it."""
        self.transports[version] = transport
        host, port = from_sockaddr(transport.get_extra_info("sockname"))
        self.bound[version] = (host, port)
        self._sockets += 1
        self._opened += 1
        if self.transport is None:
            self.transport = transport  # the library's name: the first socket

    def socket_lost(self, version: int, exc: Exception | None) -> None:
        """A socket is closed (by ``aclose``, or by the system)."""
        if exc is not None:
            log.warning("DHT socket (IPv%d) lost: %s", version, exc)
        self.transports.pop(version, None)
        self._sockets -= 1
        if self._sockets <= 0:
            self.closed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        """Unused: each socket reports through :meth:`socket_lost`."""

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (port unreachable...) for an earlier send; the timeout handles it."""
        self.counters.events["icmp_error"] += 1

    @property
    def listening(self) -> bool:
        """Whether every socket that was opened is still open."""
        return (bool(self.transports) and len(self.transports) == self._opened
                and not any(t.is_closing() for t in self.transports.values()))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in a task this protocol owns (cancelled by :meth:`shutdown`); a failure
        nobody expected is logged."""
        return self._tasks.spawn(coro, name)

    async def shutdown(self) -> None:
        """Cancel every task and pending request; the sockets are closed by the server.
        Idempotent."""
        self._shut = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for future, _deadline, _addr in list(self._outstanding.values()):
            if not future.done():
                future.cancel()
        self._outstanding.clear()
        self._deadlines.clear()
        await self._tasks.aclose()

    def close_sockets(self) -> None:
        """Close every socket (``closed`` is set once they are gone)."""
        for transport in list(self.transports.values()):
            transport.close()

    # -- inbound ---------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Entry point for every datagram. The per-datagram edge: nothing escapes to the loop."""
        try:
            self._dispatch(data, self._source(addr))
        except Exception:
            # A bug of ours, not the peer's fault: count it and keep serving.
            self.counters.rejected["internal_error"] += 1
            log.exception("DHT: error while handling a datagram from %s", addr)

    def _source(self, sockaddr: Any) -> Address:
        """``from_sockaddr(sockaddr)``, remembered per host text: it runs for every datagram."""
        host = self._hosts.get(sockaddr[0])
        if host is None:
            host = from_sockaddr(sockaddr)[0]
            if len(self._hosts) >= MAX_REMEMBERED_HOSTS:
                self._hosts.clear()
            self._hosts[sockaddr[0]] = host
        return host, int(sockaddr[1])

    async def _solve_datagram(self, datagram: bytes, address: Any) -> None:
        # Kept for the library's callers; datagrams are handled inline.
        self.datagram_received(datagram, address)

    def _reject(self, reason: str) -> None:
        self.counters.rejected[reason] += 1

    def _dispatch(self, data: bytes, addr: Address) -> None:
        if len(data) < HEADER_LEN + 1:
            return self._reject("too_small")
        if len(data) > MAX_DATAGRAM:
            return self._reject("too_large")
        if self.limiter is not None and not self.limiter.allow(ip_group(addr[0]),
                                                               self.monotonic()):
            return self._reject("rate_limited")
        kind = data[0]
        msg_id = bytes(data[1:HEADER_LEN])
        payload = data[HEADER_LEN:]
        if kind in (REQUEST, RESPONSE):
            if self.clients:
                self.clients.pop(addr, None)
        elif kind in (REQUEST_CLIENT, RESPONSE_CLIENT):
            self._note_client(addr)
        else:
            return self._reject("unknown_type")
        if kind in (REQUEST, REQUEST_CLIENT):
            self._accept_request(msg_id, payload, addr)
        else:
            self._accept_response(msg_id, payload, addr)

    def observe_request(self, data: bytes, addr: Address) -> bytes | None:
        """The answer of an :class:`ObserverSocket` to ``data`` from ``addr``: the signed
        ``identify`` reply for an ``identify`` request, else None (dropped)."""
        if not HEADER_LEN < len(data) <= MAX_DATAGRAM or data[0] not in (REQUEST, REQUEST_CLIENT):
            self._reject("observer_dropped")
            return None
        if self.limiter is not None and not self.limiter.allow(ip_group(addr[0]), self.monotonic()):
            self._reject("rate_limited")
            return None
        try:
            name, args = expect_list(unpack(data[HEADER_LEN:], max_bin=64, max_str=64,
                                            max_array=4), 2, "request")
            if name != "identify":
                raise DecodeError("observer: identify only")
            sender_id, nonce = expect_list(args, 2, "identify arguments")
            result = self.rpc_identify(addr, expect_bytes(sender_id, NODE_ID_LEN, "sender id"),
                                       nonce)
        except RemoteProtocolError:
            self._reject("observer_dropped")
            return None
        self.counters.received["observe"] += 1
        kind = RESPONSE_CLIENT if self.client_mode else RESPONSE
        return bytes([kind]) + data[1:HEADER_LEN] + pack(result)

    def _note_client(self, addr: Address) -> None:
        """``addr`` speaks as a client: remember it, and take it out of the table."""
        if addr in self.clients:
            self.clients.move_to_end(addr)
            return
        self.clients[addr] = None
        self.clients.move_to_end(addr)
        if len(self.clients) > MAX_CLIENTS:
            self.clients.popitem(last=False)
        for contact in self.router.contacts():
            if contact.knows(addr):
                if not contact.forget(addr):
                    self.router.remove_contact(contact)
                self.counters.events["clients_removed"] += 1
                break

    def _accept_request(self, msg_id: bytes, payload: bytes, addr: Address) -> None:
        try:
            name, args = expect_list(
                unpack(payload, max_bin=MAX_RECORD_SIZE, max_str=64, max_array=8), 2, "request"
            )
        except DecodeError:
            return self._reject("bad_encoding")
        arity = RPC_ARITY.get(name) if isinstance(name, str) else None
        if arity is None:
            return self._reject("unknown_rpc")
        if not isinstance(args, list):
            return self._reject("bad_arity")
        tokened = name in TOKEN_RPCS and len(args) == arity + 1
        if len(args) != arity and not tokened:
            return self._reject("bad_arity")
        # The budget of an unproven source: AMPLIFICATION_FACTOR x the datagram it sent.
        budget = AMPLIFICATION_FACTOR * (HEADER_LEN + len(payload))
        try:
            sender_id = expect_bytes(args[0], NODE_ID_LEN, "sender id")
            token = (expect_bytes(args[arity], what="token", max_len=MAX_TOKEN_SIZE)
                     if tokened else None)
            proven = self._proven(sender_id, addr, token)
            room = None if proven else budget - HEADER_LEN
            match name:
                case "ping":
                    result: Any = self.source_node.id
                case "identify":
                    result = self.rpc_identify(addr, sender_id, *args[1:])
                case "find_node":
                    [contacts], complete = self._shape(
                        [self.rpc_find_node(addr, sender_id, args[1])], room, tokened, 0)
                    result = self._tokened(contacts, addr, tokened, complete)
                case "put":
                    result = self.rpc_put(addr, sender_id, *args[1:])
                case "get":
                    lists, complete = self._shape(
                        self.rpc_get(addr, sender_id, args[1], args[2]), room, tokened, 1)
                    result = self._tokened(lists, addr, tokened, complete)
                case "dialback":
                    result = self.rpc_dialback(addr, sender_id, *args[1:])
                case _:  # pragma: no cover - RPC_ARITY and this match list the same names
                    return self._reject("unknown_rpc")
        except RemoteProtocolError:
            return self._reject("bad_arguments")
        reply = bytes([RESPONSE_CLIENT if self.client_mode else RESPONSE]) + msg_id + pack(result)
        if not proven and len(reply) > budget:
            # Never for our RPCs (their replies are shaped or small); a guard for new ones.
            return self._reject("amplification")
        self.counters.received[name] += 1
        self._send(reply, addr)
        if sender_id == self.source_node.id or addr in self.clients:
            return
        if proven or len(reply) + IDENTIFY_REQUEST_SIZE <= budget:
            self.welcome_if_new(Node(sender_id, addr[0], addr[1]))
        else:
            # The challenge would push the bytes sent to an unproven address past its budget;
            # a sender that echoes its token next time is challenged then.
            self.counters.events["identify_deferred"] += 1

    def _proven(self, sender_id: bytes, addr: Address, token: bytes | None) -> bool:
        """Whether ``addr`` has shown it receives our datagrams: a contact verified at that
        address (it signed our nonce there), or it echoed a valid address token."""
        known = self.router.get(sender_id)
        if known is not None and known.knows(addr):
            return True
        if token and self.tokens.check(addr, token, self.monotonic()):
            return True
        self.counters.events["unproven_requests"] += 1
        return False

    @staticmethod
    def _shape(lists: list[list[Any]], room: int | None, tokened: bool,
               outer: int) -> tuple[list[list[Any]], bool]:
        """``lists`` (the reply's arrays, first served first) cut to fit ``room`` payload
        bytes (None: no limit), leaving room for ``outer`` more bytes of the reply's own
        shape and, for a ``tokened`` request, the ``[reply, token, complete]`` wrapper."""
        if room is None:
            return lists, True
        if tokened:
            outer += 1 + len(pack(bytes(TOKEN_SIZE))) + 1
        return fit(lists, room - outer)

    def _tokened(self, reply: Any, addr: Address, tokened: bool, complete: bool) -> Any:
        """``reply`` as answered to a request of the old shape, or ``[reply, token, complete]``
        with the current token of ``addr`` for one that carried a token argument."""
        if not tokened:
            return reply
        return [reply, self.tokens.issue(addr, self.monotonic()), complete]

    def _accept_response(self, msg_id: bytes, payload: bytes, addr: Address) -> None:
        entry = self._outstanding.get(msg_id)
        if entry is None:
            return self._reject("unexpected_reply")
        future, _deadline, expected = entry
        if addr != expected:
            # Matching on msg_id alone would let anyone who guesses it answer for a peer.
            return self._reject("reply_wrong_source")
        del self._outstanding[msg_id]
        try:
            data = unpack(payload, max_bin=MAX_RECORD_SIZE, max_str=64, max_array=64)
        except DecodeError as exc:
            self._reject("bad_encoding")
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(data)

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:
            return
        future, _deadline, addr = entry
        self.counters.events["rpc_timeout"] += 1
        if not future.done():
            future.set_exception(RPCTimeout(f"no answer from {addr[0]}:{addr[1]}"))

    def handle_timer(self, now: float) -> None:
        """Fail every request still unanswered at its deadline, as of ``now`` (monotonic
        seconds), and arm the timer for the next deadline.

        The armed timer calls this with the configured clock; a test with a fake clock
        advances it and calls this itself.
        """
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self._outstanding):
            self._timeout(deadlines.popleft()[1])
        if deadlines and self._timer is None and not self._shut:
            self._arm(deadlines[0][0])

    def _arm(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, deadline - self.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.handle_timer(self.monotonic())

    def _transport_for(self, host: str) -> asyncio.DatagramTransport | None:
        transport = self.transports.get(ip_version(host))
        return None if transport is None or transport.is_closing() else transport

    def _send(self, datagram: bytes, addr: Address) -> None:
        if len(datagram) > MAX_DATAGRAM:
            self.counters.events["reply_too_large"] += 1
            return
        transport = self._transport_for(addr[0])
        if transport is not None:
            transport.sendto(datagram, addr)

    # -- handlers (inline, synchronous; they raise RemoteProtocolError on bad arguments) -------------

    def rpc_identify(self, sender: Address, nodeid: bytes, nonce: Any) -> list[Any]:
        """Prove our key: sign the caller's nonce, our id, the caller's id and its observed address."""
        nonce = expect_bytes(nonce, NONCE_LEN, "nonce")
        observed = [sender[0], sender[1]]
        message = IDENTIFY_TAG + nonce + self.source_node.id + nodeid + pack(observed)
        return [self.identity.public_key, self.identity.sign(message), *observed]

    def _neighbours(self, key: bytes, sender: Address) -> list[list[Any]]:
        """The k contacts closest to ``key``, one entry per address, the sender's family first."""
        exclude = Node(b"\0" * NODE_ID_LEN, sender[0], sender[1])
        found = self.router.find_neighbors(Node(key), exclude=exclude)
        family = ip_version(sender[0])
        entries = []
        for node in found:
            addresses = addresses_of(node)
            first = addresses.get(family)
            if first is not None:
                entries.append([node.id, first[0], first[1]])
            entries += [[node.id, a[0], a[1]] for v, a in addresses.items() if v != family]
        return entries

    def rpc_find_node(self, sender: Address, nodeid: bytes, target: Any) -> list[Any]:
        """The k contacts closest to ``target``."""
        target = expect_bytes(target, NODE_ID_LEN, "target")
        return self._neighbours(target, sender)

    def rpc_put(self, sender: Address, nodeid: bytes, key: Any, raw: Any) -> int:
        """Verify a signed record and hold it; returns a :class:`PutStatus`.

        A ``raw`` that is not a bin (at most MAX_RECORD_SIZE, as the datagram decoder
        enforces) is a bad argument: no reply. A bin that is not a valid record is
        answered INVALID and not stored (docs/PROTOCOL.md, DHT RPCs).
        """
        key = expect_bytes(key, NODE_ID_LEN, "key")
        raw = expect_bytes(raw, what="record", max_len=MAX_RECORD_SIZE)
        now = self.wall_clock()
        try:
            signed = decode_record(raw, key, now, self.verify_cache)
        except (RemoteProtocolError, IntegrityError):
            self.counters.rejected["invalid_record"] += 1
            return int(PutStatus.INVALID)
        # Counted under the sender's network when the record names another host: a
        # record's addresses are its author's claim, the source address is ours to see.
        status = self.records.put(signed, now, source=sender)
        if status != PutStatus.OK:
            self.counters.rejected[f"record_{status.name.lower()}"] += 1
        return int(status)

    def rpc_get(self, sender: Address, nodeid: bytes, kind: Any, key: Any) -> list[Any]:
        """Records of ``kind`` under ``key`` (verified when stored) and the closest contacts."""
        kind = expect_int(kind, 1, 255, "kind")
        key = expect_bytes(key, NODE_ID_LEN, "key")
        if kind not in KINDS:
            raise DecodeError("get: unknown record kind")
        now = self.wall_clock()
        if kind == 1:
            held = self.records.providers(key, now, MAX_RECORDS_PER_REPLY)
        else:
            one = self.records.get(kind, key, now)
            held = [one] if one is not None else []
        raws = [r.raw for r in held]
        contacts = self._neighbours(key, sender)
        budget = MAX_DATAGRAM - HEADER_LEN - 16
        if sum(map(len, raws)) + 3 * len(raws) + CONTACT_ENTRY_SIZE * len(contacts) > budget:
            # Only a large k with many dual-stack contacts gets here: shed the farthest entries.
            while contacts and len(pack([raws, contacts])) > budget:
                contacts.pop()
        return [raws, contacts]

    def rpc_dialback(self, sender: Address, nodeid: bytes, pubkey: Any, host: Any,
                     port: Any) -> list[Any]:
        """Open a TCP connection to ``host:port`` from another source, expecting the peer with
        key ``pubkey`` there: ``[status, attempts, [[host, port], ...] observer endpoints]``.

        ``host`` must be the IP the request came from (never a third party's) and
        ``pubkey`` must be the key of the sender's node id; the dial runs in a task of ours,
        after the answer, within the per-IP and global budgets (docs/PROTOCOL.md,
        Reachability).
        """
        pubkey = expect_bytes(pubkey, PUBLIC_KEY_LEN, "dialback key")
        if node_id_for(pubkey) != nodeid:
            raise DecodeError("dialback: the key is not the sender's")
        target = check_address(host, port, "dialback address")
        observers = [[h, p] for h, p in self.observer_addresses[:MAX_OBSERVERS]]
        if target[0] != sender[0]:
            self.counters.rejected["dialback_third_party"] += 1
            return [DIALBACK_REFUSED_ADDRESS, 0, observers]
        if self.dialer is None or self._shut:
            return [DIALBACK_UNAVAILABLE, 0, observers]
        now = self.monotonic()
        if (self._dialbacks >= DIALBACK_MAX_RUNNING
                or not self._dialback_ip.allow(ip_group(sender[0]), now)
                or not self._dialback_all.allow("*", now)):
            self.counters.rejected["dialback_busy"] += 1
            return [DIALBACK_BUSY, 0, observers]
        self._dialbacks += 1
        self.counters.events["dialbacks"] += 1
        self.spawn(self._dial_back(self.dialer, target, pubkey), "dial back")
        return [DIALBACK_ACCEPTED, self.dial_attempts, observers]

    async def _dial_back(self, dialer: Callable[[Address, bytes], Coroutine[Any, Any, None]],
                         target: Address, pubkey: bytes) -> None:
        try:
            await dialer(target, pubkey)
        finally:
            self._dialbacks -= 1

    # the library's own RPCs are not dispatched; these make them inert should anything call them
    def rpc_store(self, *args: Any) -> bool:
        """Disabled: the library's unauthenticated store."""
        return False

    def rpc_find_value(self, *args: Any) -> None:
        """Disabled: the library's value lookup."""
        return None

    # -- outbound ------------------------------------------------------------------------------------

    async def _request(self, addr: Address, name: str, *args: Any) -> Any:
        """Send request ``name`` to ``addr`` and return the decoded reply.

        Raises :class:`InvalidContact` for an address we must not send to,
        :class:`Overloaded` when too many requests wait, :class:`RPCTimeout`,
        :class:`DecodeError` for a malformed reply and :class:`NetworkError` once closed
        or for a family we have no socket for.
        """
        try:
            addr = check_address(addr[0], addr[1], "request address")
        except DecodeError as exc:
            raise InvalidContact(str(exc)) from None
        if self._shut:
            raise NetworkError("the DHT is closed")
        transport = self._transport_for(addr[0])
        if transport is None:
            if not self.transports:
                raise NetworkError("the DHT is closed")
            raise NetworkError(f"no IPv{ip_version(addr[0])} socket to reach {addr[0]}")
        if len(self._outstanding) >= self.config.max_outstanding:
            self.counters.events["overloaded"] += 1
            raise Overloaded("too many DHT requests in flight")
        msg_id = os.urandom(MSG_ID_LEN)
        kind = REQUEST_CLIENT if self.client_mode else REQUEST
        datagram = bytes([kind]) + msg_id + pack([name, [self.source_node.id, *args]])
        if len(datagram) > MAX_DATAGRAM:
            raise ValueError(f"request {name} is larger than {MAX_DATAGRAM} bytes")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Every request waits the same time, so deadlines arrive in order: a queue and one
        # timer for the oldest replace a timer per request.
        deadline = self.monotonic() + self._wait_timeout
        self._outstanding[msg_id] = (future, deadline, addr)
        self._deadlines.append((deadline, msg_id))
        if self._timer is None:
            self._arm(deadline)
        self.counters.sent[name] += 1
        transport.sendto(datagram, addr)
        try:
            return await future
        finally:
            # Whether answered, timed out or cancelled by the caller: nothing stays behind.
            self._outstanding.pop(msg_id, None)

    async def _call_node(self, node: Any, name: str, *args: Any) -> Any:
        try:
            result = await self._request((node.ip, node.port), name, *args)
        except RPCTimeout:
            self._note_failure(node)
            raise
        self._note_success(node)
        return result

    def _contacts(self, value: Any, node: Any) -> list[Any]:
        """Validated contacts from a reply of ``node``, one per node id, each at the first of
        its addresses in a family we have a socket for. Invalid entries are dropped and
        counted; entries of a family we do not speak are skipped."""
        items = expect_list(value, what="contacts")
        from_loopback = ipaddress.ip_address(node.ip).is_loopback
        out: dict[bytes, Any] = {}
        for item in items[:MAX_CONTACT_ENTRIES]:
            try:
                contact = parse_contact(item)
            except DecodeError:
                self.counters.rejected["invalid_contact"] += 1
                continue
            if contact.id == self.source_node.id:
                continue
            if not from_loopback and ipaddress.ip_address(contact.ip).is_loopback:
                # A remote peer has no business pointing us at our own host.
                self.counters.rejected["invalid_contact"] += 1
                continue
            if contact.id not in out and ip_version(contact.ip) in self.transports:
                out[contact.id] = contact
        return list(out.values())

    async def call_ping(self, node: Any) -> None:
        """Ping ``node``; raises :class:`RPCTimeout` (and counts a failure against it)."""
        reply = await self._call_node(node, "ping")
        if reply != node.id:
            raise IdentityMismatch("ping answered with another node id")

    async def _call_tokened(self, node: Any, name: str, *args: Any) -> Any:
        """Request ``name`` of ``node`` with the address token we hold for it (``b""``: none
        yet), keep the token it answers with, and return its reply (the old shape's value).

        A reply cut short because our address was unproven there (``complete`` false)
        brings a token: the request is sent once more with it, for the full answer.
        """
        addr = (node.ip, node.port)
        reply, token, complete = self._read_tokened(
            name, await self._call_node(node, name, *args, self.held_tokens.get(addr)), addr)
        if not complete and token:
            self.counters.events["token_retries"] += 1
            reply, _token, _complete = self._read_tokened(
                name, await self._call_node(node, name, *args, token), addr)
        return reply

    def _read_tokened(self, name: str, raw: Any, addr: Address) -> tuple[Any, bytes, bool]:
        """``[reply, token, complete]`` from ``addr``, checked; a token given is held."""
        reply, token, complete = expect_list(raw, 3, f"{name} reply")
        token = expect_bytes(token, what="token", max_len=MAX_TOKEN_SIZE)
        if not isinstance(complete, bool):
            raise DecodeError(f"{name} reply: complete must be true or false")
        if token:
            self.held_tokens.put(addr, token)
        return reply, token, complete

    async def call_find_node(self, node: Any, target: Any) -> list[Any]:
        """Ask ``node`` for the contacts closest to ``target``; returns validated contacts."""
        reply = await self._call_tokened(node, "find_node", target.id)
        return self._contacts(reply, node)

    async def call_get(self, node: Any, kind: int, key: bytes) -> tuple[list[Any], list[Any]]:
        """Ask ``node`` for records of ``kind`` under ``key``: (raw records, closer contacts)."""
        reply = await self._call_tokened(node, "get", kind, key)
        raws, contacts = expect_list(reply, 2, "get reply")
        raws = expect_list(raws, what="records")[:MAX_RECORDS_PER_REPLY]
        return raws, self._contacts(contacts, node)

    async def call_put(self, node: Any, key: bytes, raw: bytes) -> PutStatus:
        """Ask ``node`` to hold a record; returns its answer."""
        reply = await self._call_node(node, "put", key, raw)
        return PutStatus(expect_int(reply, 0, 3, "put reply"))

    async def call_identify(self, addr: Address, expected_id: bytes | None) -> Any:
        """Make the node at ``addr`` prove its key. Returns its verified ``Node``.

        Raises :class:`IdentityMismatch`, :class:`BadSignature`, :class:`DecodeError`,
        :class:`RPCTimeout`.
        """
        node, _pubkey, _observed = await self.identify(addr, expected_id)
        return node

    async def call_dialback(self, addr: Address, pubkey: bytes, target: Address
                            ) -> tuple[int, int, list[Address]]:
        """Ask the node at ``addr`` to dial us back at ``target`` over TCP:
        ``(status, attempts, observer endpoints)``. Raises like :meth:`_request`."""
        reply = await self._request(addr, "dialback", pubkey, target[0], target[1])
        status, attempts, observers = expect_list(reply, 3, "dialback reply")
        status = expect_int(status, 0, 255, "dialback status")
        attempts = expect_int(attempts, 0, 8, "dialback attempts")
        found = []
        for item in expect_list(observers, what="observers")[:MAX_OBSERVERS]:
            host, port = expect_list(item, 2, "observer")
            found.append(check_address(host, port, "observer"))
        return status, attempts, found

    async def identify(self, addr: Address, expected_id: bytes | None
                       ) -> tuple[Any, bytes, Address]:
        """:meth:`call_identify`, also returning the key and where ``addr`` saw us."""
        nonce = os.urandom(NONCE_LEN)
        reply = await self._request(addr, "identify", nonce)
        pubkey, sig, obs_host, obs_port = expect_list(reply, 4, "identify reply")
        pubkey = expect_bytes(pubkey, PUBLIC_KEY_LEN, "identify key")
        sig = expect_bytes(sig, SIGNATURE_LEN, "identify signature")
        observed = check_address(obs_host, obs_port, "observed address")
        node_id = node_id_for(pubkey)
        if expected_id is not None and node_id != expected_id:
            raise IdentityMismatch("the key at this address does not match the claimed node id")
        if node_id == self.source_node.id:
            raise IdentityMismatch("that address is this node")
        self.verify_cache.verify(
            pubkey, sig, IDENTIFY_TAG + nonce + node_id + self.source_node.id + pack(list(observed))
        )
        # The observed address is one vote about where we are, never a reason to refuse the
        # contact: one peer's word (true or not) must not lock out the honest ones.
        self.observed.observe(addr, observed, self.monotonic())
        return Node(node_id, addr[0], addr[1]), pubkey, observed

    # -- routing table admission --------------------------------------------------------------

    def welcome_if_new(self, node: Any) -> None:
        """Refresh a known contact, or verify an unknown one (or a known one at a new
        address) before it may enter the table or gain the address."""
        if node.id == self.source_node.id or self._shut or (node.ip, node.port) in self.clients:
            return
        known = self.router.get(node.id)
        if known is not None and known.knows((node.ip, node.port)):
            self.router.add_contact(known)  # moves it to most-recently-seen
            return
        claim = (node.id, (node.ip, node.port))
        if claim in self._verifying:
            return
        if len(self._verifying) >= self.config.max_pending_verifications:
            self.counters.events["verification_skipped"] += 1
            return
        self._verifying.add(claim)
        self.spawn(self._verify_and_add(node, claim), "verify a new contact")

    async def _verify_and_add(self, node: Any, claim: tuple[bytes, Address]) -> None:
        try:
            verified = await self.call_identify((node.ip, node.port), node.id)
        except (NetworkError, RemoteProtocolError, IntegrityError):
            self.counters.events["verification_failed"] += 1
            return
        finally:
            self._verifying.discard(claim)
        self.admit(verified)

    def admit(self, node: Any) -> None:
        """Put a node whose key was just verified at ``(node.ip, node.port)`` into the table,
        or give the contact with its id that address (replacing one of the same family)."""
        address = (node.ip, node.port)
        if address in self.clients:
            # It proved its key, but speaks as a client: not reachable, never a contact.
            self.counters.events["clients_not_admitted"] += 1
            return
        self.failures.pop((node.id, address), None)
        self.counters.events["contacts_verified"] += 1
        known = self.router.get(node.id)
        if known is None:
            self.router.add_contact(Contact(node.id, address))
            return
        old = known.addresses.get(ip_version(node.ip))
        if self.router.add_address(known, address) and old is not None and old != address:
            self.failures.pop((node.id, old), None)
        self.router.add_contact(known)  # most-recently-seen

    def _note_success(self, node: Any) -> None:
        self.failures.pop((node.id, (node.ip, node.port)), None)
        self.welcome_if_new(node)

    def _note_failure(self, node: Any) -> None:
        known = self.router.get(node.id)
        address = (node.ip, node.port)
        if known is None or not known.knows(address):
            return
        key = (node.id, address)
        count = self.failures.get(key, 0) + 1
        if count < MAX_FAILURES:
            self.failures[key] = count
            return
        self.failures.pop(key, None)
        if not known.forget(address):
            self.router.remove_contact(known)
            self.counters.events["contacts_evicted"] += 1
        else:
            self.counters.events["addresses_dropped"] += 1

    def check_head(self, node: Any) -> None:
        """A full bucket met a newcomer: ping its least-recently-seen contact (owned task)."""
        if node.id in self._head_checks or self._shut:
            return
        self._head_checks.add(node.id)
        self.spawn(self._check_head(node), "ping a full bucket's oldest contact")

    async def _check_head(self, node: Any) -> None:
        try:
            await self.call_ping(node)
        except (NetworkError, RemoteProtocolError):
            pass
        finally:
            self._head_checks.discard(node.id)
