"""The DHT as the rest of the code sees it: :class:`DHT`, a typed async API over our protocol.

:class:`P2PServer` is the library's ``Server`` with our protocol, an inert storage,
one UDP socket per address family and no self-rearming refresh timer; everything
periodic runs in one task the DHT owns, driven by a :class:`~p2p.dht.schedule.Schedule`.

Time is a parameter: the wall clock (``DHTConfig.wall_clock``) signs and checks record
expiry, the monotonic one (``DHTConfig.monotonic_clock``) times everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from ..address import Address, RelayHint, format_address, from_sockaddr, normalize_host, primary_ip
from ..errors import (
    BadInput,
    BootstrapUnreachable,
    IntegrityError,
    NetworkError,
    NotFound,
    PortInUse,
    RemoteProtocolError,
)
from ..identity import Identity, PeerId, node_id_for
from ..tasks import TaskOwner
from .config import DHTConfig
from .errors import NoContacts, RPCTimeout, StaleSequence, StateFileError
from .lookup import Lookup, ProviderMerge, RoundTrips, Unreachable
from .protocol import ObserverSocket, P2PProtocol
from .records import (
    KIND_CHANNEL,
    KIND_PEER,
    KIND_PROVIDER,
    MAX_ADDRESSES,
    MAX_RELAY_HINTS,
    ChannelRecord,
    PeerRecord,
    ProviderRecord,
    SignedRecord,
    VerifyCache,
    channel_key,
    decode_record,
    discovery_key,
    peer_key,
    sign_channel,
    sign_peer,
    sign_provider,
)
from .routing import NullStorage, addresses_of, ip_version
from .schedule import EXPIRE, REANNOUNCE, REFRESH, SAVE, Schedule
from .state import load_routing_table, save_routing_table
from .stats import ContactInfo, DHTStats
from .store import PutStatus, RecordStore

log = logging.getLogger(__name__)

ANNOUNCE_QUORUM = 5
"""Acknowledged stores after which ``announce`` returns (the rest finish in the background):
five of the k closest holding a record survive heavy churn, and waiting for all k would make
every announce as slow as the slowest of twenty nodes."""
MAX_PARALLEL_VERIFY = 32
"""Saved contacts re-verified at once on start."""
BIND_ATTEMPTS = 8
"""Ports tried when port 0 is asked for on two families: the port the system picks for the
first socket may be taken in the other family."""


def _bound_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``(host, port)``; an IPv6 one is IPv6-only, so the
    IPv4 socket can share its port (asyncio's TCP servers do the same)."""
    family = socket.AF_INET6 if ip_version(host) == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM,
                                     flags=socket.AI_NUMERICHOST)[0][4])
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class P2PServer(Server):  # type: ignore[misc]
    """The library's ``Server`` with :class:`P2PProtocol`, :class:`NullStorage` and one socket
    per address family."""

    protocol_class = P2PProtocol

    def __init__(self, identity: Identity, config: DHTConfig, records: RecordStore,
                 verify_cache: VerifyCache) -> None:
        super().__init__(ksize=config.ksize, alpha=config.alpha, node_id=identity.node_id,
                         storage=NullStorage())
        self._identity = identity
        self._config = config
        self._records = records
        self._verify_cache = verify_cache
        self.observer: asyncio.DatagramTransport | None = None
        """The socket of ``config.observer``, if any."""

    def _create_protocol(self) -> P2PProtocol:
        return P2PProtocol(self.node, self.storage, self.ksize, identity=self._identity,
                           config=self._config, records=self._records,
                           verify_cache=self._verify_cache)

    async def bind(self, hosts: Sequence[str], port: int) -> None:
        """Open one socket per host, all on ``port`` (0: the port the first one got).

        Raises ``OSError``; nothing stays open then.
        """
        loop = asyncio.get_running_loop()
        protocol = self.protocol = self._create_protocol()
        try:
            for host in hosts:
                sock = _bound_socket(host, port)
                port = sock.getsockname()[1]
                try:
                    await loop.create_datagram_endpoint(
                        protocol.socket_factory(ip_version(host)), sock=sock)
                except BaseException:
                    sock.close()
                    raise
        except BaseException:
            if protocol.transports:
                protocol.close_sockets()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await protocol.closed.wait()
            raise
        self.transport = protocol.transport
        observer = self._config.observer
        if observer is not None:
            try:
                sock = _bound_socket(observer[0], observer[1])
                self.observer, _ = await loop.create_datagram_endpoint(
                    lambda: ObserverSocket(protocol), sock=sock)
            except BaseException:
                self.stop()
                raise
            protocol.observer_addresses = (from_sockaddr(sock.getsockname()),)

    async def listen(self, port: int, interface: str = "0.0.0.0") -> None:
        """The library's entry point: one socket on ``interface``."""
        await self.bind((interface,), port)

    def stop(self) -> None:
        """Close every socket (the library closes only one)."""
        if self.protocol is not None:
            self.protocol.close_sockets()
        if self.observer is not None:
            self.observer.close()

    def refresh_table(self, interval: float = 0.0) -> None:
        """Disabled: the library re-arms an hourly ``call_later`` and a fire-and-forget task;
        the DHT's own maintenance task refreshes buckets."""


