"""The DHT as the rest of the code sees it: :class:`DHT`, a typed async API over our protocol.

:class:`P2PServer` is the library's ``Server`` with our protocol, an inert storage and
no self-rearming refresh timer; everything periodic runs in tasks the DHT owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from ..errors import BadInput, IntegrityError, NetworkError, NotFound, RemoteProtocolError
from ..identity import Identity, PeerId
from .config import DHTConfig
from .errors import NoContacts, StaleSequence, StateFileError
from .lookup import Lookup, RoundTrips, Unreachable
from .protocol import P2PProtocol
from .records import (
    KIND_CHANNEL,
    KIND_PEER,
    KIND_PROVIDER,
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
from .routing import NullStorage
from .state import load_routing_table, save_routing_table
from .store import PutStatus, RecordStore

log = logging.getLogger(__name__)

ANNOUNCE_QUORUM = 5
"""Acknowledged stores after which ``announce`` returns (the rest finish in the background):
five of the k closest holding a record survive heavy churn, and waiting for all k would make
every announce as slow as the slowest of twenty nodes."""
MAX_PARALLEL_VERIFY = 32
"""Saved contacts re-verified at once on start."""


class P2PServer(Server):  # type: ignore[misc]
    """The library's ``Server`` with :class:`P2PProtocol` and :class:`NullStorage`."""

    protocol_class = P2PProtocol

    def __init__(self, identity: Identity, config: DHTConfig, records: RecordStore,
                 verify_cache: VerifyCache, clock: Callable[[], float]) -> None:
        super().__init__(ksize=config.ksize, alpha=config.alpha, node_id=identity.node_id,
                         storage=NullStorage())
        self._identity = identity
        self._config = config
        self._records = records
        self._verify_cache = verify_cache
        self._clock = clock

    def _create_protocol(self) -> P2PProtocol:
        return P2PProtocol(self.node, self.storage, self.ksize, identity=self._identity,
                           config=self._config, records=self._records,
                           verify_cache=self._verify_cache, clock=self._clock)

    def refresh_table(self, interval: float = 0.0) -> None:
        """Disabled: the library re-arms an hourly ``call_later`` and a fire-and-forget task;
        the DHT's own maintenance task refreshes buckets."""


