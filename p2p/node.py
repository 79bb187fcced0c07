"""The node: the one object the command line, the terminal app and the tests drive.

``async with Node(config) as node:`` returns once the node listens on TCP (chunk
server) and UDP (DHT) on the same port, and on exit stops every download
(progress kept), the server, the DHT and the store. Everything the node does is
published on :attr:`Node.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import ipaddress
import logging
import os
import re
import shutil
import socket
import stat
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import netcheck
from .address import Address, RelayedAddress, RelayHint, format_address, normalize_host, primary_ip
from .bitfield import bit_get
from .content import (
    ContentId,
    FileInfo,
    Manifest,
    Ticket,
    build_share_manifest,
    make_ticket,
    parse_id_or_ticket,
)
from .content.select import Selection
from .dht import DHT, ChannelRecord, DHTConfig
from .dht.state import load_routing_table
from .errors import (
    AlreadyDownloading,
    BadInput,
    BootstrapUnreachable,
    ContentChanged,
    DestinationExists,
    NetworkError,
    NotFound,
    P2PError,
    PortInUse,
    StateDirLocked,
    StoreError,
    WrongPublisher,
)
from .events import (
    ChunkUploaded,
    DownloadCompleted,
    DownloadFailed,
    DownloadPaused,
    EventBus,
    LogMessage,
    PeerConnected,
    PeerDropped,
    Shared,
    ShareWithdrawn,
)
from .identity import Identity, PeerId, load_or_create
from .lan import LAN_SERVICE, LanDiscovery, LanPeer
from .library import Library
from .netcheck import DialBackWatch
from .reachability import NOT_CHECKED, Reachability
from .results import DHTSummary, FetchResult, PeerInfo, ShareResult, VerifyReport
from .store import Store, seal
from .store.chunks import ChunkMap
from .swarm.download import Download, FetchOptions
from .tasks import TaskOwner
from .wire import server as wire_server
from .wire.bandwidth import Bandwidth, Throttle
from .wire.circuits import RelayLimits
from .wire.messages import HolePunchConnect, HolePunchSync, Message
from .wire.punch import PunchChannel, PunchFailed, Role, punch
from .wire.relay import RelayService
from .wire.reservation import HeldReservation, open_circuit, shareable_port
from .wire.transport import Connection, connect

log = logging.getLogger(__name__)

DEFAULT_PORT = 7473
"""TCP (chunks) and UDP (DHT) port a node listens on unless told otherwise."""
BIND_ATTEMPTS = 8
"""With port 0, tries to find a port free for both TCP and UDP."""
HASH_THREADS = 2
"""Threads that check and write chunks (BLAKE3 and pwrite release the GIL)."""
DUAL_STACK = ("0.0.0.0", "::")
"""Every address of both families: one IPv4 and one IPv6-only socket per protocol."""
ROUTING_FILE = "routing.json"
"""The DHT's routing table inside the state directory (JSON), saved while running and on close."""
MAX_HELLO_DIALS = 2
"""Listen addresses of one inbound peer that a download dials (its own host, a port or two)."""
PEER_LOOKUP_TTL = 60.0
"""Seconds a peer-record lookup is reused: addresses change rarely; a DHT walk per failed
dial would let one unreachable provider cost a lookup per address it lists."""
MAX_PEER_LOOKUPS = 256
"""Peer-record lookups remembered at once (the oldest is forgotten first)."""
RATE_SAMPLE = 1.0
"""Seconds between samples of per-peer byte counts: the window of :attr:`PeerInfo.rate_in`."""
NODE_LOCK = "node.lock"
"""File in the state directory that a running node holds an exclusive ``flock`` on, with its
pid and command in it: one node per state directory (two would serve one library with two
views of it, under one peer id)."""
MAX_RENAMES = 10_000
"""``NAME (N).EXT`` candidates tried by ``--rename`` before giving up."""
RESUMABLE = ("active", "interrupted")
"""Download states a long-running node resumes when it starts: running when their node
stopped (``interrupted``) or was killed (still ``active``); a paused one stays paused."""
MAX_RESERVATIONS = 2
"""Relays a node that others cannot reach holds a reservation on at once (what its records'
relay hints name: one relay can go down)."""
RELAY_WAIT = 5.0
"""Seconds a share waits, before it makes its ticket, for a first relay reservation (or a
verdict that the node is reachable): the ticket must name a way in. A reservation on a
reachable relay takes a round trip or two."""

CircuitHook = Callable[[Connection, bool], None]
"""Called with each relay circuit that becomes a connection, and whether it came in: the
seam where a direct-path upgrade (hole punching) starts (see :meth:`Node.add_circuit_hook`)."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to know, built by the CLI from flags and by tests from tmp_path."""

    state_dir: Path
    """Identity key, database and default downloads live here."""
    host: str | tuple[str, ...] = DUAL_STACK
    """Address to listen on (TCP and UDP), or one per family on the same port: the default
    listens on every IPv4 and IPv6 address (IPv6 is left out on a host without it)."""
    port: int = DEFAULT_PORT
    """Port for TCP and UDP; 0 picks a free one."""
    bootstrap: tuple[Address, ...] = ()
    """DHT nodes to join through."""
    announce_addrs: tuple[Address, ...] = ()
    """Addresses to announce instead of the learned one (port forwarding, known public IP)."""
    download_dir: Path = field(default_factory=Path.cwd)
    """Where fetches go when no destination is given."""
    max_contacts_per_ip: int | None = 2
    """DHT contacts per IP; None lifts the cap (many peers on 127.0.0.1 in tests and the demo)."""
    rpc_timeout: float = 1.0
    """DHT per-RPC timeout."""
    dht_rate_limit_per_ip: float | None = DHTConfig.rate_limit_per_ip
    """Inbound DHT datagrams per second accepted from one IP; None = unlimited."""
    dht_rate_limit_burst: float = DHTConfig.rate_limit_burst
    """DHT datagrams one IP may send in a burst before the rate applies."""
    dht_save_interval: float = DHTConfig.save_interval
    """Seconds between saves of the routing table while running (it is also saved on close)."""
    server_limits: wire_server.ServerLimits = field(default_factory=wire_server.ServerLimits)
    agent: str = "p2p/0.1"
    clock: Callable[[], float] | None = None
    """Monotonic seconds for the deadlines of the chunk server and the downloads; None = the
    event loop's clock. Tests pass :class:`p2p.testing.FakeClock` and call
    :meth:`handle_timers`. (The DHT keeps its own clocks, in its configuration: its periodic
    work sleeps on the event loop.)"""
    announce_shares: bool = True
    """Announce the library on the DHT at start. Off for short-lived commands, whose port
    is gone a moment later (their records would send peers to a dead address)."""
    dht_mode: str = "server"
    """How this node takes part in the DHT: ``server`` (others add it to their routing
    tables), ``client`` (it queries and announces but is never added: a node others cannot
    reach), or ``auto``: a client until dial-backs prove it reachable (a node with no
    bootstrap is the first of its network and a server). See docs/PROTOCOL.md, Reachability."""
    dht_observer: Address | None = None
    """A second UDP endpoint (another address of this host, or another port) that answers
    where it sees a peer, and the address the second dial-back comes from: lets a network with
    one bootstrap tell peers their NAT's kind."""
    reachability_interval: float = 1800.0
    """Seconds between reachability re-checks of an ``auto`` node (also re-checked at once when
    the address the DHT observes us at changes)."""
    resume_downloads: bool = False
    """Resume at start the downloads that were running when the last node of this state
    directory stopped (:data:`RESUMABLE`). On for long-running nodes (``p2p serve``, the
    terminal app), off for a command's own short-lived node."""
    max_upload_rate: float = 0.0
    """Bytes per second this node sends to all its peers together (ciphertext, handshakes
    included); 0 is no limit. :meth:`Node.set_limits` changes it while the node runs."""
    max_download_rate: float = 0.0
    """Bytes per second this node receives from all its peers together; 0 is no limit."""
    relay: bool = False
    """Serve as a relay for peers others cannot reach (``p2p serve --relay``, the bootstrap
    daemon): reservations and circuits on the TCP port (docs/PROTOCOL.md, Relays)."""
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    """What a relay gives (reservations, circuits, per peer and IP, time, bytes, rate)."""
    use_relays: bool = True
    """An ``auto`` node that is not known to be reachable holds reservations on its relays
    and names them in its records and tickets instead of its direct addresses."""
    relays: tuple[Address, ...] = ()
    """Relays to reserve on; empty: the bootstrap nodes."""
    hole_punching: bool = True
    """Try a direct connection (TCP hole punching, docs/PROTOCOL.md) to every peer a relay
    circuit joins us to, and move the transfer to it when it opens."""
    lan_discovery: bool = False
    """Advertise this node and browse for others on the LAN with mDNS / DNS-SD
    (docs/PROTOCOL.md, LAN discovery): LAN peers become DHT contacts and first-hop candidates
    of every fetch. Off for a library node unless asked; the command line and the terminal
    app turn it on unless ``--no-lan`` (or ``lan = "off"``, ``P2P_LAN=off``). A node that
    listens on loopback only never advertises (nothing on the LAN could reach it)."""
    lan_service: str = LAN_SERVICE
    """The DNS-SD service type advertised and browsed (tests use their own)."""


class _AlreadyThere(Exception):
    """Raised by the destination check when the destination already holds the content
    (every chunk verified): the download ends there, with nothing fetched."""

    def __init__(self, manifest: Manifest, path: Path) -> None:
        super().__init__(str(path))
        self.manifest = manifest
        self.path = path


@dataclass(frozen=True)
class RemovedDownload:
    """What ``p2p rm`` did: a download forgotten, its partial data kept or deleted."""

    content_id: ContentId
    name: str
    state: str
    """Its state before (``complete`` ones also stop being served; their files stay)."""
    dest: Path
    partial: Path | None
    """Where its partial data is (kept) or was (deleted); None if it had none."""
    deleted: bool
    """True when the partial data was deleted."""

    def to_json(self) -> dict[str, Any]:
        """The JSON form ``p2p rm --json`` prints."""
        return {"content_id": str(self.content_id), "name": self.name, "state": self.state,
                "dest": str(self.dest), "partial": None if self.partial is None else str(self.partial),
                "deleted": self.deleted}


