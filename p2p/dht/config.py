"""DHT configuration: data passed in, built by the CLI from flags and by tests from port 0."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from .records import REANNOUNCE_INTERVAL


@dataclass(frozen=True)
class DHTConfig:
    """How a :class:`p2p.dht.DHT` binds, whom it trusts first and how hard it defends itself."""

    host: str = "127.0.0.1"
    """UDP bind address (a literal IP). The node's TCP server listens on the same port by design."""
    port: int = 0
    """UDP bind port; 0 lets the system choose (read it back from ``DHT.port``)."""
    bootstrap: tuple[tuple[str, int], ...] = ()
    """First contacts, joined by ``DHT.open``. Hostnames are resolved here (and only here)."""
    ksize: int = 20
    """Kademlia k: bucket size, replication factor and lookup width."""
    alpha: int = 3
    """Requests kept in flight during a lookup."""
    rpc_timeout: float = 1.0
    """Seconds to wait for one answer. The library's 5 s stalls lookups behind dead peers."""
    max_contacts_per_ip: int | None = 2
    """Routing-table contacts allowed per IP address (key grinding from one host); None = no cap."""
    rate_limit_per_ip: float | None = 200.0
    """Inbound datagrams per second accepted from one IP (token bucket); None = unlimited."""
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
    """Seconds between re-announcements of the content registered with ``DHT.provide``."""
    lookup_stall: float = 0.25
    """Seconds after which an unanswered lookup request stops holding the walk open (it may
    still answer until ``rpc_timeout``). Above a typical WAN round trip, far below a timeout."""
    max_outstanding: int = 1024
    """Requests that may wait for an answer at once; more are refused with ``Overloaded``."""
    max_pending_verifications: int = 64
    """Identity checks of new contacts running at once; newcomers beyond that are ignored."""

    def __post_init__(self) -> None:
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
