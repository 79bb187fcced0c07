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
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from ..encoding import expect_bytes, expect_int, expect_list, pack, unpack
from ..errors import DecodeError, IntegrityError, NetworkError, RemoteProtocolError
from ..identity import NODE_ID_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, Identity, node_id_for
from .config import DHTConfig
from .errors import IdentityMismatch, InvalidContact, Overloaded, RPCTimeout
from .records import KINDS, MAX_RECORD_SIZE, VerifyCache, check_address, decode_record
from .routing import ExactRoutingTable, parse_contact
from .store import PutStatus, RecordStore

log = logging.getLogger(__name__)

REQUEST = 0x10
"""Type byte of a request. The library uses 0x00/0x01: stock nodes and ours ignore each other."""
RESPONSE = 0x11
"""Type byte of a response."""
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
"""Provider records in one ``get`` reply: 16 x 384 B + 32 contacts x 70 B < MAX_DATAGRAM."""
MAX_OBSERVED = 16

# name -> number of arguments including the sender's node id. Nothing else is callable.
RPC_ARITY: dict[str, int] = {"ping": 1, "identify": 2, "find_node": 2, "put": 3, "get": 3}


class RateLimiter:
    """Per-IP token buckets for inbound datagrams (bounded number of tracked IPs)."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_sources
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def allow(self, ip: str, now: float) -> bool:
        """Take one token from ``ip``'s bucket; False when it is empty."""
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
    """What the protocol counts, for ``DHT.stats()``."""

    def __init__(self) -> None:
        self.received: collections.Counter[str] = collections.Counter()
        self.sent: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()