class _HashingStopped(Exception):
    """Raised inside the hashing thread when the share was cancelled."""


class Node:
    """A peer: identity, store, DHT, chunk server and downloads. Use as an async context manager."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.events = EventBus()
        self._identity: Identity
        self._store: Store
        self._dht: DHT
        self._server: wire_server.Server
        self.port = 0
        self._downloads: dict[ContentId, tuple[Download, asyncio.Task[Any]]] = {}
        self._tasks = TaskOwner("node", log)
        self._rates = _PeerRates()
        self._pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="chunks")
        self._sync_pool = ThreadPoolExecutor(1, thread_name_prefix="sync")
        self._started = False
        self._closed = False
        self._saved_contacts = 0
        self._hosts: tuple[str, ...] = ()
        self._peer_lookups: dict[PeerId, tuple[float, asyncio.Task[list[Address]]]] = {}
        self.bootstrap_error: str | None = None
        self.bootstrap_failure: BootstrapUnreachable | None = None
        """Set when none of the bootstrap nodes answered at start (each named, with why)."""
        self._lock_fd = -1
        self._close_done = asyncio.Event()
        """Set once :meth:`aclose` has finished (a second call waits for it)."""
        self.resumed: list[ContentId] = []
        """The downloads this node resumed when it started (:attr:`NodeConfig.resume_downloads`)."""
        self._closing = False
        """Set while :meth:`aclose` stops the downloads: they are ``interrupted``, not paused."""
        self._dialbacks = DialBackWatch()
        self.reachability: Reachability = NOT_CHECKED
        """The latest reachability verdict (:meth:`netcheck`): what the DHT mode follows."""
        self._checking: asyncio.Lock | None = None
        self.bandwidth = Bandwidth(config.max_upload_rate, config.max_download_rate)
        """The node's upload and download limits, over every peer connection."""
        self._download_limits: dict[ContentId, Throttle] = {}
        self._stopped_why: dict[ContentId, str] = {}
        """Each running download's own download limit (rate 0: none but the node's)."""
        self.relay: RelayService | None = None
        """This node's relay service (:attr:`NodeConfig.relay`), else None."""
        self._reservations: dict[Address, tuple[HeldReservation, asyncio.Task[None]]] = {}
        self._path_changed = asyncio.Event()
        """Set when a reservation was granted or the verdict arrived (:meth:`wait_for_path`)."""
        self._circuit_hooks: list[CircuitHook] = []
        self._punch_channels: dict[Connection, PunchChannel] = {}
        """The relay circuits a hole punch runs over, and its signalling channel on each."""
        self._lan: LanDiscovery | None = None
        self._lan_contacts: set[PeerId] = set()
        """LAN peers that proved their key to the DHT and became contacts."""
        self._lan_changed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Load identity and store, listen on TCP and UDP, join the DHT, announce shares."""
        cfg = self.config
        self._lock_fd = await asyncio.to_thread(_lock_state_dir, Path(cfg.state_dir))
        opened = False
        try:
            self._identity = await asyncio.to_thread(load_or_create, cfg.state_dir)
            self._saved_contacts = await asyncio.to_thread(_saved_contacts, cfg.state_dir / ROUTING_FILE)
            self._store = Store(cfg.state_dir)
            opened = True
        finally:
            if not opened:  # the lock is released on any failure, Ctrl-C included
                self._unlock()
        try:
            await self._bind()
        except BaseException:
            self._store.close()
            self._pool.shutdown(wait=False)
            self._sync_pool.shutdown(wait=False)
            self._unlock()
            raise
        self._started = True
        self._spawn(self._sample_rates(), "peer rates")
        if self.relay is not None:
            self.relay.start()
        self._start_lan()
        self._start_reachability()
        try:
            if cfg.bootstrap:
                try:
                    await self._dht.bootstrap(cfg.bootstrap)
                except P2PError as exc:
                    self.bootstrap_error = str(exc)
                    if isinstance(exc, BootstrapUnreachable):
                        self.bootstrap_failure = exc
                    self._log("warning", f"bootstrap failed: {exc}")
            if cfg.announce_shares:
                # Our current addresses, so a peer whose provider record is stale finds us.
                self._spawn(self._announce_peer(), "announce peer record")
                for share in self._store.shares():
                    await self._provide(share.content_id)
            if cfg.resume_downloads:
                for info in self._store.downloads():
                    if info.state in RESUMABLE:
                        try:
                            selection = self._stored_selection(info.content_id)
                        except NotFound as exc:
                            self._log("warning", f"not resuming {info.name}: {exc}")
                            continue
                        self._log("info", f"resuming {info.name} ({info.content_id.short()})")
                        self.start_fetch(info.content_id, info.dest, selection=selection)
                        self.resumed.append(info.content_id)
        except BaseException:  # cancelled while joining: close what is open, then go on failing
            await self.aclose()
            raise

    async def _bind(self) -> None:
        cfg = self.config
        hosts = _bindable(_hosts(cfg.host))
        last: Exception | None = None
        if cfg.relay:
            self.relay = RelayService(cfg.relay_limits, addresses=self.addresses, clock=cfg.clock)
        for _ in range(BIND_ATTEMPTS if cfg.port == 0 else 1):
            server = wire_server.Server(self._identity, self._store, cfg.server_limits,
                                        agent=cfg.agent, on_event=self._on_server_event,
                                        clock=cfg.clock, bandwidth=self.bandwidth,
                                        relay=self.relay, on_punch=self._punch_signal)
            port = await server.start(hosts, cfg.port)
            dht_config = DHTConfig(host=hosts[0] if len(hosts) == 1 else hosts, port=port, ksize=20,
                                   max_contacts_per_ip=cfg.max_contacts_per_ip,
                                   rpc_timeout=cfg.rpc_timeout,
                                   rate_limit_per_ip=cfg.dht_rate_limit_per_ip,
                                   rate_limit_burst=cfg.dht_rate_limit_burst,
                                   save_interval=cfg.dht_save_interval,
                                   announce_addrs=cfg.announce_addrs,
                                   state_path=cfg.state_dir / ROUTING_FILE,
                                   client_mode=_starts_as_client(cfg),
                                   observer=cfg.dht_observer)
            try:
                self._dht = await DHT.open(self._identity, dht_config)
            except NetworkError as exc:
                last = exc
                await server.aclose()
                continue
            self._server = server
            self.port = port
            self._hosts = hosts
            return
        where = ", ".join(format_address((h, cfg.port)) for h in hosts)
        if isinstance(last, PortInUse):
            raise PortInUse(f"cannot listen on {where} (TCP and UDP): {last}", cfg.port, last.transport)
        raise NetworkError(f"cannot listen on {where} (TCP and UDP): {last}")

    async def aclose(self) -> None:
        """Pause downloads (progress kept), stop serving, leave the DHT, close the store.
        Idempotent: a call while another closes waits until it is done."""
        if self._closed:
            await self._close_done.wait()
            return
        self._closed = True
        try:
            await self._close()
        finally:
            self._close_done.set()

    async def _close(self) -> None:
        if not self._started:
            self._unlock()
            return
        self._closing = True
        for cid in list(self._downloads):
            await self.pause(cid)
        self._stop_reservations()
        await self._tasks.aclose()
        if self.relay is not None:
            await self.relay.aclose()
        await self._server.aclose()
        await self._dht.aclose()
        self._pool.shutdown(wait=True)
        self._sync_pool.shutdown(wait=True)  # finishes pending seals: finished downloads become durable
        self._store.close()
        self.bandwidth.close()
        self._unlock()

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` began: what stops now was stopped by the node, not a person."""
        return self._closed

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock: another node may start now
            self._lock_fd = -1

    @staticmethod
    def running_holder(state_dir: Path) -> str | None:
        """Who runs a node of ``state_dir`` now (``pid N, p2p serve``), or None if nobody does."""
        try:
            fd = os.open(Path(state_dir) / NODE_LOCK, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder_text(fd)
            return None
        finally:
            os.close(fd)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    def _log(self, level: str, message: str) -> None:
        getattr(log, level)(message)
        self.events.publish(LogMessage(level, message))

    # -- addresses ------------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        """This node's peer id."""
        return self._identity.peer_id

    @staticmethod
    def identity_of(state_dir: Path) -> tuple[PeerId, bytes]:
        """(peer id, public key) of the peer whose state directory this is (made on first use).

        Works with or without a node of ``state_dir`` running.
        """
        identity = load_or_create(Path(state_dir))
        return identity.peer_id, identity.public_key

    @property
    def public_key(self) -> bytes:
        """This node's Ed25519 public key (its peer id is derived from it)."""
        return self._identity.public_key

    @property
    def library(self) -> Library:
        """A read-only view of what this node shares and downloads."""
        return Library(self._store)

    def listen_address(self) -> Address:
        """The first bound (host, port) (see :meth:`listen_addresses` for every family)."""
        return self._hosts[0], self.port

    def listen_addresses(self) -> list[Address]:
        """Every bound (host, port): one per address family in dual stack."""
        return [(host, self.port) for host in self._hosts]

    def addresses(self) -> list[Address]:
        """Where other peers can reach us, best first (what tickets and records carry):
        the addresses the DHT learned or was told, then this host's own per family."""
        found = list(self._dht.reachable_addresses())
        extra: list[Address] = []
        for host in self._hosts:
            ip = ipaddress.ip_address(host)
            if ip.is_unspecified:
                lan = primary_ip(ip.version)
                if lan:
                    found.append((lan, self.port))
                extra.append(("127.0.0.1" if ip.version == 4 else "::1", self.port))
            else:
                found.append((host, self.port))
        return list(dict.fromkeys(found + extra))

    # -- sharing ---------------------------------------------------------------------------

    async def share(self, path: Path, progress: Callable[[int], None] | None = None) -> ShareResult:
        """Hash, sign and store ``path`` (file or folder), serve it in place and announce it."""
        path = Path(path).expanduser()
        if not path.exists():
            raise BadInput(f"{path}: no such file or folder")
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def report(n: int) -> None:
            if stop.is_set():  # cancelled: stop hashing at the next batch, not at the end
                raise _HashingStopped
            if progress is not None:
                loop.call_soon_threadsafe(progress, n)

        try:
            manifest, _, left_out = await asyncio.to_thread(build_share_manifest, path,
                                                            self._identity, report)
        except asyncio.CancelledError:
            stop.set()
            raise
        await asyncio.to_thread(self._store.add_share, manifest, root=path)
        await self.wait_for_path(RELAY_WAIT)
        if self.config.announce_shares:  # else the next long-running start announces it
            await self._provide(manifest.content_id)
        self.events.publish(Shared(manifest.content_id, manifest.name, manifest.total_size))
        return ShareResult(manifest, self.ticket(manifest.content_id, manifest.publisher), left_out)

    async def _provide(self, content_id: ContentId) -> None:
        """Announce ``content_id`` now and keep re-announcing it. Sharing works without a DHT
        (tickets carry addresses), so a failed first announce is logged, not raised; the
        DHT retries it at the next re-announce."""
        try:
            await self._dht.provide(content_id.digest)
        except NetworkError as exc:
            self._log("info", f"{content_id.short()} not announced yet: {exc}")

    async def _announce_peer(self) -> None:
        """Publish our peer record (the DHT re-announces it with the provider records)."""
        try:
            await self._dht.announce_peer()
        except NetworkError as exc:  # no contacts yet: the DHT retries at each re-announce
            self._log("debug", f"peer record not announced yet: {exc}")

    async def _current_addresses(self, peer: PeerId) -> list[Address]:
        """Where ``peer``'s own peer record says it is now (empty if the DHT has none).

        One lookup per peer per :data:`PEER_LOOKUP_TTL`: a download that fails to dial
        several stale addresses of one provider asks the DHT once.
        """
        now = asyncio.get_running_loop().time()
        cached = self._peer_lookups.get(peer)
        if cached is None or now - cached[0] > PEER_LOOKUP_TTL:
            cached = (now, self._spawn(self._find_peer(peer), f"find peer {peer.short()}"))
            self._peer_lookups[peer] = cached
            if len(self._peer_lookups) > MAX_PEER_LOOKUPS:
                oldest = min(self._peer_lookups, key=lambda p: self._peer_lookups[p][0])
                self._peer_lookups.pop(oldest, None)
        return list(await asyncio.shield(cached[1]))

    async def _find_peer(self, peer: PeerId) -> list[Address]:
        try:
            record = await self._dht.find_peer(peer)
        except (NotFound, NetworkError):
            return []
        return list(record.addresses)

    # -- relays (docs/PROTOCOL.md, Relays) ----------------------------------------------------

    def relay_hints(self) -> list[RelayHint]:
        """The relays this node holds a reservation on now (what its records and tickets name)."""
        return [hint for held, _ in self._reservations.values() if (hint := held.hint) is not None]

    def observed_by_relays(self) -> list[Address]:
        """Where our relays see our reservation connections come from (the NAT's external
        address and port for them): what a direct-path upgrade exchanges with the peer."""
        return [held.status.observed for held, _ in self._reservations.values()
                if held.reserved.is_set() and held.status is not None
                and held.status.observed is not None]

    def _direct_dialable(self) -> bool:
        """Whether others may dial our direct addresses: reachable, or not known not to be
        (``unknown``: not checked yet, or no evidence either way)."""
        verdict = self.reachability
        return verdict.reachable or verdict.reachability == NOT_CHECKED.reachability

    def _wants_relays(self) -> bool:
        """A long-running node (it announces) that is not a declared server, not proven
        reachable, with relays to ask."""
        cfg = self.config
        return (cfg.use_relays and cfg.dht_mode != "server" and cfg.announce_shares
                and bool(self._relay_addresses()) and not self.reachability.reachable)

    def _relay_addresses(self) -> list[Address]:
        own = set(self.listen_addresses())
        return [a for a in (self.config.relays or self.config.bootstrap) if a not in own]

    def _update_reservations(self) -> None:
        """Hold reservations while others cannot reach us; let them go once they can."""
        if self.closing:
            return
        if not self._wants_relays():
            self._stop_reservations()
            self._relays_changed()
            return
        for address in self._relay_addresses()[:MAX_RESERVATIONS]:
            if address in self._reservations:
                continue
            held = HeldReservation(self._identity, address, self._circuit_arrived,
                                   agent=self.config.agent, on_change=self._relays_changed,
                                   local_port=self.port)
            task = self._spawn(held.run(), f"reservation {format_address(address)}")
            self._reservations[address] = (held, task)
        self._relays_changed()

    def _stop_reservations(self) -> None:
        """Let every reservation go (their tasks are the node's: awaited when it closes)."""
        held, self._reservations = self._reservations, {}
        for _, task in held.values():
            task.cancel()

    def _relays_changed(self) -> None:
        """A reservation came or went, or the verdict changed: records say so at once."""
        self._path_changed.set()
        if self.closing or not self._started:
            return
        direct = self._direct_dialable() or not self.relay_hints()
        if self._dht.set_relays(self.relay_hints(), direct=direct) and self.config.announce_shares:
            self._spawn(self._dht.reannounce(), "re-announce (relays)")

    async def wait_for_path(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until others have a way in: a relay reservation, or a
        verdict that we are reachable; at once when this node does not use relays, and once
        every relay has refused or failed (there is no way in through them for now)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._wants_relays() and not self.relay_hints()
               and not all(held.attempts for held, _ in self._reservations.values())):
            self._path_changed.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._path_changed.wait()
            except TimeoutError:
                return

    def _circuit_arrived(self, transport: asyncio.Transport, unread: bytes, relay: PeerId,
                         source: PeerId) -> None:
        """Our side of a circuit a peer opened through one of our relays: served as any
        inbound connection."""
        self._server.adopt(transport, unread, relay)

    def add_circuit_hook(self, hook: CircuitHook) -> None:
        """Call ``hook(connection, inbound)`` for every relay circuit that becomes a
        connection (dialled by a download, or arrived through a reservation), after the
        node has started its own hole punch on it (:attr:`NodeConfig.hole_punching`). Hooks
        must not block nor raise (start an owned task for any work)."""
        self._circuit_hooks.append(hook)

    def _circuit_opened(self, conn: Connection, *, inbound: bool,
                        download: Download | None = None) -> None:
        if self.config.hole_punching and not self.closing:
            # Before any bulk data: the punch's messages share the circuit with chunks.
            channel = self._punch_channels[conn] = PunchChannel(conn.send)
            conn.protocol.closed.add_done_callback(lambda _: channel.close())
            self._spawn(self._upgrade(conn, channel, inbound, download),
                        f"hole punch {conn.remote_peer.short()}")
        for hook in self._circuit_hooks:
            hook(conn, inbound)

    def _punch_source(self) -> str | None:
        """The address a punch dials from: the listener's when it listens on one address
        only (it then shares the port with exactly that socket), else any."""
        if len(self._hosts) == 1 and self._hosts[0] not in ("", "0.0.0.0", "::"):
            return self._hosts[0]
        return None

    def _punch_signal(self, conn: Connection, message: Message) -> bool:
        """A hole punch message on a relay circuit (either side's reader hands it here);
        returns whether a punch on that circuit took it (one that none takes changed
        nothing: the download charges it to the peer's budget)."""
        channel = self._punch_channels.get(conn)
        if channel is None or not isinstance(message, HolePunchConnect | HolePunchSync):
            return False
        channel.deliver(message)
        return True

    async def _upgrade(self, circuit: Connection, channel: PunchChannel, inbound: bool,
                       download: Download | None) -> None:
        """Punch a direct connection to the peer of ``circuit`` and move to it: the
        reserving side (``inbound``) is the punch's target and serves the direct connection;
        the dialling side's download carries on over it and closes the circuit. On failure
        the circuit stays."""
        peer = circuit.remote_peer
        own = self.observed_by_relays()
        if not inbound and circuit.observed is not None and circuit.observed not in own:
            own.insert(0, circuit.observed)
        try:
            direct = await punch(Role.TARGET if inbound else Role.DIALLER,
                                 listen_port=self.port, identity=self._identity,
                                 expected_peer=peer, signal=channel,
                                 own_addrs=[*own, *self.listen_addresses()],
                                 public=self.reachability.reachable, listener=self._server,
                                 source=self._punch_source(), listen_addrs=self.addresses(),
                                 agent=self.config.agent,
                                 up=(self.bandwidth.up,), down=(self.bandwidth.down,))
        except PunchFailed as exc:
            self._log("info", f"no direct connection to {peer.short()}, staying relayed: {exc}")
            return
        finally:
            self._punch_channels.pop(circuit, None)
            channel.close()
        direct.punched = True
        if inbound:
            self._server.serve(direct)
        elif download is None or not download.move(peer, direct, replacing=circuit):
            await direct.aclose("not needed any more")
            return
        self._log("info", f"direct connection to {peer.short()} at "
                          f"{format_address(direct.remote_address)} (hole punched)")

    def ticket(self, content_id: ContentId, publisher: PeerId | None = None) -> Ticket:
        """A ticket for content we hold: its id, publisher and our addresses."""
        if publisher is None:
            manifest = self._store.get_manifest(content_id)
            if manifest is None:
                raise NotFound(f"{content_id} is not in this node's library")
            publisher = manifest.publisher
        relays = self.relay_hints()
        direct = [] if relays and not self._direct_dialable() else self.addresses()
        ticket = make_ticket(content_id, publisher, direct, relays)
        if relays and self.peer_id != publisher:
            ticket = dataclasses.replace(ticket, relayed_peer=self.peer_id)
        return ticket

    def unshare(self, content_id: ContentId) -> bool:
        """Stop serving ``content_id`` (the files stay). True if it was shared."""
        removed = self._store.remove_share(content_id)
        self._dht.unprovide(content_id.digest)
        return removed

    async def verify(self, content_id: ContentId) -> VerifyReport:
        """Re-hash the local copy of ``content_id`` chunk by chunk."""
        return await asyncio.to_thread(self._verify, content_id)

    def _verify(self, content_id: ContentId) -> VerifyReport:
        manifest = self._store.get_manifest(content_id)
        if manifest is None:
            raise NotFound(f"{content_id} is not in this node's library")
        cid = content_id.digest
        count = manifest.chunk_count
        held = self._store.bitfield(cid)
        if held is None and self._store.download_info(content_id) is None:
            raise NotFound(f"{content_id} is neither shared nor downloaded here any more (it was "
                           "unshared or removed; `p2p ls` lists what is): there is nothing to verify")
        bad: list[int] = []
        good = missing = 0
        for index in range(count):
            if held is None or not bit_get(held[1], index):
                missing += 1
                continue
            try:
                self._store.read_chunk(cid, index)
                good += 1
            except P2PError:
                bad.append(index)
        info = self._store.download_info(content_id)
        downloading = info is not None and info.state != "complete"
        return VerifyReport(content_id, count, good, bad, missing, downloading)

    # -- fetching -------------------------------------------------------------------------------

    def _options(self, target: str | ContentId | Ticket, dest: Path | None, publisher: PeerId | None,
                 peers: Sequence[Address], timeout: float, sequential: bool = False,
                 selection: Selection | None = None,
                 download_dir: Path | None = None) -> FetchOptions:
        cid, ticket = _parse_target(target)
        if ticket is not None:
            # The ticket's publisher is binding, exactly as --from is: a peer at the ticket's
            # address that serves the same bytes under its own signature is an impostor.
            if publisher is not None and publisher != ticket.publisher:
                raise WrongPublisher(f"the ticket names publisher {ticket.publisher}, but "
                                     f"{publisher} was required")
            publisher = ticket.publisher
        addrs = list(peers)
        if ticket is not None:
            addrs = list(ticket.addresses) + addrs
        if addrs:
            self._store.add_sources(cid, addrs)
        # A resumed download dials the addresses an earlier run was given (a ticket's) again.
        addrs += [a for a in self._store.sources(cid) if a not in addrs]
        if ticket is not None:
            # Through the relays the sharer holds reservations on (never stored as sources:
            # a reservation is short-lived, and the DHT's records name the current ones).
            addrs = [RelayedAddress(hint, ticket.relay_target) for hint in ticket.relays] + addrs
        return FetchOptions(cid, Path(dest).expanduser() if dest is not None else None,
                            Path(download_dir) if download_dir is not None else self.config.download_dir,
                            publisher, tuple(addrs), timeout, sequential,
                            selection if selection is not None else Selection())

    async def fetch(self, target: str | ContentId | Ticket, dest: Path | None = None, *,
                    publisher: PeerId | None = None, peers: Sequence[Address] = (),
                    timeout: float = 30.0, sequential: bool = False,
                    selection: Selection | None = None, download_dir: Path | None = None,
                    rename: bool = False, max_download_rate: float = 0.0) -> FetchResult:
        """Download ``target`` (an id, a ticket or their text); returns where it is and how it came.

        The destination is ``dest`` (an existing folder: ``dest/NAME``), else
        ``download_dir/NAME`` (default: the node's). It is settled once the manifest is
        verified, before any chunk is asked for: a place that holds this content already
        (every chunk checked) is kept and recorded, with nothing fetched; one that holds
        something else is refused (:class:`DestinationExists`), or with ``rename`` the
        download goes beside it as ``NAME (1).EXT``.

        Already complete here: the local copy (checked against ``publisher`` like a
        download), copied to the destination unless it is there already. Cancelling the
        calling task pauses the download; fetching again resumes it. Raises
        :class:`AlreadyDownloading` while this node fetches the same content.
        ``sequential`` asks for the chunks in file order (see :meth:`stream`).

        ``selection`` fetches only some files of a folder (their chunks alone are asked for);
        they are put in place at the destination, the rest is absent, and the download is
        recorded as ``selected``, not served. A later fetch of more files (or all) resumes
        it: the files already there are checked again and kept, only the rest is fetched.
        Raises :class:`BadInput` when the selection picks no file of the content.

        ``max_download_rate``: bytes per second for this download alone, on top of the
        node's limit (0: the one it had when it last stopped, if any); it is recorded with
        the download and kept across pause, resume and restarts; :meth:`set_download_limit`
        changes it while it runs.
        """
        started = asyncio.get_running_loop().time()
        options = self._options(target, dest, publisher, peers, timeout, sequential, selection,
                                download_dir)
        if options.content_id in self._downloads:
            raise AlreadyDownloading(f"{options.content_id} is already being downloaded by this node")
        done = self._completed_path(options.content_id)
        if done is not None:
            path = await self._local_copy(options, done, rename)
            return self._result(options.content_id, path, None, started)
        placed = self._placed_selection(options)
        if placed is not None:
            return self._result(options.content_id, placed, None, started, options.selection)
        self._require_dht(options.peers)
        options = self._widened(options)
        # The download's own limit: the one given, else the one it had when it stopped
        # (pause, resume and restarts keep it), recorded before a byte moves.
        if max_download_rate > 0:
            self._store.set_download_rate(options.content_id, max_download_rate)
        else:
            max_download_rate = self._store.download_rate(options.content_id)
        self._download_limits[options.content_id] = Throttle(max_download_rate, name="download")
        download = self._new_download(options, rename=rename)
        task = asyncio.current_task()
        assert task is not None
        self._downloads[options.content_id] = (download, task)
        self._stopped_why.pop(options.content_id, None)
        try:
            try:
                path = await download.run()
            except _AlreadyThere as there:
                await asyncio.to_thread(self._adopt, there.manifest, there.path)
                return self._result(options.content_id, there.path, None, started)
            # Durable against an OS crash too, without holding up the caller; the pool's
            # shutdown in aclose() waits for it.
            sealing = asyncio.get_running_loop().run_in_executor(self._sync_pool, seal, path)
            sealing.add_done_callback(self._sealed)
            if download.partial is not None and not download.partial.complete:
                self._dht.unprovide(options.content_id.digest)  # some files only: not a share
            return self._result(options.content_id, path, download, started, download.selection)
        except asyncio.CancelledError:
            info = self._store.download_info(options.content_id)
            if info is not None and info.state not in ("complete", "selected"):  # else: done
                # The person paused it, or its node is stopping (it resumes when one starts).
                self._store.set_download_state(options.content_id,
                                               "interrupted" if self._closing else "paused")
                self._dht.unprovide(options.content_id.digest)  # nothing served until it resumes
                self.events.publish(DownloadPaused(options.content_id))
            raise
        except P2PError as exc:
            self._dht.unprovide(options.content_id.digest)
            hint = self._not_found_hint(options) if isinstance(exc, NotFound) else None
            if hint is not None:
                exc = NotFound(f"{exc}: {hint}")
                self._record_failure(options.content_id, exc)
                raise exc from None
            self._record_failure(options.content_id, exc)
            raise
        finally:
            self._downloads.pop(options.content_id, None)
            if self._store.download_info(options.content_id) is None:  # never began, or rm
                self._store.set_download_rate(options.content_id, 0)
            throttle = self._download_limits.pop(options.content_id, None)
            if throttle is not None:
                throttle.close()

    async def stream(self, target: str | ContentId | Ticket,
                     write: Callable[[bytes | memoryview], Awaitable[None]],
                     dest: Path | None = None, *,
                     publisher: PeerId | None = None, peers: Sequence[Address] = (),
                     timeout: float = 30.0, file: str | None = None) -> FetchResult:
        """Fetch a single file with its chunks in file order and give its verified bytes to
        ``write``, in order, as they arrive (``p2p fetch ID -o -``, to watch while it
        downloads). The file is kept at ``dest`` as :meth:`fetch` would; every chunk is read back
        and checked against its hash before it is written out. ``write`` may be slow: the
        download does not wait for it. Raises as :meth:`fetch` does, and :class:`BadInput`
        for a folder; an exception from ``write`` pauses the download and propagates.

        ``file`` streams that file of a folder (its relative path, as ``p2p ls ID`` prints
        it): only its chunks are fetched, the folder is kept at ``dest`` with that file in it
        (as ``fetch`` with a selection of one file). :class:`BadInput` if there is no such file.
        """
        loop = asyncio.get_running_loop()
        cid, _ = _parse_target(target)
        selection = Selection.of_paths([file]) if file is not None else None
        fetching = loop.create_task(self.fetch(target, dest, publisher=publisher, peers=peers,
                                               timeout=timeout, sequential=True,
                                               selection=selection))
        await asyncio.sleep(0)  # the fetch registers its download before it first waits
        entry = self._downloads.get(cid)
        sent = 0
        try:
            if entry is not None:
                sent = await self._stream_running(entry[0], fetching, write, file)
            result = await fetching
            manifest = self._store.get_manifest(cid)
            assert manifest is not None
            index, _first = _streamed_entry(manifest, file)
            info = manifest.entries[index].info
            path = result.path if manifest.kind == "file" else result.path / manifest.entries[index].path
            while sent < info.chunk_count:  # the rest, from the finished file
                data = await loop.run_in_executor(self._pool, _read_verified, path, info, sent)
                await write(data)
                sent += 1
            return result
        finally:
            if not fetching.done():  # write failed or we were cancelled: pause the download
                fetching.cancel()
                with contextlib.suppress(asyncio.CancelledError, P2PError):
                    await fetching

    async def _stream_running(self, download: Download, fetching: asyncio.Task[FetchResult],
                              write: Callable[[bytes | memoryview], Awaitable[None]],
                              file: str | None) -> int:
        """Write the chunks of the streamed file of a running download in order as they
        verify; returns how many were written when it ended (or began to put the file in
        place)."""
        loop = asyncio.get_running_loop()
        cid = download.content_id.digest
        sent = 0
        span: tuple[int, int] | None = None  # (first global chunk, chunk count) of the file
        while not fetching.done():
            download.progressed.clear()
            scheduler = download.scheduler
            if scheduler is not None and download.manifest is not None:
                if span is None:
                    index, first = _streamed_entry(download.manifest, file)
                    span = (first, download.manifest.entries[index].info.chunk_count)
                first, count = span
                while sent < count and first + sent in scheduler.held:
                    try:
                        data = await loop.run_in_executor(self._pool, self._store.read_chunk,
                                                          cid, first + sent)
                    except NotFound:
                        return sent  # complete, and being moved into place: read it there
                    await write(data)
                    sent += 1
                if download.progressed.is_set():
                    continue  # more verified meanwhile
            waiter = loop.create_task(download.progressed.wait())
            await asyncio.wait([fetching, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        return sent

    def select(self, content_id: ContentId, selection: Selection | Iterable[str]) -> None:
        """Change which files a running download wants (the terminal app's ticks): a
        :class:`Selection`, or exactly these relative paths. What is held stays; chunks of
        files no longer wanted are no longer asked for. Raises :class:`NotFound` when no
        download of ``content_id`` is running and :class:`BadInput` when the selection picks
        no file of it."""
        download = self.download(content_id)
        if download is None:
            raise NotFound(f"{content_id} is not being downloaded")
        if not isinstance(selection, Selection):
            selection = Selection.of_paths(selection)
        download.select(selection)

    def _result(self, content_id: ContentId, path: Path, download: Download | None,
                started: float, selection: Selection | None = None) -> FetchResult:
        manifest = self._store.get_manifest(content_id)
        assert manifest is not None  # a finished or local fetch has its verified manifest
        fetched = download.fetched_this_run if download is not None else 0
        entries = list(range(len(manifest.entries)))
        if selection is not None and not selection.everything:
            entries = selection.entries(manifest)
        size = sum(manifest.entries[i].info.size for i in entries)
        chunks = sum(manifest.entries[i].info.chunk_count for i in entries)
        info = self._store.download_info(content_id)
        complete = info is None or info.state != "selected"
        return FetchResult(
            content_id=content_id, path=path, name=manifest.name, size=size,
            chunks=chunks, fetched_chunks=fetched,
            resumed_chunks=max(0, chunks - fetched),
            chunks_by_peer=dict(download.chunks_by_peer) if download is not None else {},
            seconds=asyncio.get_running_loop().time() - started, local=download is None,
            files=len(entries), complete=complete,
            paths=dict(download.paths) if download is not None else {})

    def _placed_selection(self, options: FetchOptions) -> Path | None:
        """Where the files ``options`` selects already are, whole, when an earlier fetch of
        some files of the same content put them in place (state ``selected``) and asked for
        no other place; else None (and the fetch goes on)."""
        info = self._store.download_info(options.content_id)
        if info is None or info.state != "selected" or options.selection.everything \
                or not info.dest.is_dir():
            return None
        if options.dest is not None and options.dest.resolve() not in (
                info.dest, info.dest.parent):
            return None
        manifest = self._store.get_manifest(options.content_id)
        recorded = self._store.recorded_bitfield(options.content_id)
        if manifest is None or recorded is None:
            return None
        manifest.verify(options.content_id, options.publisher)  # --from holds here too
        entries = options.selection.check(manifest)
        chunks = ChunkMap(manifest).chunks_of(entries)
        if all(bit_get(recorded[1], i) for i in chunks) and _placed_whole(info.dest, manifest, entries):
            return info.dest
        return None  # fetched (the files there are checked again, only what is missing comes)

    def _stored_selection(self, content_id: ContentId) -> Selection | None:
        """The files the download of ``content_id`` wants, as its record says (what a resumed
        download asks for); None: every file. Raises :class:`NotFound` when they cannot be
        told (a listed folder whose listing is lost here)."""
        entries = self._store.download_selection(content_id)
        if entries is None:
            return None
        manifest = self._store.get_manifest(content_id)
        assert manifest is not None  # download_selection() read the entries from it
        return Selection.of_paths(manifest.entries[i].path for i in entries)

    def _widened(self, options: FetchOptions) -> FetchOptions:
        """A fetch of some files of a download that wants some files already (an earlier
        fetch's, the ticks of the terminal app, or what a resumed one wanted) wants both:
        the selection recorded with the download widens, it never silently narrows. A fetch
        of every file wants every file; a stream wants its own file only (its chunks come
        first); a download that wanted every file is narrowed by a fetch of some (as before)."""
        if options.selection.everything or options.sequential:
            return options
        info = self._store.download_info(options.content_id)
        if info is None or info.state == "complete" or info.selection is None:
            return options
        manifest = self._store.get_manifest(options.content_id)
        if manifest is None:
            return options  # fetched first; the selection asked for is what it wants
        picked = set(options.selection.check(manifest))  # a typo is said, before the union
        before = set(self._store.download_selection(options.content_id) or ())
        if before <= picked:
            return options
        paths = [manifest.entries[i].path for i in sorted(picked | before)]
        return dataclasses.replace(options, selection=Selection.of_paths(paths))

    def _sealed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._log("warning", f"could not sync a finished download to disk: {future.exception()}")

    def start_fetch(self, target: str | ContentId | Ticket, dest: Path | None = None, *,
                    publisher: PeerId | None = None, peers: Sequence[Address] = (),
                    timeout: float = 30.0, selection: Selection | None = None,
                    rename: bool = False, download_dir: Path | None = None) -> ContentId:
        """Start a download owned by the node (the terminal app's way); returns its id at once.

        ``selection``: only some files (see :meth:`fetch`; :meth:`select` changes it while
        it runs). ``download_dir``: where it goes without ``dest`` (default: the node's).
        Raises :class:`BadInput` for a malformed target, before anything starts.
        """
        options = self._options(target, dest, publisher, peers, timeout, selection=selection,
                                download_dir=download_dir)
        if options.content_id in self._downloads:
            return options.content_id

        async def run() -> None:
            try:
                await self.fetch(options.content_id, options.dest, publisher=publisher,
                                 peers=options.peers, timeout=timeout, selection=selection,
                                 rename=rename, download_dir=options.download_dir)
            except P2PError as exc:
                # Nobody awaits this fetch: a refusal before any transfer (a destination
                # holding something else, content needing a DHT there is not) is told as
                # the failure event the front end follows, like one during the transfer.
                if not getattr(exc, "_p2p_published", False):
                    self.events.publish(DownloadFailed(options.content_id, str(exc), exc.exit_code))

        self._spawn(run(), f"fetch {options.content_id.short()}")
        return options.content_id

    async def pause(self, content_id: ContentId, *, why: str = "paused") -> bool:
        """Pause a running download (progress kept). True if one was running. ``why`` is what
        :meth:`stopped_why` tells whoever waited for it (``paused``, ``removed``,
        ``cancelled``)."""
        entry = self._downloads.get(content_id)
        if entry is None:
            return False
        self._stopped_why[content_id] = why
        entry[1].cancel()
        with contextlib.suppress(asyncio.CancelledError, P2PError):
            await entry[1]
        return True

    async def cancel(self, content_id: ContentId) -> None:
        """Stop a download and delete its partial data."""
        await self.pause(content_id, why="cancelled")
        self._dht.unprovide(content_id.digest)
        self._store.remove_download(content_id)

    async def remove(self, content_id: ContentId, *, delete: bool) -> RemovedDownload:
        """``p2p rm``: stop a download (running or not) and forget it, deleting its partial
        data or (``delete=False``) leaving it in place, where a later fetch to the same place
        checks it and keeps what verifies. A complete one stops being served; its files stay
        (``delete`` is refused for it: this never deletes a finished download).
        Raises :class:`NotFound` when there is no such download."""
        info = self._store.download_info(content_id)
        if info is None:
            raise NotFound(f"no download of {content_id} here (`p2p ls` lists them)")
        if delete and info.state == "complete":
            raise BadInput(f"{info.name} is complete at {info.dest}; rm --delete only deletes "
                           "partial data. `p2p rm ID` forgets it and stops serving it (the file "
                           "stays); delete the file yourself if you no longer want it")
        await self.pause(content_id, why="removed")
        if info.state == "complete":
            self.unshare(content_id)
        self._dht.unprovide(content_id.digest)
        partial = await asyncio.to_thread(self._store.remove_download, content_id, delete=delete)
        return RemovedDownload(content_id, info.name, info.state, info.dest, partial,
                               deleted=delete and partial is not None)

    async def hold(self, content_id: ContentId) -> str:
        """``p2p pause``: stop a running download, or keep a stopped one from resuming when a
        node starts; its progress is kept either way. Returns its state before.
        Raises :class:`NotFound` when there is no such download, :class:`BadInput` when it
        is complete."""
        info = self._store.download_info(content_id)
        if info is None:
            raise NotFound(f"no download of {content_id} here (`p2p ls` lists them)")
        if info.state in ("complete", "selected"):
            raise BadInput(f"{info.name} is {info.state}: there is nothing to pause")
        if await self.pause(content_id):
            return "active"
        self._store.set_download_state(content_id, "paused", info.error)
        return info.state

    def mark_resumable(self, content_id: ContentId) -> str:
        """``p2p resume`` with no node running: record a stopped download as ``interrupted``,
        for the next long-running node to resume at start. Returns its state before.
        Raises as :meth:`resume` does."""
        info = self._store.download_info(content_id)
        if info is None:
            raise NotFound(f"no download of {content_id} here (`p2p ls` lists them; "
                           "`p2p fetch ID` starts one)")
        if info.state in ("complete", "selected"):
            raise BadInput(f"{info.name} is {info.state} at {info.dest}: there is nothing to resume")
        self._store.set_download_state(content_id, "interrupted", info.error)
        return info.state

    def resume(self, content_id: ContentId, *, timeout: float = 30.0) -> str:
        """``p2p resume``: start a stopped download again (owned by the node, into its recorded
        destination, from the addresses it was given and the DHT). Returns its state before
        (``active`` if it was running already). Raises :class:`NotFound` when there is no such
        download and :class:`BadInput` when it is complete."""
        info = self._store.download_info(content_id)
        if info is None:
            raise NotFound(f"no download of {content_id} here (`p2p ls` lists them; "
                           "`p2p fetch ID` starts one)")
        if content_id in self._downloads:
            return "active"
        if info.state == "complete":
            raise BadInput(f"{info.name} is complete at {info.dest}: there is nothing to resume")
        if info.state == "selected":
            raise BadInput(f"the selected files of {info.name} are in place at {info.dest}; "
                           "fetch it again (without --include) for the rest")
        self.start_fetch(content_id, info.dest, timeout=timeout,
                         selection=self._stored_selection(content_id))
        return info.state

    async def join(self, content_id: ContentId) -> None:
        """Wait until the running download of ``content_id`` (if any) ends, however it ends:
        a second front end asking for it follows it. Cancelling the caller leaves it running."""
        entry = self._downloads.get(content_id)
        if entry is not None:
            await asyncio.wait([entry[1]])

    def stopped_why(self, content_id: ContentId) -> str | None:
        """Why the last run of this download was stopped by a request (``paused``,
        ``removed``, ``cancelled``), or None: it was not (it ended by itself, or its node is
        stopping). A front end that followed the download says so instead of guessing."""
        return self._stopped_why.get(content_id)

    def download(self, content_id: ContentId) -> Download | None:
        """The running download of ``content_id``, if any (for live views)."""
        entry = self._downloads.get(content_id)
        return entry[0] if entry else None

    def downloading(self) -> set[ContentId]:
        """The content ids this node is downloading right now."""
        return set(self._downloads)

    def running_downloads(self) -> list[Download]:
        """Every running download."""
        return [d for d, _ in self._downloads.values()]

    async def _local_copy(self, options: FetchOptions, have: Path, rename: bool) -> Path:
        """Content complete here at ``have``: a copy at the destination asked for (by default
        ``download_dir/NAME``), checked first as a download's is (:meth:`fetch`)."""
        manifest = self._store.get_manifest(options.content_id)
        assert manifest is not None
        manifest.verify(options.content_id, options.publisher)  # --from holds here too
        if options.dest is None:
            dest = options.download_dir / manifest.name
        else:
            dest = options.dest / manifest.name if options.dest.is_dir() else options.dest
        if dest.resolve() == have.resolve():
            return have
        if dest.exists() or dest.is_symlink():
            if await asyncio.to_thread(holds_content, manifest, dest):
                return dest
            dest = self._refuse_or_rename(manifest, dest, rename)
        await asyncio.to_thread(_copy_into_place, have, dest)
        return dest

    async def _settle(self, options: FetchOptions, rename: bool, manifest: Manifest,
                      dest: Path) -> Path:
        """The destination check of :meth:`fetch`, run once the manifest is verified and
        before any chunk is asked for: the path to download into."""
        info = self._store.download_info(options.content_id)
        if info is not None and (info.state == "selected" or (
                info.placed is not None and info.state != "complete")):
            # Files of it are in place there (the folder is the person's): it goes on around
            # them, at its recorded destination (the store's open_download()).
            return dest
        resuming = info is not None and info.state != "complete" and info.partial.exists()
        if resuming:
            assert info is not None
            dest = info.dest  # settled when it began; its partial data is beside it
        if not (dest.exists() or dest.is_symlink()):
            return dest
        if await asyncio.to_thread(holds_content, manifest, dest):
            raise _AlreadyThere(manifest, dest)
        if resuming:
            raise DestinationExists(
                f"{dest} appeared while this download was stopped and holds something else; "
                f"move it away and fetch again (the partial data is kept in {info.partial if info else ''})")
        return self._refuse_or_rename(manifest, dest, rename)

    @staticmethod
    def _refuse_or_rename(manifest: Manifest, dest: Path, rename: bool) -> Path:
        folder = manifest.kind == "dir"
        renamed = free_name(dest, folder=folder)
        if rename:
            return renamed
        raise DestinationExists(
            f"{dest} already exists and is not this content; not overwriting it. Fetch with "
            f"--rename to save it as {renamed.name!r}, or give another place with -o")

    def _adopt(self, manifest: Manifest, path: Path) -> None:
        """The destination already holds the content: record it complete there and serve it
        (a partial download of it, if any, is no longer needed)."""
        self._store.remove_download(manifest.content_id)
        self._store.adopt_download(manifest, path)
        self.events.publish(DownloadCompleted(manifest.content_id, str(path), manifest.total_size,
                                              0.0, {}))

    def _completed_path(self, content_id: ContentId) -> Path | None:
        """Where ``content_id`` is held whole here: a finished download, or a share of ours."""
        if not self._store.is_shared(content_id):
            return None
        info = self._store.download_info(content_id)
        if info is not None and info.state == "complete" and info.dest.exists():
            return info.dest
        share = next((s for s in self._store.shares() if s.content_id == content_id), None)
        return share.root if share is not None and share.root.exists() else None

    def _record_failure(self, content_id: ContentId, exc: P2PError) -> None:
        if self._store.download_info(content_id) is not None and not isinstance(exc, AlreadyDownloading):
            self._store.set_download_state(content_id, "failed", str(exc))
        self.events.publish(DownloadFailed(content_id, str(exc), exc.exit_code))
        exc._p2p_published = True  # type: ignore[attr-defined]  # (start_fetch: told once)

    async def listing(self, target: str | ContentId | Ticket, *, publisher: PeerId | None = None,
                      peers: Sequence[Address] = (), timeout: float = 30.0) -> Manifest:
        """The verified manifest of ``target`` (what ``p2p ls ID`` lists), fetched from the
        peers that have it when it is not held here; nothing else is downloaded or announced.
        Raises as :meth:`fetch` does before a transfer starts (:class:`NotFound`,
        :class:`WrongPublisher`, ...)."""
        options = self._options(target, None, publisher, peers, timeout)
        held = self._store.get_manifest(options.content_id)
        if held is not None:
            held.verify(options.content_id, options.publisher)
            return held
        self._require_dht(options.peers)
        try:
            return await self._new_download(options, listing=True).fetch_manifest()
        except NotFound as exc:
            hint = self._not_found_hint(options)
            if hint is None:
                raise
            raise NotFound(f"{exc}: {hint}") from None

    def _new_download(self, options: FetchOptions, *, listing: bool = False,
                      rename: bool = False) -> Download:
        async def providers(cid: ContentId) -> AsyncIterator[tuple[PeerId | None, Sequence[Address], bool]]:
            for lan in self.lan_peers():
                yield lan.peer, lan.addresses, False  # on this network, not known to hold it
            for info in self._server.connections():
                if info.via is not None:
                    continue  # came through a relay: its socket address is the relay's
                # Peers already talking to us, at the ports their Hello says they accept on,
                # but only on the host we see them at: a Hello is an unsigned claim, and a
                # peer must not make us dial third parties (or resolve names) for it.
                addrs = hello_dial_targets(info.address, info.listen_addrs)
                if addrs:
                    yield info.peer, addrs, False  # connected, not known to hold it
            async for record in self._dht.iter_providers(cid.digest):
                relayed = [RelayedAddress(hint, record.peer_id) for hint in record.relays]
                yield record.peer_id, [*record.addresses, *relayed], True

        own = self._download_limits.get(options.content_id)
        limits: dict[str, Any] = {"up": (self.bandwidth.up,),
                                  "down": (self.bandwidth.down,) + ((own,) if own is not None else ())}

        async def dial(addr: Address, peer: PeerId | None, first: Sequence[Message]) -> Any:
            if isinstance(addr, RelayedAddress):
                # From the listen port: the relay's observation of us is then what the
                # target of a hole punch dials. Not when our reservation on that relay
                # holds the same four-tuple already (its observation is the same one).
                local = None
                if self.config.hole_punching and addr.hint.address not in self._reservations:
                    local = shareable_port(addr.hint.address, self.port)
                conn = await open_circuit(addr.hint.address, addr.hint.relay, addr.target,
                                          self._identity, listen_addrs=self.addresses(),
                                          agent=self.config.agent, first=first,
                                          local_port=local, **limits)
                self._circuit_opened(conn, inbound=False, download=download)
                return conn
            try:
                return await connect(addr[0], addr[1], self._identity, expected_peer=peer,
                                     listen_addrs=self.addresses(), agent=self.config.agent,
                                     first=first, **limits)
            except NetworkError:
                if peer is None:
                    raise
                # The address (from a provider record, a ticket, a Hello) is stale: the
                # peer's own signed peer record says where it is now.
                for fresh in await self._current_addresses(peer):
                    if fresh == addr or isinstance(fresh, RelayedAddress):
                        continue
                    with contextlib.suppress(NetworkError):
                        return await connect(fresh[0], fresh[1], self._identity,
                                             expected_peer=peer, listen_addrs=self.addresses(),
                                             agent=self.config.agent, first=first, **limits)
                raise

        def on_manifest(manifest: Manifest) -> None:
            # Partial seeding: announce as soon as we can serve chunks (a listing serves none).
            if not listing:
                self._spawn(self._provide(manifest.content_id), "provide")

        async def place(manifest: Manifest, dest: Path) -> Path:
            return await self._settle(options, rename, manifest, dest)

        download = Download(options, store=self._store, events=self.events, connect=dial,
                            providers=providers, self_peer=self.peer_id,
                            self_addrs=self.addresses, on_have=self._server.announce_have,
                            on_manifest=on_manifest, pool=self._pool, sync_pool=self._sync_pool,
                            clock=self.config.clock, place=place, on_punch=self._punch_signal)
        return download

    # -- peers and the DHT ---------------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        """Connected peers, inbound and outbound, with byte counts, rates and strikes.

        Several connections to one peer in one direction are added up into one row; a
        peer found by LAN discovery has ``lan`` set.
        """
        lan = {p.peer for p in self.lan_peers()}
        return [dataclasses.replace(info, lan=True) if info.peer in lan else info
                for info in self._rates.apply(self._connections())]

    # -- LAN discovery ----------------------------------------------------------------------

    def _start_lan(self) -> None:
        cfg = self.config
        hosts = [h for h in self._hosts if ipaddress.ip_address(h).version == 4]
        if not cfg.lan_discovery or not hosts or all(
                ipaddress.ip_address(h).is_loopback for h in hosts):
            return
        self._lan = LanDiscovery(self.peer_id, self.port, self.port, hosts=hosts,
                                 on_found=self._lan_found, on_lost=self._lan_lost,
                                 service=cfg.lan_service)
        # In the background: mDNS probing takes a second, and start() must not wait for it.
        self._spawn(self._lan.run(), "LAN discovery")

    @property
    def lan_status(self) -> str:
        """What LAN discovery is doing, in words: ``running``, ``starting``, or why it is off."""
        if self._lan is not None:
            return self._lan.status
        if not self.config.lan_discovery:
            return "off (--no-lan)"
        return "off: listening on loopback only"

    def lan_peers(self) -> list[LanPeer]:
        """The peers LAN discovery found (advertised claims; a dial proves who they are)."""
        return [] if self._lan is None else self._lan.peers()

    def lan_contacts(self) -> set[PeerId]:
        """The LAN peers that proved their key to the DHT and are routing-table contacts."""
        return set(self._lan_contacts)

    async def wait_for_lan_contact(self, peer: PeerId | None = None) -> None:
        """Return once a LAN peer (``peer``, or any) is a DHT contact (tests, benchmarks)."""
        while not (self._lan_contacts if peer is None else peer in self._lan_contacts):
            self._lan_changed.clear()
            await self._lan_changed.wait()

    def _lan_found(self, found: LanPeer) -> None:
        self._log("info", f"LAN peer {found.peer.short()} at "
                          f"{', '.join(format_address(a) for a in found.addresses)}")
        # A first-hop candidate of every running fetch, at once (not at its next round).
        for download, _task in list(self._downloads.values()):
            download.offer(found.peer, found.addresses)
        if not self._tasks.closed:
            self._spawn(self._lan_contact(found), "verify a LAN peer")
        self._lan_changed.set()

    async def _lan_contact(self, found: LanPeer) -> None:
        if await self._dht.add_contact(found.dht_addresses, found.peer):
            self._lan_contacts.add(found.peer)
        self._lan_changed.set()

    def _lan_lost(self, lost: LanPeer) -> None:
        # Its DHT contact stays: a contact that stops answering is evicted the normal way.
        self._log("info", f"LAN peer {lost.peer.short()} left")
        self._lan_changed.set()

    def _not_found_hint(self, options: FetchOptions) -> str | None:
        """Why nobody was found, when the DHT had no way in: no bootstrap, no address given."""
        if self.config.bootstrap or options.peers:
            return None
        lan = self.lan_peers()
        if lan:
            return (f"LAN discovery found {len(lan)} peer(s) and none of them has it; no "
                    "bootstrap is configured")
        if self._dht.summary().contacts:
            return None
        status = self.lan_status
        if status in ("running", "starting"):
            return ("no bootstrap is configured and LAN discovery found no peers on this "
                    "network (multicast may be blocked here, as on Wi-Fi with client "
                    "isolation); give --bootstrap HOST:PORT, a ticket, or --peer HOST:PORT")
        return (f"no bootstrap is configured and LAN discovery is {status}; give --bootstrap "
                "HOST:PORT, a ticket, or --peer HOST:PORT")

    def _connections(self) -> list[PeerInfo]:
        out = [PeerInfo(c.peer, c.address, "in", c.bytes_received, c.bytes_sent, via=c.via,
                        punched=c.punched)
               for c in self._server.connections()]
        for download in self.running_downloads():
            out += [PeerInfo(peer, conn.remote_address, "out", conn.bytes_received,
                             conn.bytes_sent, strikes=strikes, via=getattr(conn, "via", None),
                             punched=bool(getattr(conn, "punched", False)))
                    for peer, conn, strikes in download.connections()]
        return _merge_connections(out)

    async def _sample_rates(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._rates.sample(loop.time(), self._connections())
            await asyncio.sleep(RATE_SAMPLE)

    def _require_dht(self, addresses: Sequence[Address]) -> None:
        """Raise :class:`BootstrapUnreachable` (exit 5, naming each bootstrap node) when what
        is asked can only be done through the DHT and the DHT is out of reach: no address to
        dial (no ticket address, no ``--peer``, none recorded), no peer connected, no DHT
        contact, and none of the bootstrap nodes answered at start. Waiting out the timeout
        could only end in "not found", which would name the wrong cause."""
        failure = self.bootstrap_failure
        if failure is None or addresses or self._connections() or self._dht.summary().contacts:
            return
        raise BootstrapUnreachable(failure.failures)

    def dht_summary(self) -> DHTSummary:
        """Routing-table size per bucket, records held, bootstrap status, our addresses."""
        stats = self._dht.summary()
        return DHTSummary(
            node_id=stats.node_id.hex(),
            buckets=stats.bucket_sizes,
            bootstrap=tuple(self.config.bootstrap),
            bootstrap_error=self.bootstrap_error,
            addresses=tuple(self.addresses()),
            records=dict(stats.records),
            uptime=stats.uptime,
            restored_contacts=stats.restored_contacts,
            saved_contacts=self._saved_contacts,
            stats=stats.to_json(),
        )

    def handle_timers(self) -> None:
        """Run every deadline that is due on :attr:`NodeConfig.clock` (after a test moved it)."""
        self._server.handle_timers()
        for download, _task in list(self._downloads.values()):
            download.handle_timer()

    @property
    def listening(self) -> bool:
        """True while the node's sockets are open (what a health check asks)."""
        return self._started and not self._closed and self._dht.listening and bool(self._server.addresses)

    async def count_providers(self, content_id: ContentId) -> int:
        """How many distinct peers the DHT names as providers of ``content_id`` (a lookup)."""
        records = await self._dht.find_providers(content_id.digest)
        return len({r.peer_id for r in records})

    async def publish(self, name: str, content_id: ContentId) -> ChannelRecord:
        """Point our channel ``name`` at ``content_id`` (a signed, sequenced DHT record)."""
        self._require_dht(())
        return await self._dht.put_channel(self._identity, name, content_id.digest)

    async def resolve(self, publisher: PeerId, name: str) -> ChannelRecord:
        """The content id ``publisher`` currently names ``name``. Raises :class:`NotFound`."""
        self._require_dht(())
        return await self._dht.get_channel(publisher, name)

    # -- reachability (docs/PROTOCOL.md, Reachability) ----------------------------------------

    def _start_reachability(self) -> None:
        """Serve dial-backs; an ``auto`` node checks its own reachability now and keeps
        re-checking (an owned task)."""
        observer = self.config.dht_observer
        self._dht.set_dialer(netcheck.dialer(self._identity, observer[0] if observer else None,
                                             self.config.agent), netcheck.DIAL_SOURCES)
        if self.config.dht_mode == "auto" and self.config.bootstrap:
            self._spawn(self._keep_checking(), "reachability checks")
        # Not known to be reachable yet: reserve at once, in parallel with the check (a
        # share's ticket must name a way in; a verdict of "public" lets them go again).
        self._update_reservations()

    async def netcheck(self) -> Reachability:
        """Check now whether others can reach this node (dial-backs by the bootstrap nodes and
        routing-table contacts), remember the verdict and, for an ``auto`` node, run the DHT
        as a server only when reachable. Never raises for the network's failures."""
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:
            servers = list(self.config.bootstrap) + self._dht.server_addresses(netcheck.MAX_SERVERS)
            servers = [s for s in servers if s not in self.listen_addresses()]
            verdict = await netcheck.check(self._dht, self.port, netcheck.local_hosts(
                self._hosts, servers), servers, self._dialbacks)
            self.reachability = verdict
            if self.config.dht_mode == "auto":
                await self._dht.set_client_mode(not verdict.reachable)
            self._update_reservations()
            return verdict

    async def _keep_checking(self) -> None:
        """Check at start, then every ``reachability_interval`` or when the DHT's observed
        address changes, whichever comes first."""
        seen = self._dht.reachable_addresses()
        waited = 0.0
        step = min(60.0, self.config.reachability_interval)
        while True:
            if waited == 0.0:
                verdict = await self.netcheck()
                self._log("info", f"reachability: {verdict.reachability}")
            await asyncio.sleep(step)
            waited += step
            now = self._dht.reachable_addresses()
            if now != seen or waited >= self.config.reachability_interval:
                seen, waited = now, 0.0

    # -- bandwidth limits -----------------------------------------------------------------------

    def limits(self) -> dict[str, Any]:
        """The limits in force (``p2p limit``): the node's, in bytes per second (0: none) with
        the bytes moved under them, and each running download's own."""
        return {"up": self.bandwidth.up.to_json(), "down": self.bandwidth.down.to_json(),
                "downloads": {str(cid): throttle.to_json()
                              for cid, throttle in self._download_limits.items()}}

    def set_limits(self, *, up: float | None = None, down: float | None = None) -> None:
        """Change the node's upload and/or download limit now (0: none); every connection,
        open or to come, counts against the new rate at once."""
        if up is not None:
            self.bandwidth.up.set_rate(up)
        if down is not None:
            self.bandwidth.down.set_rate(down)

    def set_download_limit(self, content_id: ContentId, rate: float) -> None:
        """Change a running download's own limit (0: only the node's applies). Raises
        :class:`NotFound` when this node does not run that download."""
        throttle = self._download_limits.get(content_id)
        if throttle is None:
            raise NotFound(f"{content_id} is not being downloaded by this node")
        throttle.set_rate(rate)
        self._store.set_download_rate(content_id, rate)  # kept when it resumes

    # -- server events ------------------------------------------------------------------------

    def _on_server_event(self, event: Any) -> None:
        match event:
            case wire_server.PeerConnected(peer=peer, address=address, via=via, connection=conn):
                if via is None and not (conn is not None and conn.punched):
                    # Neither a circuit nor a punched connection proves reachability.
                    self._dialbacks.inbound(peer, address)
                elif conn is not None:
                    self._circuit_opened(conn, inbound=True)
                self.events.publish(PeerConnected(peer, address, inbound=True))
            case wire_server.PeerDisconnected(peer=peer, reason=reason) if peer is not None:
                self.events.publish(PeerDropped(peer, reason))
            case wire_server.Withdrawn(content_id=cid, reason=reason):
                self._log("warning", reason)
                self.events.publish(ShareWithdrawn(ContentId(cid), reason))
            case wire_server.Uploaded(peer=peer, content_id=cid, index=index, nbytes=nbytes):
                self.events.publish(ChunkUploaded(peer, cid, index, nbytes))
            case _:
                pass


def _starts_as_client(config: NodeConfig) -> bool:
    """Whether the DHT starts in client mode: ``client``, or ``auto`` with a bootstrap (until
    a check proves it reachable; a node with no bootstrap is the first of its network)."""
    if config.dht_mode not in ("server", "client", "auto"):
        raise BadInput(f"dht_mode must be server, client or auto, not {config.dht_mode!r}")
    return config.dht_mode == "client" or (config.dht_mode == "auto" and bool(config.bootstrap))


def _parse_target(target: str | ContentId | Ticket) -> tuple[ContentId, Ticket | None]:
    """The content id a fetch target names, and its ticket if it is one."""
    if isinstance(target, Ticket):
        return target.content_id, target
    if isinstance(target, ContentId):
        return target, None
    return parse_id_or_ticket(target)


def _streamed_entry(manifest: Manifest, file: str | None) -> tuple[int, int]:
    """(entry, its first global chunk) of the file a stream writes: the one file of a
    single-file manifest, or ``file`` of a folder; else BadInput."""
    if file is None:
        if manifest.kind != "file" or len(manifest.entries) != 1:
            raise BadInput(f"{manifest.name} is a folder of {len(manifest.entries)} files; only a "
                           "single file can be streamed (pick one with --file PATH)")
        return 0, 0
    first = 0
    for index, entry in enumerate(manifest.entries):
        if entry.path == file:
            return index, first
        first += entry.info.chunk_count
    raise BadInput(f"{manifest.name} has no file {file!r} (see `p2p ls ID` for its paths)")


def _read_verified(path: Path, info: FileInfo, index: int) -> bytes:
    """Chunk ``index`` of the finished file at ``path``, checked against its hash."""
    with open(path, "rb") as f:
        f.seek(info.chunk_offset(index))
        data = f.read(info.chunk_length(index))
    if not info.verify_chunk(index, data):
        raise ContentChanged(f"{path} changed while it was being streamed")
    return data


def hello_dial_targets(seen_at: Address, claimed: Sequence[tuple[str, int]]) -> list[Address]:
    """What of an inbound peer's claimed listen addresses we dial: those on the host the
    connection came from (the one address it proved, by talking to us), at most
    :data:`MAX_HELLO_DIALS`; never a host name, never another host."""
    host = seen_at[0]
    out: list[Address] = []
    for claimed_host, port in claimed:
        try:
            literal = normalize_host(claimed_host)
        except BadInput:  # a host name: never resolved on a peer's word
            continue
        if literal == host and (literal, port) not in out:
            out.append((literal, port))
        if len(out) >= MAX_HELLO_DIALS:
            break
    return out


class _PeerRates:
    """Per-connection transfer rates from byte counts sampled every :data:`RATE_SAMPLE` s."""

    def __init__(self) -> None:
        self._last: dict[tuple[PeerId, str], tuple[float, int, int]] = {}
        self._rates: dict[tuple[PeerId, str], tuple[float, float]] = {}

    def sample(self, now: float, infos: Sequence[PeerInfo]) -> None:
        """Take a sample at ``now``: rates are byte deltas since the previous sample."""
        seen: dict[tuple[PeerId, str], tuple[float, int, int]] = {}
        rates: dict[tuple[PeerId, str], tuple[float, float]] = {}
        for info in infos:
            key = (info.peer, info.direction)
            seen[key] = (now, info.bytes_in, info.bytes_out)
            before = self._last.get(key)
            if before is not None and now > before[0]:
                dt = now - before[0]
                rates[key] = (max(0.0, (info.bytes_in - before[1]) / dt),
                              max(0.0, (info.bytes_out - before[2]) / dt))
            elif key in self._rates:
                rates[key] = self._rates[key]
        self._last, self._rates = seen, rates

    def apply(self, infos: Sequence[PeerInfo]) -> list[PeerInfo]:
        """``infos`` with the rates of the last sample filled in."""
        return [dataclasses.replace(i, rate_in=r[0], rate_out=r[1])
                if (r := self._rates.get((i.peer, i.direction))) else i for i in infos]


def _merge_connections(infos: Sequence[PeerInfo]) -> list[PeerInfo]:
    """One row per (peer, direction): byte counts added up, the worst strike count kept, the
    most direct path shown (a circuit and the punched connection replacing it: punched)."""
    merged: dict[tuple[PeerId, str], PeerInfo] = {}
    for info in infos:
        key = (info.peer, info.direction)
        prev = merged.get(key)
        best = info if prev is None or prev.via is not None else prev
        merged[key] = info if prev is None else dataclasses.replace(
            prev, bytes_in=prev.bytes_in + info.bytes_in, bytes_out=prev.bytes_out + info.bytes_out,
            strikes=max(prev.strikes, info.strikes), address=best.address, via=best.via,
            punched=best.punched)
    return list(merged.values())


def _hosts(host: str | tuple[str, ...]) -> tuple[str, ...]:
    return (host,) if isinstance(host, str) else tuple(host)


def _bindable(hosts: tuple[str, ...]) -> tuple[str, ...]:
    """``hosts`` without the families this machine cannot bind (no IPv6 on some hosts and
    containers), unless that would leave nothing: then binding fails with its own reason."""
    if len(hosts) < 2:
        return hosts
    usable = tuple(h for h in hosts if _family_usable(h))
    return usable or hosts


def _family_usable(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    except OSError:
        return False
    return True


def _saved_contacts(path: Path) -> int:
    """Contacts in a saved routing table (0 if there is none or it is unreadable: the DHT
    then logs why and starts afresh)."""
    try:
        return len(load_routing_table(path)[1])
    except (OSError, P2PError):
        return 0


def _placed_whole(dest: Path, manifest: Manifest, entries: Iterable[int]) -> bool:
    """Whether each of ``entries`` is still a regular file of its size under ``dest``, through
    no link: the folder is the person's since the files were put there, and one deleted or cut
    short must be fetched again, not reported in place."""
    folders: set[str] = set()
    try:
        for i in entries:
            entry = manifest.entries[i]
            parts = entry.path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    if not stat.S_ISDIR(os.lstat(dest / folder).st_mode):
                        return False
                    folders.add(folder)
            found = os.lstat(dest / entry.path)
            if not stat.S_ISREG(found.st_mode) or found.st_size != entry.info.size:
                return False
    except OSError:
        return False
    return True


def _copy_into_place(source: Path, dest: Path) -> None:
    """Copy a verified local file or folder to ``dest`` through a partial name, then rename."""
    partial = dest.with_name(dest.name + ".p2p-partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, partial, symlinks=False)
    else:
        shutil.copy2(source, partial)
    os.rename(partial, dest)


LOCK_TRIES = 5
"""Attempts at the node lock: a command that looks whether a node runs holds it shared for
a moment (see :meth:`Node.running_holder`), which must not make a starting node give up."""


def _lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's node lock; returns its descriptor (held until closed).
    Raises :class:`StateDirLocked` naming the running node when another holds it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / NODE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot use the state directory {state_dir}: {exc.strerror}") from None
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == LOCK_TRIES - 1:
                holder = _holder_text(fd)
                os.close(fd)
                raise StateDirLocked(
                    f"a node of the state directory {state_dir} is already running ({holder}); "
                    "while it runs, p2p commands (share, fetch, ls, rm, ...) go through it. Stop "
                    "it to start another one here, or give this one another --state-dir") from None
            threading.Event().wait(0.01 * (attempt + 1))  # a reader's shared lock, held briefly
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{_program()}\n".encode(), 0)
    return fd


def _holder_text(fd: int) -> str:
    """``pid N, p2p serve`` from a held lock file (what its holder wrote there)."""
    try:
        lines = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
    except OSError:
        lines = []
    if not lines:
        return "its process is starting"
    return f"pid {lines[0]}" + (f", {lines[1]}" if len(lines) > 1 and lines[1] else "")


_COMMAND_WORD = re.compile(r"[a-z][a-z-]*")


def _program() -> str:
    """This process as a person would name it: ``p2p serve``, ``p2p-tui``."""
    argv = sys.argv
    first = Path(argv[0]).name if argv else "python"
    if first == "__main__.py":
        first = {"cli": "p2p", "tui": "p2p-tui"}.get(Path(argv[0]).parent.name, Path(argv[0]).parent.name)
    # the command is the first plain word: an option's value before it (`--state-dir DIR`,
    # `--listen HOST:PORT`) is a path or an address, not a word
    command = next((a for a in argv[1:] if _COMMAND_WORD.fullmatch(a)), "")
    return f"{first} {command}".strip() if first == "p2p" else first


def holds_content(manifest: Manifest, path: Path) -> bool:
    """Whether ``path`` holds exactly the content of ``manifest``: every file there, regular
    (no link followed), of its size, every chunk matching its hash. Files a folder holds
    besides the manifest's are left alone and do not count."""
    if path.is_symlink():
        return False
    if manifest.kind == "file":
        return len(manifest.entries) == 1 and _file_holds(path, manifest.entries[0].info)
    if not path.is_dir():
        return False
    for entry in manifest.entries:
        target = path
        for part in entry.path.split("/"):
            target = target / part
            if target.is_symlink():
                return False
        if not _file_holds(target, entry.info):
            return False
    return True


def _file_holds(path: Path, info: FileInfo) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != info.size:
            return False
        for index in range(info.chunk_count):
            data = os.pread(fd, info.chunk_length(index), info.chunk_offset(index))
            if not info.verify_chunk(index, data):
                return False
        return True
    finally:
        os.close(fd)


def free_name(path: Path, *, folder: bool = False) -> Path:
    """The first of ``NAME (1).EXT``, ``NAME (2).EXT``, ... beside ``path`` that does not exist
    (a ``folder`` keeps its whole name: ``NAME (1)``)."""
    suffix = "" if folder else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    for n in range(1, MAX_RENAMES + 1):
        candidate = path.with_name(f"{stem} ({n}){suffix}")
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate
    raise DestinationExists(f"{path} and {MAX_RENAMES} renamed copies of it exist already; "
                            "give another place with -o")
