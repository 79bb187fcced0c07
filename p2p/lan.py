"""LAN discovery: peers on one network find each other with mDNS / DNS-SD, no configuration.

Each node advertises one DNS-SD service (``_p2p._tcp.local.``) whose SRV port is its TCP
(chunk) port and whose TXT record holds three short keys (docs/PROTOCOL.md, LAN discovery):

    v=1          protocol version of the advertisement
    id=p2p1...   the peer id (its Ed25519 public key, as ``p2p id`` prints it)
    dht=7473     its UDP (DHT) port

and browses for the others. An advertisement is an unauthenticated claim: anyone on the
network can send one naming any peer id and any address. So nothing is trusted from it but
"try this address": the DHT admits the peer only once it answered an ``identify`` with a
signature of that key, and a download dials it with the expected peer id, so the Noise
handshake drops an impostor. What an attacker can still do is send many advertisements;
:class:`Admission` bounds how many LAN peers are kept and how fast new ones are accepted,
the resolve queue is bounded, and an advertised address must lie on one of this host's own
networks (a forged advertisement cannot make us send datagrams anywhere else).

:func:`parse_advert` and :class:`Admission` are pure (no I/O, the time passed in); the one
I/O shell is :class:`LanDiscovery`, built on ``zeroconf``'s asyncio API. A host without
multicast (or with no interface but loopback) gets a :attr:`LanDiscovery.status` that says
so, never an error: discovery is a bonus, the node works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .address import Address
from .errors import DecodeError, RemoteProtocolError
from .identity import PeerId

log = logging.getLogger(__name__)

__all__ = ["LAN_SERVICE", "LanDiscovery", "LanPeer", "parse_advert"]

LAN_SERVICE = "_p2p._tcp.local."
"""The DNS-SD service type every node advertises and browses."""
LAN_VERSION = 1
"""The advertisement's ``v``: one of another version is ignored (it may mean other keys)."""
MAX_TXT_BYTES = 256
"""Largest TXT record read: ours is about 90 bytes; a bigger one is not ours (or hostile)."""
MAX_LAN_PEERS = 64
"""LAN peers kept at once: more than a home or office segment runs, few enough that a flood
of advertisements costs a bounded table."""
ACCEPT_RATE = 2.0
"""New LAN peers accepted per second, after the burst: a flood is admitted slowly."""
ACCEPT_BURST = 16
"""New LAN peers accepted at once (a network of nodes all starting together)."""
MAX_PENDING = 32
"""Advertisements waiting to be resolved; more are dropped (a flood of names)."""
MAX_ADDRESSES = 4
"""Addresses kept from one advertisement (a host with a few interfaces)."""
RESOLVE_TIMEOUT = 3.0
"""Seconds to wait for an advertisement's SRV, TXT and A records."""
RECORD_TTL = 120
"""Seconds our records live in others' caches: a peer that vanished without a goodbye is
dropped within this (zeroconf re-queries before it runs out for peers still there)."""
INTERFACE_CHECK = 30.0
"""Seconds between checks of this host's addresses: a changed one is re-advertised."""


class BadAdvert(RemoteProtocolError):
    """An advertisement on the network that is not a valid one of ours (ignored)."""


@dataclass(frozen=True)
class LanPeer:
    """A peer that a LAN advertisement names (a claim, until a handshake proves it)."""

    peer: PeerId
    addresses: tuple[Address, ...]
    """Its TCP addresses (chunk server), on this host's networks."""
    dht_port: int
    """Its UDP (DHT) port, at the same hosts."""
    name: str = ""
    """The DNS-SD instance name it advertised under."""

    @property
    def dht_addresses(self) -> list[Address]:
        """Where its DHT answers (each address's host, the DHT port)."""
        return [(host, self.dht_port) for host, _ in self.addresses]

    def to_json(self) -> dict[str, Any]:
        """One row of ``p2p peers --json``'s ``lan`` list."""
        return {"peer_id": str(self.peer), "addresses": [f"{h}:{p}" for h, p in self.addresses],
                "dht_port": self.dht_port}


def advert_txt(peer: PeerId, dht_port: int) -> dict[str, str]:
    """The TXT keys of our advertisement."""
    return {"v": str(LAN_VERSION), "id": str(peer), "dht": str(dht_port)}


def _port(raw: object, what: str) -> int:
    if not isinstance(raw, bytes) or not raw.isdigit() or len(raw) > 5:
        raise BadAdvert(f"{what}: not a port number")
    port = int(raw)
    if not 0 < port < 65536:
        raise BadAdvert(f"{what}: {port} is not a port")
    return port