class P2PProtocol(KademliaProtocol):  # type: ignore[misc]
    """One node's UDP endpoint: answers our five RPCs and sends requests for the lookups."""

    def __init__(self, source_node: Any, storage: Any, ksize: int, *, identity: Identity,
                 config: DHTConfig, records: RecordStore, verify_cache: VerifyCache,
                 clock: Callable[[], float]) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = config.rpc_timeout
        self.router = ExactRoutingTable(self, ksize, source_node, config.max_contacts_per_ip)
        self.identity = identity
        self.config = config
        self.records = records
        self.verify_cache = verify_cache
        self.clock = clock
        self.counters = Counters()
        self.limiter = (RateLimiter(config.rate_limit_per_ip, config.rate_limit_burst)
                        if config.rate_limit_per_ip is not None else None)
        self.failures: dict[bytes, int] = {}
        self.observed: dict[tuple[str, int], set[bytes]] = {}
        self.closed = asyncio.Event()
        self._ipv6 = ":" in config.host
        self._verifying: set[bytes] = set()
        self._head_checks: set[bytes] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shut = False

    # -- the library's stub magic is off ---------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # rpcudp turns any missing attribute into a remote call; a typo would become a timeout.
        raise AttributeError(name)

    # -- lifecycle -----------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed (by ``aclose``)."""
        if exc is not None:
            log.warning("DHT socket lost: %s", exc)
        self.closed.set()

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (port unreachable...) for an earlier send; the timeout handles it."""
        self.counters.events["icmp_error"] += 1

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task this protocol owns (cancelled by :meth:`shutdown`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        """Cancel every task and pending request; the transport is closed by the server."""
        self._shut = True
        for _msg_id, (future, timer, _addr) in list(self._outstanding.items()):
            timer.cancel()
            if not future.done():
                future.cancel()
        self._outstanding.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- inbound ---------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Entry point for every datagram. The per-datagram edge: nothing escapes to the loop."""
        try:
            self._dispatch(data, addr)
        except Exception:
            # A bug of ours, not the peer's fault: count it and keep serving.
            self.counters.rejected["internal_error"] += 1
            log.exception("DHT: error while handling a datagram from %s", addr)

    async def _solve_datagram(self, datagram: bytes, address: Any) -> None:
        # Kept for the library's callers; datagrams are handled inline.
        self.datagram_received(datagram, address)

    def _reject(self, reason: str) -> None:
        self.counters.rejected[reason] += 1

    def _dispatch(self, data: bytes, addr: Any) -> None:
        if len(data) < HEADER_LEN + 1:
            return self._reject("too_small")
        if len(data) > MAX_DATAGRAM:
            return self._reject("too_large")
        if self.limiter is not None and not self.limiter.allow(addr[0], self.clock()):
            return self._reject("rate_limited")
        kind = data[0]
        msg_id = bytes(data[1:HEADER_LEN])
        payload = data[HEADER_LEN:]
        if kind == REQUEST:
            self._accept_request(msg_id, payload, (addr[0], addr[1]))
        elif kind == RESPONSE:
            self._accept_response(msg_id, payload, (addr[0], addr[1]))
        else:
            self._reject("unknown_type")

    def _accept_request(self, msg_id: bytes, payload: bytes, addr: tuple[str, int]) -> None:
        try:
            name, args = expect_list(
                unpack(payload, max_bin=MAX_RECORD_SIZE, max_str=64, max_array=8), 2, "request"
            )
        except DecodeError:
            return self._reject("bad_encoding")
        arity = RPC_ARITY.get(name) if isinstance(name, str) else None
        if arity is None:
            return self._reject("unknown_rpc")
        if not isinstance(args, list) or len(args) != arity:
            return self._reject("bad_arity")
        try:
            sender_id = expect_bytes(args[0], NODE_ID_LEN, "sender id")
            match name:
                case "ping":
                    result: Any = self.source_node.id
                case "identify":
                    result = self.rpc_identify(addr, sender_id, *args[1:])
                case "find_node":
                    result = self.rpc_find_node(addr, sender_id, *args[1:])
                case "put":
                    result = self.rpc_put(addr, sender_id, *args[1:])
                case "get":
                    result = self.rpc_get(addr, sender_id, *args[1:])
                case _:  # pragma: no cover - RPC_ARITY and this match list the same names
                    return self._reject("unknown_rpc")
        except RemoteProtocolError:
            return self._reject("bad_arguments")
        self.counters.received[name] += 1
        self._send(bytes([RESPONSE]) + msg_id + pack(result), addr)
        if sender_id != self.source_node.id:
            self.welcome_if_new(Node(sender_id, addr[0], addr[1]))

    def _accept_response(self, msg_id: bytes, payload: bytes, addr: tuple[str, int]) -> None:
        entry = self._outstanding.get(msg_id)
        if entry is None:
            return self._reject("unexpected_reply")
        future, timer, expected = entry
        if addr != expected:
            # Matching on msg_id alone would let anyone who guesses it answer for a peer.
            return self._reject("reply_wrong_source")
        del self._outstanding[msg_id]
        timer.cancel()
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
        future, _timer, addr = entry
        if not future.done():
            future.set_exception(RPCTimeout(f"no answer from {addr[0]}:{addr[1]}"))

    def _send(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if len(datagram) > MAX_DATAGRAM:
            self.counters.events["reply_too_large"] += 1
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(datagram, addr)

    # -- handlers (inline, synchronous; they raise RemoteProtocolError on bad arguments) -------------

    def rpc_identify(self, sender: tuple[str, int], nodeid: bytes, nonce: Any) -> list[Any]:
        """Prove our key: sign the caller's nonce, our id, the caller's id and its observed address."""
        nonce = expect_bytes(nonce, NONCE_LEN, "nonce")
        observed = [sender[0], sender[1]]
        message = IDENTIFY_TAG + nonce + self.source_node.id + nodeid + pack(observed)
        return [self.identity.public_key, self.identity.sign(message), *observed]

    def _neighbours(self, key: bytes, sender: tuple[str, int]) -> list[list[Any]]:
        exclude = Node(b"\0" * NODE_ID_LEN, sender[0], sender[1])
        found = self.router.find_neighbors(Node(key), exclude=exclude)
        return [[n.id, n.ip, n.port] for n in found]

    def rpc_find_node(self, sender: tuple[str, int], nodeid: bytes, target: Any) -> list[Any]:
        """The k contacts closest to ``target``."""
        target = expect_bytes(target, NODE_ID_LEN, "target")
        return self._neighbours(target, sender)

    def rpc_put(self, sender: tuple[str, int], nodeid: bytes, key: Any, raw: Any) -> int:
        """Verify a signed record and hold it; returns a :class:`PutStatus`."""
        key = expect_bytes(key, NODE_ID_LEN, "key")
        now = self.clock()
        try:
            signed = decode_record(raw, key, now, self.verify_cache)
        except (RemoteProtocolError, IntegrityError):
            self.counters.rejected["invalid_record"] += 1
            return int(PutStatus.INVALID)
        status = self.records.put(signed, now)
        if status != PutStatus.OK:
            self.counters.rejected[f"record_{status.name.lower()}"] += 1
        return int(status)

    def rpc_get(self, sender: tuple[str, int], nodeid: bytes, kind: Any, key: Any) -> list[Any]:
        """Records of ``kind`` under ``key`` (verified when stored) and the closest contacts."""
        kind = expect_int(kind, 1, 255, "kind")
        key = expect_bytes(key, NODE_ID_LEN, "key")
        if kind not in KINDS:
            raise DecodeError("get: unknown record kind")
        now = self.clock()
        if kind == 1:
            held = self.records.providers(key, now, MAX_RECORDS_PER_REPLY)
        else:
            one = self.records.get(kind, key, now)
            held = [one] if one is not None else []
        return [[r.raw for r in held], self._neighbours(key, sender)]

    # the library's own RPCs are not dispatched; these make them inert should anything call them
    def rpc_store(self, *args: Any) -> bool:
        """Disabled: the library's unauthenticated store."""
        return False

    def rpc_find_value(self, *args: Any) -> None:
        """Disabled: the library's value lookup."""
        return None

    # -- outbound ------------------------------------------------------------------------------------

    async def _request(self, addr: tuple[str, int], name: str, *args: Any) -> Any:
        """Send request ``name`` to ``addr`` and return the decoded reply.

        Raises :class:`InvalidContact` for an address we must not send to,
        :class:`Overloaded` when too many requests wait, :class:`RPCTimeout`,
        :class:`DecodeError` for a malformed reply and :class:`NetworkError` once closed.
        """
        try:
            addr = check_address(addr[0], addr[1], "request address")
        except DecodeError as exc:
            raise InvalidContact(str(exc)) from None
        if self._shut or self.transport is None or self.transport.is_closing():
            raise NetworkError("the DHT is closed")
        if len(self._outstanding) >= self.config.max_outstanding:
            self.counters.events["overloaded"] += 1
            raise Overloaded("too many DHT requests in flight")
        msg_id = os.urandom(MSG_ID_LEN)
        datagram = bytes([REQUEST]) + msg_id + pack([name, [self.source_node.id, *args]])
        if len(datagram) > MAX_DATAGRAM:
            raise ValueError(f"request {name} is larger than {MAX_DATAGRAM} bytes")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(self._wait_timeout, self._timeout, msg_id)
        self._outstanding[msg_id] = (future, timer, addr)
        self.counters.sent[name] += 1
        self.transport.sendto(datagram, addr)
        try:
            return await future
        finally:
            # Whether answered, timed out or cancelled by the caller: nothing stays behind.
            entry = self._outstanding.pop(msg_id, None)
            if entry is not None:
                entry[1].cancel()

    async def _call_node(self, node: Any, name: str, *args: Any) -> Any:
        try:
            result = await self._request((node.ip, node.port), name, *args)
        except RPCTimeout:
            self._note_failure(node)
            raise
        self._note_success(node)
        return result

    def _contacts(self, value: Any, node: Any) -> list[Any]:
        """Validated contacts from a reply of ``node``; invalid ones are dropped and counted."""
        items = expect_list(value, what="contacts")
        from_loopback = ipaddress.ip_address(node.ip).is_loopback
        out = []
        for item in items[:32]:
            try:
                contact = parse_contact(item, self._ipv6)
            except DecodeError:
                self.counters.rejected["invalid_contact"] += 1
                continue
            if contact.id == self.source_node.id:
                continue
            if not from_loopback and ipaddress.ip_address(contact.ip).is_loopback:
                # A remote peer has no business pointing us at our own host.
                self.counters.rejected["invalid_contact"] += 1
                continue
            out.append(contact)
        return out

    async def call_ping(self, node: Any) -> None:
        """Ping ``node``; raises :class:`RPCTimeout` (and counts a failure against it)."""
        reply = await self._call_node(node, "ping")
        if reply != node.id:
            raise IdentityMismatch("ping answered with another node id")

    async def call_find_node(self, node: Any, target: Any) -> list[Any]:
        """Ask ``node`` for the contacts closest to ``target``; returns validated contacts."""
        reply = await self._call_node(node, "find_node", target.id)
        return self._contacts(reply, node)

    async def call_get(self, node: Any, kind: int, key: bytes) -> tuple[list[Any], list[Any]]:
        """Ask ``node`` for records of ``kind`` under ``key``: (raw records, closer contacts)."""
        reply = await self._call_node(node, "get", kind, key)
        raws, contacts = expect_list(reply, 2, "get reply")
        raws = expect_list(raws, what="records")[:MAX_RECORDS_PER_REPLY]
        return raws, self._contacts(contacts, node)

    async def call_put(self, node: Any, key: bytes, raw: bytes) -> PutStatus:
        """Ask ``node`` to hold a record; returns its answer."""
        reply = await self._call_node(node, "put", key, raw)
        return PutStatus(expect_int(reply, 0, 3, "put reply"))

    async def call_identify(self, addr: tuple[str, int], expected_id: bytes | None) -> Any:
        """Make the node at ``addr`` prove its key. Returns its verified ``Node``.

        Raises :class:`IdentityMismatch`, :class:`BadSignature`, :class:`DecodeError`,
        :class:`RPCTimeout`.
        """
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
        if not self._plausible_observation(observed):
            # The answer was signed for someone at another IP: a relayed handshake.
            raise IdentityMismatch("identify answer was made for another address")
        self._note_observed(observed, node_id)
        return Node(node_id, addr[0], addr[1])

    # -- observed addresses ---------------------------------------------------------------

    def _plausible_observation(self, observed: tuple[str, int]) -> bool:
        known = {h for h, _ in self.observed} | {h for h, _ in self.config.announce_addrs}
        return not known or observed[0] in known

    def _note_observed(self, observed: tuple[str, int], reporter: bytes) -> None:
        reporters = self.observed.get(observed)
        if reporters is None:
            if len(self.observed) >= MAX_OBSERVED:
                return
            reporters = self.observed[observed] = set()
        if len(reporters) < 64:
            reporters.add(reporter)

    # -- routing table admission --------------------------------------------------------------

    def welcome_if_new(self, node: Any) -> None:
        """Refresh a known contact, or verify an unknown one before it may enter the table."""
        if node.id == self.source_node.id or self._shut:
            return
        known = self.router.get(node.id)
        if known is not None and known.ip == node.ip and known.port == node.port:
            self.router.add_contact(known)  # moves it to most-recently-seen
            return
        if node.id in self._verifying:
            return
        if len(self._verifying) >= self.config.max_pending_verifications:
            self.counters.events["verification_skipped"] += 1
            return
        self._verifying.add(node.id)
        self.spawn(self._verify_and_add(node))

    async def _verify_and_add(self, node: Any) -> None:
        try:
            verified = await self.call_identify((node.ip, node.port), node.id)
        except (NetworkError, RemoteProtocolError, IntegrityError):
            self.counters.events["verification_failed"] += 1
            return
        finally:
            self._verifying.discard(node.id)
        self.admit(verified)

    def admit(self, node: Any) -> None:
        """Put a node whose key was just verified into the table (replacing a stale address)."""
        old = self.router.get(node.id)
        if old is not None and (old.ip, old.port) != (node.ip, node.port):
            self.router.remove_contact(old)
        self.failures.pop(node.id, None)
        self.counters.events["contacts_verified"] += 1
        self.router.add_contact(node)

    def _note_success(self, node: Any) -> None:
        self.failures.pop(node.id, None)
        self.welcome_if_new(node)

    def _note_failure(self, node: Any) -> None:
        known = self.router.get(node.id)
        if known is None or (known.ip, known.port) != (node.ip, node.port):
            return
        count = self.failures.get(node.id, 0) + 1
        if count >= MAX_FAILURES:
            self.failures.pop(node.id, None)
            self.router.remove_contact(known)
            self.counters.events["contacts_evicted"] += 1
        else:
            self.failures[node.id] = count

    def check_head(self, node: Any) -> None:
        """A full bucket met a newcomer: ping its least-recently-seen contact (owned task)."""
        if node.id in self._head_checks or self._shut:
            return
        self._head_checks.add(node.id)
        self.spawn(self._check_head(node))

    async def _check_head(self, node: Any) -> None:
        try:
            await self.call_ping(node)
        except (NetworkError, RemoteProtocolError):
            pass
        finally:
            self._head_checks.discard(node.id)