class DHT:
    """A Kademlia node on UDP: identity-bound ids, signed records, hardened against hostile input.

    Open with :meth:`open` (or ``async with DHT.open_ctx(...)``); close with :meth:`aclose`.
    It listens on one socket per address family in ``config.host``; a node met over
    IPv4 and IPv6 is one contact that knows both addresses.
    """

    def __init__(self, identity: Identity, config: DHTConfig, server: P2PServer,
                 protocol: P2PProtocol, records: RecordStore, verify_cache: VerifyCache) -> None:
        self._identity = identity
        self._config = config
        self._server = server
        self._protocol = protocol
        self._records = records
        self._verify_cache = verify_cache
        self._wall = config.wall_clock
        self._monotonic = config.monotonic_clock
        self._tasks = TaskOwner("DHT", log)
        self._provided: dict[bytes, tuple[Address, ...] | None] = {}
        self._relays: tuple[RelayHint, ...] = ()
        """Relay hints our records carry (:meth:`set_relays`)."""
        self._announce_direct = True
        """Whether our records carry direct addresses too."""
        self._announce_peer = False
        self._peer_addresses: tuple[Address, ...] | None = None
        self._channels: dict[bytes, int] = {}
        self._started = self._monotonic()
        periods = {EXPIRE: min(config.refresh_interval, config.reannounce_interval) / 2,
                   REFRESH: config.refresh_interval, REANNOUNCE: config.reannounce_interval}
        if config.state_path is not None:
            periods = {SAVE: config.save_interval, **periods}
        self._schedule = Schedule(self._started, periods)
        self._closed = False
        self._lookups = 0
        self._lookup_rpcs = 0
        self._lookup_rounds = 0
        self.state_load_error: str | None = None
        """Why the saved routing table was ignored at start, if it was."""
        self._unreachable = Unreachable()
        self._round_trips = RoundTrips()
        self.restored_contacts = 0
        """Contacts of the saved routing table that answered re-verification at start."""
        self._saved_unverified: list[tuple[bytes, str, int]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, identity: Identity, config: DHTConfig) -> DHT:
        """Bind, restore and re-verify the saved table, join ``config.bootstrap``; listening on return.

        Raises :class:`NetworkError` if a socket cannot be bound. A failed bootstrap is
        not fatal here (the first node of a network has nobody to join); call
        :meth:`bootstrap` to get the error.
        """
        hosts = config.hosts
        records = RecordStore()
        cache = VerifyCache()
        attempts = BIND_ATTEMPTS if config.port == 0 and len(hosts) > 1 else 1
        for attempt in range(attempts):
            server = P2PServer(identity, config, records, cache)
            try:
                await server.bind(hosts, config.port)
                break
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue
                where = ", ".join(format_address((h, config.port)) for h in hosts)
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"cannot bind DHT socket {where}: the UDP port is in use",
                                    config.port, "udp") from exc
                raise NetworkError(f"cannot bind DHT socket {where}: {exc}") from exc
        dht = cls(identity, config, server, server.protocol, records, cache)
        try:
            await dht._start()
        except BaseException:
            await dht.aclose()
            raise
        return dht

    @classmethod
    @contextlib.asynccontextmanager
    async def open_ctx(cls, identity: Identity, config: DHTConfig) -> AsyncIterator[DHT]:
        """``async with DHT.open_ctx(identity, config) as dht:`` -- closed on exit."""
        dht = await cls.open(identity, config)
        try:
            yield dht
        finally:
            await dht.aclose()

    async def __aenter__(self) -> DHT:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _start(self) -> None:
        path = self._config.state_path
        if path is not None:
            try:
                _node_id, contacts = load_routing_table(path)
            except FileNotFoundError:
                contacts = []
            except (StateFileError, OSError) as exc:
                log.warning("DHT: ignoring saved routing table: %s", exc)
                self.state_load_error = str(exc)
                contacts = []
            # Until they answer, contacts that fail re-verification stay in the saved file:
            # a restart during a network outage must not forget the whole table.
            self._saved_unverified = list(contacts)
            if contacts:
                self.restored_contacts = await self._reverify(contacts)
        if self._config.bootstrap:
            try:
                await self.bootstrap(self._config.bootstrap)
            except NetworkError as exc:
                log.warning("DHT: bootstrap failed: %s", exc)
        elif len(self._protocol.router):
            await self._join()
        self._spawn(self._maintain(), "periodic work")

    async def aclose(self) -> None:
        """Stop: cancel every task, save the table (if ``state_path``), close the sockets. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.aclose()
        if self._config.state_path is not None:
            try:
                self.save_state()
            except OSError as exc:
                log.warning("DHT: could not save routing table: %s", exc)
        await self._protocol.shutdown()
        self._server.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._protocol.closed.wait()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise NetworkError("the DHT is closed")
        return self._tasks.spawn(coro, name)

    # -- identity and addresses -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound UDP port, the same for every family (the node's TCP port too, by design)."""
        return next(iter(self._protocol.bound.values()))[1]

    @property
    def node_id(self) -> bytes:
        """This node's 20-byte DHT id, derived from its key."""
        return bytes(self._server.node.id)

    @property
    def protocol(self) -> P2PProtocol:
        """The datagram protocol (tests and diagnostics)."""
        return self._protocol

    @property
    def listening(self) -> bool:
        """Whether every socket is open (false once closed, or if the system closed one)."""
        return self._protocol.listening and not self._protocol.closed.is_set()

    def listen_addresses(self) -> tuple[Address, ...]:
        """The bound ``(host, port)`` of each socket, in the order of ``config.host``."""
        bound = self._protocol.bound
        return tuple(bound[v] for v in (ip_version(h) for h in self._config.hosts) if v in bound)

    def reachable_addresses(self) -> tuple[Address, ...]:
        """Where others can reach us, at most one address per family we listen on.

        ``announce_addrs`` if set (it overrides everything). Otherwise, per family: the address
        that peers from at least :data:`~p2p.dht.observed.OBSERVATION_QUORUM` distinct
        networks (IPv4 /24s, IPv6 /48s) saw us at within the last
        :data:`~p2p.dht.observed.OBSERVATION_TTL` seconds, else the bound address if it is not
        a wildcard: one peer's answer alone never moves it. Loopback addresses are left out
        once any other address is known.
        """
        if self._config.announce_addrs:
            return self._config.announce_addrs
        now = self._config.monotonic_clock()
        found: list[Address] = []
        for host, port in self.listen_addresses():
            agreed = self._protocol.observed.agreed(ip_version(host), now)
            if agreed is not None:
                found.append(agreed)
            elif not ipaddress.ip_address(host).is_unspecified:
                found.append((host, port))
            elif (local := self._local_address(ip_version(host))) is not None:
                # Bound to a wildcard and no quorum yet (one bootstrap, or every peer on one
                # LAN): the address this host's kernel uses toward the outside or toward our
                # contacts, which no peer can steer.
                found.append((local, port))
        if any(not _is_loopback(h) for h, _ in found):
            found = [a for a in found if not _is_loopback(a[0])]
        return tuple(found)

    def _local_address(self, version: int) -> str | None:
        """This host's address in ``version``: its default route's, else the one it reaches a
        routing-table contact of that family from (a LAN with no default route)."""
        local = primary_ip(version)
        if local is not None:
            return local
        for node in self._protocol.router.contacts():
            for host, _ in addresses_of(node).values():
                if ip_version(host) == version and not _is_loopback(host):
                    found = primary_ip(version, toward=host)
                    if found is not None:
                        return found
        return None

    # -- reachability (docs/PROTOCOL.md, Reachability) ------------------------------------------

    @property
    def client_mode(self) -> bool:
        """Whether we run as a DHT client (our datagrams keep us out of routing tables)."""
        return self._protocol.client_mode

    async def set_client_mode(self, client: bool) -> None:
        """Run as a client (``True``) or a server. Becoming a server looks up our own id
        once, so that the nodes on the way learn of us (they verify us and add us)."""
        was = self._protocol.client_mode
        self._protocol.client_mode = client
        if was and not client and not self._closed and len(self._protocol.router):
            await self._join()

    def set_dialer(self, dialer: Callable[[Address, bytes], Any], attempts: int) -> None:
        """Serve ``dialback`` requests with ``dialer(address, public_key)`` (a coroutine
        function that dials from ``attempts`` distinct sources, none of them our DHT address)."""
        self._protocol.dialer = dialer
        self._protocol.dial_attempts = attempts

    async def observe(self, addr: Address) -> tuple[bytes, Address, Address]:
        """Ask the node (or observer endpoint) at ``addr`` where it sees us: ``(its public
        key, our address as it saw it, our socket it saw)``. Raises :class:`NetworkError`
        (no answer), :class:`RemoteProtocolError` or :class:`IntegrityError` (a bad answer)."""
        _node, pubkey, observed = await self._protocol.identify(addr, None)
        local = self._protocol.bound.get(ip_version(addr[0]))
        if local is None:  # pragma: no cover - identify went out through that family's socket
            raise NetworkError(f"no IPv{ip_version(addr[0])} socket")
        return pubkey, observed, local

    async def request_dialback(self, addr: Address, target: Address
                               ) -> tuple[int, int, list[Address]]:
        """Ask the node at ``addr`` to dial our TCP port at ``target`` (our IP as it sees
        it): ``(status, attempts, its observer endpoints)``; see
        :meth:`P2PProtocol.rpc_dialback`."""
        return await self._protocol.call_dialback(addr, self._identity.public_key, target)

    def server_addresses(self, limit: int) -> list[Address]:
        """Up to ``limit`` routing-table contacts (at an address of each): nodes that may
        serve a dial-back."""
        out: list[Address] = []
        for node in self._protocol.router.contacts():
            for addr in addresses_of(node).values():
                out.append(addr)
                break
            if len(out) >= limit:
                break
        return out

    # -- joining ---------------------------------------------------------------------------------------

    async def bootstrap(self, addrs: Sequence[tuple[str, int]]) -> int:
        """Verify each address's node, then look up our own id. Returns contacts verified.

        Hostnames are resolved here (one address per family this node listens on);
        addresses of a family it does not listen on are skipped. A node given at an
        IPv4 and an IPv6 address becomes one contact with both. Raises
        :class:`~p2p.errors.BootstrapUnreachable`, naming each address and why it failed,
        if ``addrs`` is not empty and no node answered with a valid identity.
        """
        if not addrs:
            return 0
        resolved, failures = await self._resolve(addrs)
        results = await asyncio.gather(
            *(self._protocol.call_identify(a, None) for _, a in resolved), return_exceptions=True
        )
        verified = 0
        for (given, _), result in zip(resolved, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, NetworkError | RemoteProtocolError | IntegrityError):
                    raise result
                failures.append((given, self._why_unanswered(result)))
                continue
            self._protocol.admit(result)
            verified += 1
        if not verified:
            raise BootstrapUnreachable(_by_address(addrs, failures))
        await self._join()
        return verified

    def _why_unanswered(self, exc: BaseException) -> str:
        """Why a bootstrap node did not become a contact, in the words of the message."""
        if isinstance(exc, RPCTimeout):
            return f"no answer within {self._config.rpc_timeout:g} s"
        if isinstance(exc, RemoteProtocolError | IntegrityError):
            return f"it answered, but not as a DHT node that proves its key: {exc}"
        return str(exc)

    async def _resolve(self, addrs: Sequence[tuple[str, int]]
                       ) -> tuple[list[tuple[str, Address]], list[tuple[str, str]]]:
        """(the address as given, a literal address to ask) for each usable address, and
        (the address as given, why not) for each that gave none."""
        loop = asyncio.get_running_loop()
        families = set(self._protocol.transports)
        out: list[tuple[str, Address]] = []
        failures: list[tuple[str, str]] = []
        for host, port in addrs:
            given = format_address((host, port))
            try:
                literal = [(normalize_host(host), port)]
            except BadInput:
                try:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
                except OSError as exc:
                    log.warning("DHT: cannot resolve %s: %s", host, exc)
                    failures.append((given, f"cannot resolve {host}: {exc.strerror or exc}"))
                    continue
                literal = [from_sockaddr(info[4]) for info in infos]
            picked: set[int] = set()
            for addr in literal:
                version = ip_version(addr[0])
                if version in families and version not in picked:
                    picked.add(version)
                    out.append((given, addr))
            if not picked:
                log.warning("DHT: bootstrap %s has no address of a family this node listens on",
                            given)
                failures.append((given, "no address of a family this node listens on"))
        return out, failures

    async def add_contact(self, addrs: Sequence[Address], peer: PeerId) -> bool:
        """Verify the node of ``peer`` at one of ``addrs`` (it must sign an ``identify`` with
        that key) and admit it, as a contact learned from the network would be; when the
        routing table was empty, join through it (look up our own id) and re-announce, so a
        LAN peer found with no bootstrap configured is a bootstrap. Returns whether it
        became a contact (False: no answer, another key, or it runs as a DHT client)."""
        expected = node_id_for(peer.key)
        families = set(self._protocol.transports)
        was_empty = not len(self._protocol.router)
        for addr in addrs:
            if ip_version(addr[0]) not in families or self._closed:
                continue
            try:
                node = await self._protocol.call_identify(addr, expected)
            except (NetworkError, RemoteProtocolError, IntegrityError):
                continue
            self._protocol.admit(node)
            if self._protocol.router.get(expected) is None:
                return False  # it answered as a client: not a contact
            if was_empty:
                await self._join()
                if self._provided or self._announce_peer:
                    self._spawn(self._reannounce(), "announce through a new first contact")
            return True
        return False

    async def _join(self) -> None:
        with contextlib.suppress(NoContacts):
            await self._lookup_nodes(self.node_id)

    async def _reverify(self, contacts: list[tuple[bytes, str, int]]) -> int:
        sem = asyncio.Semaphore(MAX_PARALLEL_VERIFY)
        families = set(self._protocol.transports)

        async def one(cid: bytes, host: str, port: int) -> bool:
            if ip_version(host) not in families:
                return False
            async with sem:
                try:
                    node = await self._protocol.call_identify((host, port), cid)
                except (NetworkError, RemoteProtocolError, IntegrityError):
                    return False
            self._protocol.admit(node)
            return True

        results = await asyncio.gather(*(one(*c) for c in contacts))
        return len({c[0] for c, ok in zip(contacts, results, strict=True) if ok})

    # -- lookups ---------------------------------------------------------------------------------

    def _start_nodes(self, key: bytes) -> list[Any]:
        if self._closed:
            raise NetworkError("the DHT is closed")
        router = self._protocol.router
        nearest = router.find_neighbors(Node(key), self._config.ksize)
        if not nearest:
            raise NoContacts("the DHT routing table is empty; bootstrap first")
        router.touch(key)
        return list(nearest)

    async def _walk(self, key: bytes, query: Callable[[Any], Any],
                    done: Callable[[], bool] | None = None) -> Lookup:
        lookup = Lookup(self._protocol, Node(key), self._start_nodes(key), self._config.ksize,
                        self._config.alpha, query, done, self._config.lookup_stall,
                        self._unreachable, self._round_trips, self._monotonic)
        await lookup.find()
        self._lookups += 1
        self._lookup_rpcs += lookup.rpcs
        self._lookup_rounds += lookup.rounds
        return lookup

    async def _lookup_nodes(self, key: bytes) -> list[Any]:
        async def query(node: Any) -> list[Any]:
            return await self._protocol.call_find_node(node, Node(key))

        lookup = await self._walk(key, query)
        if not lookup.answered:
            raise NetworkError("no DHT node answered the lookup")
        return lookup.closest

    async def _records_walk(self, kind: int, key: bytes,
                            accept: Callable[[list[SignedRecord]], None],
                            done: Callable[[], bool] | None = None) -> Lookup:
        """Walk to the k closest nodes of ``key`` asking each for records of ``kind``;
        ``accept`` gets each answering node's valid records as one list (possibly empty)."""
        async def query(node: Any) -> list[Any]:
            raws, contacts = await self._protocol.call_get(node, kind, key)
            now = self._wall()
            valid = []
            for raw in raws:
                try:
                    valid.append(decode_record(raw, key, now, self._verify_cache, kind))
                except (RemoteProtocolError, IntegrityError):
                    self._protocol.counters.rejected["invalid_record_read"] += 1
            accept(valid)
            return contacts

        return await self._walk(key, query, done)

    # -- storing -------------------------------------------------------------------------------------

    async def _store(self, signed: SignedRecord, quorum: int | None) -> tuple[int, int]:
        """Store on the k closest; return (acks, stale) once ``quorum`` acked (None = all done)."""
        nodes = await self._lookup_nodes(signed.key)
        self._store_locally(signed, nodes)
        pending: set[asyncio.Task[PutStatus | None]] = {
            self._spawn(self._put(n, signed.key, signed.raw), "store a record") for n in nodes
        }
        acks = stale = 0
        try:
            while pending and (quorum is None or acks < min(quorum, len(nodes))):
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task.cancelled() or task.exception() is not None:
                        continue  # a bug: the task owner has logged it
                    status = task.result()
                    acks += status == PutStatus.OK
                    stale += status == PutStatus.STALE
        except BaseException:
            for task in pending:
                task.cancel()
            raise
        # Remaining stores keep running in tasks the DHT owns (cancelled by aclose).
        return acks, stale

    async def _put(self, node: Any, key: bytes, raw: bytes) -> PutStatus | None:
        """One store request; None if the node did not answer or answered nonsense (expected,
        so not an error for the task owner to log)."""
        try:
            return await self._protocol.call_put(node, key, raw)
        except (NetworkError, RemoteProtocolError):
            return None

    def _store_locally(self, signed: SignedRecord, nodes: list[Any]) -> None:
        """Hold the record ourselves too when we are among the k closest to its key."""
        target = Node(signed.key)
        mine = self._server.node.distance_to(target)
        if len(nodes) < self._config.ksize or any(mine < n.distance_to(target) for n in nodes):
            self._records.put(signed, self._wall())

    def _addresses(self, addresses: Sequence[tuple[str, int]] | None) -> tuple[Address, ...]:
        addrs = tuple(addresses) if addresses else self.reachable_addresses()
        if not addrs:
            raise NetworkError("no reachable address known yet; set announce_addrs")
        return addrs

    def _record_addresses(self, addresses: Sequence[tuple[str, int]] | None
                          ) -> tuple[tuple[Address, ...], tuple[RelayHint, ...]]:
        """What a provider or peer record carries: the direct addresses (none when we are
        not reachable and hold a relay reservation) and the relay hints (:meth:`set_relays`)."""
        relays = self._relays[:MAX_RELAY_HINTS]
        if relays and not self._announce_direct and not addresses:
            return (), relays
        addrs = self._addresses(addresses)
        return addrs[:MAX_ADDRESSES - len(relays)], relays

    def set_relays(self, relays: Sequence[RelayHint], *, direct: bool) -> bool:
        """From the next announce on, records name these relay hints; ``direct``: whether
        they also carry our direct addresses (not when nobody can dial them). Returns
        whether anything changed (the caller may re-announce at once: :meth:`reannounce`)."""
        new = tuple(relays)[:MAX_RELAY_HINTS]
        changed = (new, direct) != (self._relays, self._announce_direct)
        self._relays, self._announce_direct = new, direct
        return changed

    async def reannounce(self) -> None:
        """Announce every provided content id and the peer record now (addresses changed)."""
        await self._reannounce()

    # -- providers --------------------------------------------------------------------------------

    async def announce(self, content_id: bytes,
                       addresses: Sequence[tuple[str, int]] | None = None) -> int:
        """Announce that we provide ``content_id`` at ``addresses`` (default: reachable
        addresses; up to four, of either family).

        Returns once :data:`ANNOUNCE_QUORUM` of the k closest nodes acknowledged (the
        rest finish in the background). Returns the acks so far. Raises
        :class:`NetworkError` if nobody answered or acknowledged.
        """
        addrs, relays = self._record_addresses(addresses)
        signed = sign_provider(self._identity, discovery_key(content_id), addrs, self._wall(),
                               relays=relays)
        acks, _ = await self._store(signed, ANNOUNCE_QUORUM)
        if not acks:
            raise NetworkError("no DHT node accepted the provider record")
        return acks

    async def provide(self, content_id: bytes,
                      addresses: Sequence[tuple[str, int]] | None = None) -> int:
        """Announce ``content_id`` now and again every ``reannounce_interval`` until
        :meth:`unprovide`. It stays registered even if this first announce raises."""
        discovery_key(content_id)  # validates
        self._provided[content_id] = tuple(addresses) if addresses else None
        return await self.announce(content_id, addresses)

    def unprovide(self, content_id: bytes) -> None:
        """Stop re-announcing ``content_id`` (its records expire on their own)."""
        self._provided.pop(content_id, None)

    async def iter_providers(self, content_id: bytes, limit: int = 64) -> AsyncIterator[ProviderRecord]:
        """Yield providers of ``content_id`` as the lookup finds them, each peer once.

        The walk asks the k closest nodes of the key and merges their replies (and what
        this node holds) with a :class:`~p2p.dht.lookup.ProviderMerge`: until
        :data:`~p2p.dht.lookup.PROVIDER_SOURCES` of them answered, one reply contributes at
        most ``limit // PROVIDER_SOURCES`` providers (the rest follow later), so no single
        node, flooded or lying, fills the result. It stops early only once ``limit``
        providers were yielded.

        Raises :class:`NetworkError` if no node could be asked and none is held locally.
        """
        if limit < 1:
            raise BadInput("limit must be >= 1")
        dkey = discovery_key(content_id)
        merge = ProviderMerge(limit)
        queue: asyncio.Queue[ProviderRecord | None] = asyncio.Queue()

        def accept(found: list[SignedRecord]) -> None:
            for signed in merge.offer(found):
                queue.put_nowait(_provider(signed))

        held = self._records.providers(dkey, self._wall(), limit)
        if held:
            accept(held)
            while not queue.empty():
                item = queue.get_nowait()
                assert item is not None
                yield item
        if merge.full:
            return

        async def walk() -> Lookup | None:
            try:
                return await self._records_walk(KIND_PROVIDER, dkey, accept, lambda: merge.full)
            except NoContacts:
                return None  # reported below, unless a provider was held locally
            finally:
                for signed in merge.finish():
                    queue.put_nowait(_provider(signed))
                queue.put_nowait(None)

        task = self._spawn(walk(), "provider lookup")
        try:
            while (item := await queue.get()) is not None:
                yield item
            if task.cancelled():  # aclose() ended the walk, not our caller
                raise NetworkError("the DHT closed during the provider lookup")
            lookup = task.result()
            if (lookup is None or not lookup.answered) and not held:
                raise NetworkError("no DHT node answered the provider lookup")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def find_providers(self, content_id: bytes, limit: int = 64) -> list[ProviderRecord]:
        """Every provider of ``content_id`` found on the way to the k closest nodes (up to ``limit``)."""
        return [rec async for rec in self.iter_providers(content_id, limit)]

    # -- peers --------------------------------------------------------------------------------------------

    async def announce_peer(self, addresses: Sequence[Address] | None = None) -> int:
        """Publish our peer record: "this peer is reachable at ``addresses``" (default: the
        reachable addresses at each announce; up to four, of either family).

        The record is published again with the provider records, every
        ``reannounce_interval``, until the DHT closes; a later call replaces the
        addresses. Returns once :data:`ANNOUNCE_QUORUM` nodes acknowledged. Raises
        :class:`NetworkError` if none did, :class:`BadInput` for unusable addresses.
        """
        fixed = tuple(addresses) if addresses else None
        addrs, relays = self._record_addresses(fixed)
        signed = sign_peer(self._identity, addrs, self._wall(), relays=relays)
        self._announce_peer = True
        self._peer_addresses = fixed
        acks, _ = await self._store(signed, ANNOUNCE_QUORUM)
        if not acks:
            raise NetworkError("no DHT node accepted the peer record")
        return acks

    async def find_peer(self, peer_id: PeerId) -> PeerRecord:
        """Where ``peer_id`` says it is now: its peer record with the latest expiry.

        Walks to the k nodes closest to the peer's node id, collecting every valid
        record of it on the way (each one checked: signed by ``peer_id``'s key, stored
        under its id, not expired); a copy this node holds counts too. Use it when a
        provider record's addresses fail: a peer re-announces its peer record as its
        addresses change. The record's ``addresses`` may hold IPv4 and IPv6 addresses.

        Raises :class:`NotFound` if no node holds a record of ``peer_id`` (or no node
        could be asked).
        """
        key = peer_key(peer_id)
        best: list[SignedRecord] = []
        held = self._records.get(KIND_PEER, key, self._wall())
        if held is not None:
            best.append(held)

        def accept(found: list[SignedRecord]) -> None:
            best.extend(found)

        with contextlib.suppress(NoContacts):
            await self._records_walk(KIND_PEER, key, accept)
        if not best:
            raise NotFound(f"no DHT record for peer {peer_id.short()}")
        rec = max((s.record for s in best), key=lambda r: r.expires)
        assert isinstance(rec, PeerRecord)
        return rec

    # -- channels -------------------------------------------------------------------------------------

    async def put_channel(self, identity: Identity, name: str, content_id: bytes,
                          seq: int | None = None) -> ChannelRecord:
        """Point ``identity``'s channel ``name`` at ``content_id``.

        ``seq=None`` picks max(current Unix time, highest known seq + 1). Raises
        :class:`StaleSequence` if the holders refused it as older than theirs and
        :class:`NetworkError` if nobody accepted it.
        """
        key = channel_key(identity.peer_id, name)
        if seq is None:
            known = self._channels.get(key, -1)
            try:
                known = max(known, (await self.get_channel(identity.peer_id, name)).seq)
            except NotFound:
                pass
            seq = max(int(self._wall()), known + 1)
        signed = sign_channel(identity, name, content_id, seq, self._wall())
        acks, stale = await self._store(signed, None)
        if not acks:
            if stale:
                raise StaleSequence(f"channel {name!r} already has a newer record than seq {seq}")
            raise NetworkError("no DHT node accepted the channel record")
        self._channels[key] = max(seq, self._channels.get(key, -1))
        assert isinstance(signed.record, ChannelRecord)
        return signed.record

    async def get_channel(self, publisher: PeerId, name: str) -> ChannelRecord:
        """The channel record with the highest seq found. Raises :class:`NotFound`."""
        key = channel_key(publisher, name)
        found: list[ChannelRecord] = []
        held = self._records.get(KIND_CHANNEL, key, self._wall())
        if held is not None:
            found.append(held.record)  # type: ignore[arg-type]

        def accept(records: list[SignedRecord]) -> None:
            found.extend(r.record for r in records)  # type: ignore[misc]

        with contextlib.suppress(NoContacts):
            await self._records_walk(KIND_CHANNEL, key, accept)
        if not found:
            raise NotFound(f"no DHT record for channel {name!r} of {publisher.short()}")
        return max(found, key=lambda r: (r.seq, r.expires))

    # -- introspection ---------------------------------------------------------------------------

    def routing_table(self) -> list[list[tuple[bytes, str, int]]]:
        """Contacts per bucket: (node_id, host, port) at each one's preferred address, least
        recently seen first. :meth:`contacts` gives every address."""
        return [[(n.id, n.ip, n.port) for n in b.nodes.values()]
                for b in self._protocol.router.buckets]

    def contacts(self) -> list[ContactInfo]:
        """Every contact of the routing table with all the addresses it was verified at."""
        out = []
        for node in self._protocol.router.contacts():
            addresses = addresses_of(node)
            first = (node.ip, node.port)
            out.append(ContactInfo(bytes(node.id),
                                   (first, *(a for a in addresses.values() if a != first))))
        return out

    def summary(self) -> DHTStats:
        """A typed snapshot of the counters and the routing table, for health pages, metrics
        and views (``summary().to_json()`` for JSON)."""
        c = self._protocol.counters
        router = self._protocol.router
        contacts = router.contacts()
        families = [addresses_of(n) for n in contacts]
        return DHTStats(
            node_id=self.node_id,
            uptime=self._monotonic() - self._started,
            contacts=len(contacts),
            buckets=len(router.buckets),
            bucket_sizes=tuple(len(b) for b in router.buckets),
            contacts_ipv4=sum(4 in f for f in families),
            contacts_ipv6=sum(6 in f for f in families),
            listen=self.listen_addresses(),
            rpcs_received=dict(c.received),
            rpcs_sent=dict(c.sent),
            rejected=dict(c.rejected),
            events=dict(c.events),
            records=self._records.counts(),
            outstanding=len(self._protocol._outstanding),
            lookups=self._lookups,
            lookup_rpcs=self._lookup_rpcs,
            lookup_rounds=self._lookup_rounds,
            refused_ip_cap=router.refused_ip_cap,
            signature_cache_hits=self._verify_cache.hits,
            signature_cache_misses=self._verify_cache.misses,
            provided=len(self._provided),
            state_load_error=self.state_load_error,
            restored_contacts=self.restored_contacts,
        )

    # -- persistence and maintenance -------------------------------------------------------------

    def save_state(self) -> None:
        """Write the routing table to ``config.state_path`` (atomically). Raises BadInput if unset.

        A contact with addresses in both families is saved as one row per address.
        """
        if self._config.state_path is None:
            raise BadInput("no state_path configured")
        contacts = [(bytes(n.id), host, port) for n in self._protocol.router.contacts()
                    for host, port in addresses_of(n).values()]
        if len({c[0] for c in contacts}) < self._config.ksize:
            # A thin table (a restart during an outage, say) keeps the saved contacts that
            # have not answered yet: they are verified again before any use. Once the
            # table is healthy, stale ones are let go.
            known = {c[0] for c in contacts}
            contacts += [c for c in self._saved_unverified if c[0] not in known]
        save_routing_table(self._config.state_path, self.node_id, contacts)

    def next_deadline(self) -> float:
        """When the next periodic job is due (monotonic seconds): see :meth:`handle_timer`."""
        return self._schedule.next_deadline()

    async def handle_timer(self, now: float | None = None) -> tuple[str, ...]:
        """Run the periodic work due at ``now`` (monotonic seconds; default: the configured
        clock) and return the jobs run, of :mod:`p2p.dht.schedule`'s ``SAVE``, ``EXPIRE``,
        ``REFRESH``, ``REANNOUNCE``.

        The DHT's own task calls this at every deadline; a test with a fake clock advances
        it and calls this itself.
        """
        now = self._monotonic() if now is None else now
        jobs = self._schedule.due(now)
        for job in jobs:
            if job == SAVE:
                try:
                    self.save_state()
                except OSError as exc:
                    log.warning("DHT: could not save routing table: %s", exc)
            elif job == EXPIRE:
                self._records.expire(self._wall())
            elif job == REFRESH:
                await self._refresh(now)
            elif job == REANNOUNCE:
                await self._reannounce()
        return tuple(jobs)

    async def _maintain(self) -> None:
        """Sleep until the next deadline, run what is due; for ever (cancelled by aclose)."""
        while True:
            await asyncio.sleep(max(0.0, self._schedule.next_deadline() - self._monotonic()))
            await self.handle_timer()

    async def _refresh(self, now: float) -> None:
        router = self._protocol.router
        for bucket in router.lonely_buckets(self._config.refresh_interval, now):
            with contextlib.suppress(NetworkError):
                await self._lookup_nodes(router.random_id_in(bucket))

    async def _reannounce(self) -> None:
        for content_id, addrs in list(self._provided.items()):
            try:
                await self.announce(content_id, addrs)
            except NetworkError as exc:
                log.warning("DHT: re-announce failed: %s", exc)
        if self._announce_peer:
            try:
                await self.announce_peer(self._peer_addresses)
            except NetworkError as exc:
                log.warning("DHT: peer record re-announce failed: %s", exc)


def _by_address(addrs: Sequence[tuple[str, int]], failures: Sequence[tuple[str, str]]
                ) -> list[tuple[str, str]]:
    """One reason per bootstrap address, in the order given (a node reached at none of its
    IPv4 and IPv6 addresses: its reasons joined)."""
    reasons: dict[str, list[str]] = {}
    for given, why in failures:
        if why not in reasons.setdefault(given, []):
            reasons[given].append(why)
    ordered = dict.fromkeys(format_address(a) for a in addrs)
    return [(given, "; ".join(reasons.get(given) or ["no answer"])) for given in ordered]


def _provider(signed: SignedRecord) -> ProviderRecord:
    rec = signed.record
    assert isinstance(rec, ProviderRecord)
    return rec


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host.partition("%")[0]).is_loopback