def parse_advert(name: str, properties: Mapping[Any, Any], text_len: int,
                 addresses: Sequence[str], port: object, *,
                 networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
                 own: PeerId | None = None) -> LanPeer:
    """The peer an advertisement names, checked; raises :class:`BadAdvert` for anything
    that is not a valid advertisement of ours (every field is untrusted input).

    ``properties`` is its TXT record as keys and values (bytes; a key with no ``=`` has
    None), ``text_len`` the record's size, ``addresses`` its A/AAAA records as text,
    ``port`` its SRV port. Only addresses on one of ``networks`` (this host's own) are
    kept: a forged advertisement must not make us send anything off the LAN. ``own``:
    our peer id (our own advertisement is refused too).
    """
    if not isinstance(text_len, int) or text_len > MAX_TXT_BYTES:
        raise BadAdvert(f"TXT record larger than {MAX_TXT_BYTES} bytes")
    if len(properties) > 16:
        raise BadAdvert("too many TXT keys")
    version = properties.get(b"v")
    if version != str(LAN_VERSION).encode():
        raise BadAdvert(f"advertisement version {version!r}, not {LAN_VERSION}")
    raw_id = properties.get(b"id")
    if not isinstance(raw_id, bytes) or len(raw_id) > 100:
        raise BadAdvert("no peer id")
    try:
        peer = PeerId.parse(raw_id.decode("ascii"))
    except (UnicodeDecodeError, ValueError, DecodeError) as exc:
        raise BadAdvert(f"bad peer id: {exc}") from None
    if own is not None and peer == own:
        raise BadAdvert("our own advertisement")
    dht_port = _port(properties.get(b"dht"), "dht")
    tcp_port = _port(str(port).encode() if isinstance(port, int) and not isinstance(port, bool)
                     else None, "SRV port")
    kept: list[Address] = []
    for text in list(addresses)[:16]:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
            continue
        if not any(ip in net for net in networks if net.version == ip.version):
            continue  # not on any network of ours: not a LAN peer
        addr = (str(ip), tcp_port)
        if addr not in kept:
            kept.append(addr)
        if len(kept) >= MAX_ADDRESSES:
            break
    if not kept:
        raise BadAdvert("no address on this host's networks")
    return LanPeer(peer, tuple(kept), dht_port, name[:100])


@dataclass
class Admission:
    """How many LAN peers are kept and how fast new ones come in (pure: ``now`` passed in).

    A known peer may always update its addresses; a new one needs room
    (:data:`MAX_LAN_PEERS`) and a token of a bucket that refills at :data:`ACCEPT_RATE`
    per second up to :data:`ACCEPT_BURST`.
    """

    max_peers: int = MAX_LAN_PEERS
    rate: float = ACCEPT_RATE
    burst: float = ACCEPT_BURST
    peers: dict[PeerId, LanPeer] = field(default_factory=dict)
    refused: int = 0
    """New peers turned away (no room, or too fast)."""
    _tokens: float | None = None
    _last: float = 0.0

    def admit(self, found: LanPeer, now: float) -> bool:
        """Keep ``found`` (new or updated); False when it is refused."""
        if found.peer in self.peers:
            self.peers[found.peer] = found
            return True
        if self._tokens is None:
            self._tokens = self.burst
        else:
            self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if len(self.peers) >= self.max_peers or self._tokens < 1.0:
            self.refused += 1
            return False
        self._tokens -= 1.0
        self.peers[found.peer] = found
        return True

    def forget_name(self, name: str) -> LanPeer | None:
        """Drop the peer advertised under ``name`` (its service went away); returns it."""
        for peer, known in self.peers.items():
            if known.name == name:
                del self.peers[peer]
                return known
        return None


def local_networks(hosts: Sequence[str] = ()) -> tuple[list[str], list[ipaddress.IPv4Network]]:
    """This host's IPv4 addresses to advertise (not loopback) and the networks they are on.

    ``hosts``: the addresses the node listens on; one that is not unspecified limits the
    advertised addresses to itself (a node bound to one interface is reachable there only).
    """
    import ifaddr  # zeroconf's own dependency

    bound = {h for h in hosts if h not in ("0.0.0.0", "::")}
    addrs: list[str] = []
    nets: list[ipaddress.IPv4Network] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not ip.is_IPv4 or not isinstance(ip.ip, str):
                continue
            addr = ipaddress.IPv4Address(ip.ip)
            if addr.is_loopback or (bound and ip.ip not in bound):
                continue
            addrs.append(ip.ip)
            nets.append(ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False))
    return sorted(set(addrs)), nets


Found = Callable[[LanPeer], None]
Lost = Callable[[LanPeer], None]