class DHT:
    """A Kademlia node on UDP: identity-bound ids, signed records, hardened against hostile input.

    Open with :meth:`open` (or ``async with DHT.open_ctx(...)``); close with :meth:`aclose`.
    """

    def __init__(self, identity: Identity, config: DHTConfig, server: P2PServer,
                 protocol: P2PProtocol, records: RecordStore, verify_cache: VerifyCache) -> None:
        self._identity = identity
        self._config = config
        self._server = server
        self._protocol = protocol
        self._records = records
        self._verify_cache = verify_cache
        self._tasks: set[asyncio.Task[Any]] = set()
        self._provided: dict[bytes, tuple[tuple[str, int], ...] | None] = {}
        self._announce_peer = False
        self._channels: dict[bytes, int] = {}
        self._started = time.monotonic()
        self._closed = False
        self._lookups = 0
        self._lookup_rpcs = 0
        self.state_load_error: str | None = None
        self._unreachable = Unreachable()
        self._round_trips = RoundTrips()
        self.restored_contacts = 0
        """Contacts of the saved routing table that answered re-verification at start."""
        self._saved_unverified: list[tuple[bytes, str, int]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, identity: Identity, config: DHTConfig) -> DHT:
        """Bind, restore and re-verify the saved table, join ``config.bootstrap``; listening on return.

        Raises :class:`NetworkError` if the socket cannot be bound. A failed bootstrap is
        not fatal here (the first node of a network has nobody to join); call
        :meth:`bootstrap` to get the error.
        """
        try:
            ipaddress.ip_address(config.host)
        except ValueError:
            raise BadInput(f"DHT host must be a literal IP address, not {config.host!r}") from None
        records = RecordStore()
        cache = VerifyCache()
        server = P2PServer(identity, config, records, cache, time.time)
        try:
            await server.listen(config.port, config.host)
        except OSError as exc:
            raise NetworkError(f"cannot bind DHT socket {config.host}:{config.port}: {exc}") from exc
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
        self._spawn(self._maintain())
        if path is not None:
            self._spawn(self._save_regularly())

    async def aclose(self) -> None:
        """Stop: cancel every task, save the table (if ``state_path``), close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
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

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise NetworkError("the DHT is closed")
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- identity and addresses -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound UDP port (the node's TCP port too, by design)."""
        return int(self._server.transport.get_extra_info("sockname")[1])

    @property
    def node_id(self) -> bytes:
        """This node's 20-byte DHT id, derived from its key."""
        return bytes(self._server.node.id)

    @property
    def protocol(self) -> P2PProtocol:
        """The datagram protocol (tests and diagnostics)."""
        return self._protocol

    def reachable_addresses(self) -> tuple[tuple[str, int], ...]:
        """Where others can reach us: ``announce_addrs`` if set, else the address most peers saw
        us at (non-loopback preferred), else the bound address if it is not a wildcard."""
        if self._config.announce_addrs:
            return self._config.announce_addrs
        seen = sorted(self._protocol.observed.items(), key=lambda kv: -len(kv[1]))
        public = [a for a, _ in seen if not ipaddress.ip_address(a[0]).is_loopback]
        if public:
            return (public[0],)
        if seen:
            return (seen[0][0],)
        ip = ipaddress.ip_address(self._config.host)
        if ip.is_unspecified:
            return ()
        return ((self._config.host, self.port),)

    # -- joining ---------------------------------------------------------------------------------------

    async def bootstrap(self, addrs: Sequence[tuple[str, int]]) -> int:
        """Verify each address's node, then look up our own id. Returns contacts verified.

        Hostnames are resolved here. Raises :class:`NetworkError` if ``addrs`` is not
        empty and no node answered with a valid identity.
        """
        if not addrs:
            return 0
        resolved = await self._resolve(addrs)
        results = await asyncio.gather(
            *(self._protocol.call_identify(a, None) for a in resolved), return_exceptions=True
        )
        verified = 0
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, NetworkError | RemoteProtocolError | IntegrityError):
                    raise result
                continue
            self._protocol.admit(result)
            verified += 1
        if not verified:
            raise NetworkError(f"no bootstrap node answered ({len(addrs)} tried)")
        await self._join()
        return verified

    async def _resolve(self, addrs: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._config.host else socket.AF_INET
        out = []
        for host, port in addrs:
            try:
                infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("DHT: cannot resolve %s: %s", host, exc)
                continue
            for info in infos[:1]:
                out.append((str(info[4][0]), int(info[4][1])))
        return out

    async def _join(self) -> None:
        with contextlib.suppress(NoContacts):
            await self._lookup_nodes(self.node_id)

    async def _reverify(self, contacts: list[tuple[bytes, str, int]]) -> int:
        sem = asyncio.Semaphore(MAX_PARALLEL_VERIFY)

        async def one(cid: bytes, host: str, port: int) -> bool:
            async with sem:
                try:
                    node = await self._protocol.call_identify((host, port), cid)
                except (NetworkError, RemoteProtocolError, IntegrityError):
                    return False
            self._protocol.admit(node)
            return True

        results = await asyncio.gather(*(one(*c) for c in contacts))
        return sum(results)

    # -- lookups ---------------------------------------------------------------------------------

    def _start_nodes(self, key: bytes) -> list[Any]:
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
                        self._unreachable, self._round_trips)
        await lookup.find()
        self._lookups += 1
        self._lookup_rpcs += lookup.rpcs
        return lookup

    async def _lookup_nodes(self, key: bytes) -> list[Any]:
        async def query(node: Any) -> list[Any]:
            return await self._protocol.call_find_node(node, Node(key))

        lookup = await self._walk(key, query)
        if not lookup.answered:
            raise NetworkError("no DHT node answered the lookup")
        return lookup.closest

    async def _records_walk(self, kind: int, key: bytes, accept: Callable[[SignedRecord], None],
                            done: Callable[[], bool] | None = None) -> Lookup:
        async def query(node: Any) -> list[Any]:
            raws, contacts = await self._protocol.call_get(node, kind, key)
            now = time.time()
            for raw in raws:
                try:
                    accept(decode_record(raw, key, now, self._verify_cache, kind))
                except (RemoteProtocolError, IntegrityError):
                    self._protocol.counters.rejected["invalid_record_read"] += 1
            return contacts

        return await self._walk(key, query, done)

    # -- storing -------------------------------------------------------------------------------------

    async def _store(self, signed: SignedRecord, quorum: int | None) -> tuple[int, int]:
        """Store on the k closest; return (acks, stale) once ``quorum`` acked (None = all done)."""
        nodes = await self._lookup_nodes(signed.key)
        self._store_locally(signed, nodes)
        pending: set[asyncio.Task[PutStatus]] = {
            self._spawn(self._protocol.call_put(n, signed.key, signed.raw)) for n in nodes
        }
        acks = stale = 0
        try:
            while pending and (quorum is None or acks < min(quorum, len(nodes))):
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task.cancelled() or task.exception() is not None:
                        continue
                    status = task.result()
                    acks += status == PutStatus.OK
                    stale += status == PutStatus.STALE
        except BaseException:
            for task in pending:
                task.cancel()
            raise
        # Remaining stores keep running in tasks the DHT owns (cancelled by aclose).
        return acks, stale

    def _store_locally(self, signed: SignedRecord, nodes: list[Any]) -> None:
        """Hold the record ourselves too when we are among the k closest to its key."""
        target = Node(signed.key)
        mine = self._server.node.distance_to(target)
        if len(nodes) < self._config.ksize or any(mine < n.distance_to(target) for n in nodes):
            self._records.put(signed, time.time())

    def _addresses(self, addresses: Sequence[tuple[str, int]] | None) -> tuple[tuple[str, int], ...]:
        addrs = tuple(addresses) if addresses else self.reachable_addresses()
        if not addrs:
            raise NetworkError("no reachable address known yet; set announce_addrs")
        return addrs

    # -- providers --------------------------------------------------------------------------------

    async def announce(self, content_id: bytes,
                       addresses: Sequence[tuple[str, int]] | None = None) -> int:
        """Announce that we provide ``content_id`` at ``addresses`` (default: reachable addresses).

        Returns once :data:`ANNOUNCE_QUORUM` of the k closest nodes acknowledged (the
        rest finish in the background). Returns the acks so far. Raises
        :class:`NetworkError` if nobody answered or acknowledged.
        """
        signed = sign_provider(self._identity, discovery_key(content_id),
                               self._addresses(addresses), time.time())
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

        Raises :class:`NetworkError` if no node could be asked and none is held locally.
        """
        if limit < 1:
            raise BadInput("limit must be >= 1")
        dkey = discovery_key(content_id)
        seen: set[bytes] = set()
        queue: asyncio.Queue[ProviderRecord | None] = asyncio.Queue()
        now = time.time()
        for held in self._records.providers(dkey, now, limit):
            seen.add(held.author)
            yield held.record  # type: ignore[misc]
        if len(seen) >= limit:
            return

        def accept(signed: SignedRecord) -> None:
            if signed.author not in seen and len(seen) < limit:
                seen.add(signed.author)
                queue.put_nowait(signed.record)  # type: ignore[arg-type]

        async def walk() -> Lookup:
            try:
                return await self._records_walk(KIND_PROVIDER, dkey, accept,
                                                lambda: len(seen) >= limit)
            finally:
                queue.put_nowait(None)

        task = self._spawn(walk())
        try:
            while (item := await queue.get()) is not None:
                yield item
            lookup = task.result()
            if not lookup.answered and not seen:
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

    async def announce_peer(self) -> int:
        """Publish our peer record (re-published with the provider records). Returns acks."""
        signed = sign_peer(self._identity, self._addresses(None), time.time())
        self._announce_peer = True
        acks, _ = await self._store(signed, ANNOUNCE_QUORUM)
        if not acks:
            raise NetworkError("no DHT node accepted the peer record")
        return acks

    async def find_peer(self, peer_id: PeerId) -> PeerRecord:
        """The freshest peer record of ``peer_id``. Raises :class:`NotFound`."""
        key = peer_key(peer_id)
        best: list[SignedRecord] = []
        held = self._records.get(KIND_PEER, key, time.time())
        if held is not None:
            best.append(held)

        def accept(signed: SignedRecord) -> None:
            best.append(signed)

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
            seq = max(int(time.time()), known + 1)
        signed = sign_channel(identity, name, content_id, seq, time.time())
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
        held = self._records.get(KIND_CHANNEL, key, time.time())
        if held is not None:
            found.append(held.record)  # type: ignore[arg-type]

        def accept(signed: SignedRecord) -> None:
            found.append(signed.record)  # type: ignore[arg-type]

        with contextlib.suppress(NoContacts):
            await self._records_walk(KIND_CHANNEL, key, accept)
        if not found:
            raise NotFound(f"no DHT record for channel {name!r} of {publisher.short()}")
        return max(found, key=lambda r: (r.seq, r.expires))

    # -- introspection ---------------------------------------------------------------------------

    def routing_table(self) -> list[list[tuple[bytes, str, int]]]:
        """Contacts per bucket: (node_id, host, port), least recently seen first."""
        return [[(n.id, n.ip, n.port) for n in b.nodes.values()]
                for b in self._protocol.router.buckets]

    def stats(self) -> dict[str, Any]:
        """Counters for health pages and metrics."""
        c = self._protocol.counters
        return {
            "node_id": self.node_id.hex(),
            "uptime": time.monotonic() - self._started,
            "contacts": len(self._protocol.router),
            "buckets": len(self._protocol.router.buckets),
            "rpcs_received": dict(c.received),
            "rpcs_sent": dict(c.sent),
            "rejected": dict(c.rejected),
            "events": dict(c.events),
            "records": self._records.counts(),
            "outstanding": len(self._protocol._outstanding),
            "lookups": self._lookups,
            "lookup_rpcs": self._lookup_rpcs,
            "refused_ip_cap": self._protocol.router.refused_ip_cap,
            "signature_cache": {"hits": self._verify_cache.hits,
                                "misses": self._verify_cache.misses},
            "provided": len(self._provided),
            "state_load_error": self.state_load_error,
            "restored_contacts": self.restored_contacts,
        }

    # -- persistence and maintenance -------------------------------------------------------------

    def save_state(self) -> None:
        """Write the routing table to ``config.state_path`` (atomically). Raises BadInput if unset."""
        if self._config.state_path is None:
            raise BadInput("no state_path configured")
        contacts = [(n.id, n.ip, n.port) for n in self._protocol.router.contacts()]
        if len(contacts) < self._config.ksize:
            # A thin table (a restart during an outage, say) keeps the saved contacts that
            # have not answered yet: they are verified again before any use. Once the
            # table is healthy, stale ones are let go.
            known = {c[0] for c in contacts}
            contacts += [c for c in self._saved_unverified if c[0] not in known]
        save_routing_table(self._config.state_path, self.node_id, contacts)

    async def _save_regularly(self) -> None:
        while True:
            await asyncio.sleep(self._config.save_interval)
            try:
                self.save_state()
            except OSError as exc:
                log.warning("DHT: could not save routing table: %s", exc)

    async def _maintain(self) -> None:
        """Refresh lonely buckets, expire records and re-announce, each on its own period."""
        cfg = self._config
        period = min(cfg.refresh_interval, cfg.reannounce_interval) / 2
        next_refresh = time.monotonic() + cfg.refresh_interval
        next_announce = time.monotonic() + cfg.reannounce_interval
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self._records.expire(time.time())
            if now >= next_refresh:
                next_refresh = now + cfg.refresh_interval
                await self._refresh()
            if now >= next_announce:
                next_announce = now + cfg.reannounce_interval
                await self._reannounce()

    async def _refresh(self) -> None:
        router = self._protocol.router
        for bucket in router.lonely_buckets(self._config.refresh_interval):
            with contextlib.suppress(NetworkError):
                await self._lookup_nodes(router.random_id_in(bucket))

    async def _reannounce(self) -> None:
        for content_id, addrs in list(self._provided.items()):
            try:
                await self.announce(content_id, addrs)
            except NetworkError as exc:
                log.warning("DHT: re-announce failed: %s", exc)
        if self._announce_peer:
            with contextlib.suppress(NetworkError):
                await self.announce_peer()
