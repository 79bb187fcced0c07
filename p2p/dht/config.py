"""DHT configuration: data passed in, built by the CLI from flags and by tests from port 0."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..address import normalize_host
from ..errors import BadInput
from .records import REANNOUNCE_INTERVAL

Clock = Callable[[], float]
"""A function returning the time in seconds (a float), called with no arguments."""


@dataclass(frozen=True)
class DHTConfig:
    """How a :class:`p2p.dht.DHT` binds, whom it trusts first and how hard it defends itself."""

    host: str | tuple[str, ...] = "127.0.0.1"
    """UDP bind address (a literal IP), or one address per family for dual stack, such as
    ``("0.0.0.0", "::")`` or ``("127.0.0.1", "::1")``: one socket per family, all on ``port``.
    An IPv6 socket is always IPv6-only (as asyncio's TCP servers are); list an IPv4 address
    too to serve both families. The node's TCP server listens on the same port by design."""
    port: int = 0
    """UDP bind port, the same for every family; 0 lets the system choose (read it back from
    ``DHT.port``). A node passes the port its TCP server got."""
    bootstrap: tuple[tuple[str, int], ...] = ()
    """First contacts, joined by ``DHT.open``. Hostnames are resolved here (and only here)."""
    ksize: int = 20
    """Kademlia k: bucket size, replication factor and lookup width."""
    alpha: int = 3
    """Requests kept in flight during a lookup."""
    rpc_timeout: float = 1.0
    """Seconds to wait for one answer. The library's 5 s stalls lookups behind dead peers."""
    max_contacts_per_ip: int | None = 2
    """Routing-table contacts allowed per IPv4 address or IPv6 /64 (key grinding from one
    host); None = no cap."""
    rate_limit_per_ip: float | None = 200.0
    """Inbound datagrams per second accepted from one IPv4 address or IPv6 /64 (token
    bucket); None = unlimited."""
    rate_limit_burst: float = 400.0
    """Token bucket depth: datagrams one IP may send in a burst before the rate applies."""
    announce_addrs: tuple[tuple[str, int], ...] = ()
    """Addresses to put in our records instead of the address others see us at."""
    state_path: Path | None = None
    """Where the routing table is saved as JSON (and restored from on open)."""
    save_interval: float = 300.0
    """Seconds between routing-table saves while running (a crash loses at most this much)."""
    refresh_interval: float = 900.0
    """Seconds after which a bucket with no lookup is refreshed by a lookup of a random id in it."""
    reannounce_interval: float = REANNOUNCE_INTERVAL
    """Seconds between re-announcements of the content registered with ``DHT.provide``
    (and of the peer record published with ``DHT.announce_peer``)."""
    lookup_stall: float = 0.25
    """Seconds after which an unanswered lookup request stops holding the walk open (it may
    still answer until ``rpc_timeout``). Above a typical WAN round trip, far below a timeout."""
    max_outstanding: int = 1024
    """Requests that may wait for an answer at once; more are refused with ``Overloaded``."""
    max_pending_verifications: int = 64
    """Identity checks of new contacts running at once; newcomers beyond that are ignored."""
    client_mode: bool = False
    """Run as a DHT client: query and announce, but mark every datagram so that no node adds
    us to its routing table (a node not known to be reachable; see docs/PROTOCOL.md,
    Reachability). :meth:`DHT.set_client_mode` changes it while running."""
    observer: tuple[str, int] | None = None
    """A second UDP endpoint (a literal IP and a port, another address of this host or
    another port) that answers ``identify`` only, so that a peer asking both learns its NAT's
    mapping behaviour from a single server (a network with one bootstrap)."""
    wall_clock: Clock = time.time
    """Unix time in seconds: signs records' expiry and checks the expiry of records received
    and held. Tests pass a fake clock to expire records without waiting."""
    monotonic_clock: Clock = time.monotonic
    """Seconds on a clock that never jumps: request timeouts, lookup stalls and round trips,
    rate limits, the periodic work's deadlines, uptime. It must advance at the pace of the
    event loop's clock (which sleeps for the DHT); tests pass a fake one and drive the
    deadlines by hand (``DHT.handle_timer``, ``P2PProtocol.handle_timer``)."""

    def __post_init__(self) -> None:
        bind_hosts(self.host)
        if self.observer is not None:
            try:
                normalize_host(self.observer[0])
            except BadInput:
                raise BadInput("observer: a literal IP address and a port") from None
            if not 0 <= self.observer[1] <= 65535:
                raise BadInput("observer port must be in 0..65535")
        if not 1 <= self.ksize <= 32:
            raise BadInput("ksize must be in 1..32 (a reply of k contacts must fit a datagram)")
        if not 1 <= self.alpha <= self.ksize:
            raise BadInput("alpha must be in 1..ksize")
        if not 0 <= self.port <= 65535:
            raise BadInput("port must be in 0..65535")
        if not (0 < self.rpc_timeout <= 30 and math.isfinite(self.rpc_timeout)):
            raise BadInput("rpc_timeout must be in (0, 30] seconds")
        if not 0 < self.lookup_stall <= self.rpc_timeout:
            raise BadInput("lookup_stall must be in (0, rpc_timeout]")
        if self.max_contacts_per_ip is not None and self.max_contacts_per_ip < 1:
            raise BadInput("max_contacts_per_ip must be >= 1 or None")
        if self.rate_limit_per_ip is not None and not self.rate_limit_per_ip > 0:
            raise BadInput("rate_limit_per_ip must be > 0 or None")
        if self.rate_limit_burst < 1:
            raise BadInput("rate_limit_burst must be >= 1")
        for name in ("save_interval", "refresh_interval", "reannounce_interval"):
            if not getattr(self, name) > 0:
                raise BadInput(f"{name} must be > 0")
        if self.max_outstanding < 1 or self.max_pending_verifications < 1:
            raise BadInput("max_outstanding and max_pending_verifications must be >= 1")

    @property
    def hosts(self) -> tuple[str, ...]:
        """The bind addresses, normalised, in the order given (one or two, one per family)."""
        return bind_hosts(self.host)


def bind_hosts(host: str | tuple[str, ...]) -> tuple[str, ...]:
    """``DHTConfig.host`` as a tuple of normalised literal IPs, at most one per family.

    Raises :class:`BadInput` for a host name, two addresses of one family, or none.
    """
    given = (host,) if isinstance(host, str) else tuple(host)
    hosts = []
    for one in given:
        try:
            hosts.append(normalize_host(one))
        except BadInput:
            raise BadInput(f"DHT host must be a literal IP address, not {one!r}") from None
    versions = [ipaddress.ip_address(h).version for h in hosts]
    if not hosts or len(set(versions)) != len(versions):
        raise BadInput("DHT host: one or two addresses, at most one per family (IPv4, IPv6)")
    return tuple(hosts)