class LanDiscovery:
    """Advertise this node and browse for others on the LAN (run :meth:`run` as a task).

    ``on_found`` is called with each accepted peer (new, or its addresses changed),
    ``on_lost`` when its service goes away. Never raises for the network's failures: a
    host without multicast ends :meth:`run` with :attr:`status` saying why.
    """

    def __init__(self, peer: PeerId, port: int, dht_port: int, *, hosts: Sequence[str] = (),
                 on_found: Found, on_lost: Lost, service: str = LAN_SERVICE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._peer = peer
        self._port = port
        self._dht_port = dht_port
        self._hosts = tuple(hosts)
        self._on_found = on_found
        self._on_lost = on_lost
        self._service = service
        self._clock = clock
        self.admission = Admission()
        self.status = "starting"
        """``starting``, ``running``, or why discovery is not running (shown to a person)."""
        self.advertised: list[str] = []
        """The addresses we advertise."""
        self.dropped = 0
        """Advertisements ignored: malformed, not ours, or over the pending bound."""
        self._pending: asyncio.Queue[tuple[str, bool]] = asyncio.Queue(MAX_PENDING)
        self._networks: list[ipaddress.IPv4Network] = []
        self.ready = asyncio.Event()
        """Set once the advertisement is registered (or discovery gave up); browsing (status
        ``running``) begins before, as registering waits out the name probe."""

    def peers(self) -> list[LanPeer]:
        """The LAN peers kept now."""
        return list(self.admission.peers.values())

    async def run(self) -> None:
        """Advertise, browse and keep both current until cancelled."""
        from zeroconf import Error as ZeroconfError
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        addrs, self._networks = await asyncio.to_thread(local_networks, self._hosts)
        if not addrs:
            self.status = "off: no network interface but loopback"
            self.ready.set()
            return
        try:
            azc = AsyncZeroconf(interfaces=addrs, ip_version=IPVersion.V4Only)
        except (OSError, ZeroconfError) as exc:
            self.status = f"off: cannot use multicast here ({exc})"
            self.ready.set()
            return
        browser: AsyncServiceBrowser | None = None
        info: AsyncServiceInfo | None = None
        try:
            def changed(zeroconf: Any, service_type: str, name: str,
                        state_change: ServiceStateChange) -> None:
                gone = state_change is ServiceStateChange.Removed
                try:
                    self._pending.put_nowait((name, gone))
                except asyncio.QueueFull:
                    self.dropped += 1

            # Browse first: registering waits out the name probe (about a second and a
            # half), and finding the others need not wait for it.
            browser = AsyncServiceBrowser(azc.zeroconf, self._service, handlers=[changed])
            self.status = "running"
            async with asyncio.TaskGroup() as group:
                group.create_task(self._resolve(azc, AsyncServiceInfo))
                info = self._info(AsyncServiceInfo, addrs)
                await (await azc.async_register_service(info, allow_name_change=True))
                self.advertised = addrs
                self.ready.set()
                group.create_task(self._watch_interfaces(azc, info, AsyncServiceInfo))
        except (OSError, ZeroconfError) as exc:
            self.status = f"off: multicast failed ({exc})"
            log.info("LAN discovery stopped: %s", exc)
        finally:
            self.ready.set()
            with contextlib.suppress(Exception):  # the goodbye is best effort
                if browser is not None:
                    await browser.async_cancel()
                if info is not None and self.advertised:
                    async with asyncio.timeout(1.0):
                        await (await azc.async_unregister_service(info))
            await azc.async_close()

    def _info(self, info_type: Any, addrs: Sequence[str], name: str | None = None) -> Any:
        instance = f"p2p-{self._peer.short().lower()}"
        return info_type(self._service, name or f"{instance}.{self._service}", port=self._port,
                         properties=advert_txt(self._peer, self._dht_port),
                         server=f"{instance}.local.", parsed_addresses=list(addrs),
                         host_ttl=RECORD_TTL, other_ttl=RECORD_TTL)

    async def _resolve(self, azc: Any, info_type: Any) -> None:
        from zeroconf import IPVersion

        while True:
            name, gone = await self._pending.get()
            if gone:
                lost = self.admission.forget_name(name)
                if lost is not None:
                    self._on_lost(lost)
                continue
            info = info_type(self._service, name)
            if not await info.async_request(azc.zeroconf, int(RESOLVE_TIMEOUT * 1000)):
                self.dropped += 1
                continue
            try:
                found = parse_advert(name, info.properties, len(info.text or b""),
                                     info.parsed_addresses(IPVersion.V4Only), info.port,
                                     networks=self._networks, own=self._peer)
            except BadAdvert as exc:
                if "own advertisement" not in str(exc):
                    self.dropped += 1
                    log.debug("LAN advertisement %r ignored: %s", name[:80], exc)
                continue
            before = self.admission.peers.get(found.peer)
            if before == found:
                continue
            if self.admission.admit(found, self._clock()):
                self._on_found(found)

    async def _watch_interfaces(self, azc: Any, info: Any, info_type: Any) -> None:
        """Re-advertise when this host's addresses change (a new DHCP lease, Wi-Fi roaming)."""
        while True:
            await asyncio.sleep(INTERFACE_CHECK)
            addrs, networks = await asyncio.to_thread(local_networks, self._hosts)
            if addrs and addrs != self.advertised:
                self._networks = networks
                await (await azc.async_update_service(self._info(info_type, addrs, info.name)))
                self.advertised = addrs
