"""Where this node is, as seen by others: a vote over the addresses in ``identify`` answers.

Every verified ``identify`` answer says at which address the answering node saw us. One
answer proves nothing about that address (the answerer chooses what it signs), so it is a
vote: each observer network (an IPv4 /24 or an IPv6 /48, not a single IP, so that one
operator with many addresses votes once) has at most one vote per address family, its latest
one, and a vote expires after :data:`OBSERVATION_TTL`. An address is *agreed* when voters
from at least :data:`OBSERVATION_QUORUM` distinct networks name it. With no agreed address
the node falls back to the address it is bound to (see ``DHT.reachable_addresses``).

The object is pure: it is fed ``(observer, observed, now)`` and asked for the agreed address
of a family at ``now``; nothing here reads a clock or touches the network.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from ..address import Address

OBSERVATION_QUORUM = 2
"""Distinct observer networks that must name one address before it is believed. One is what
a lone liar has; two means a lie needs hosts in two /24s (or /48s), and an honest node behind
one NAT is still learned as soon as its second bootstrap or lookup contact answers."""
OBSERVATION_TTL = 3600.0
"""Seconds a vote counts (one re-announce interval): an address that changed (a new NAT
mapping, a moved laptop) stops being announced within the hour, and a liar's vote must be
renewed to keep counting."""
OBSERVER_V4_PREFIX = 24
OBSERVER_V6_PREFIX = 48
MAX_VOTERS = 512
"""Voting networks remembered; when full, expired votes go first, then the oldest one."""


def observer_network(host: str) -> str:
    """The network a voter counts under: its IPv4 /24 or its IPv6 /48, as text."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    prefix = OBSERVER_V4_PREFIX if ip.version == 4 else OBSERVER_V6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _version(host: str) -> int:
    return ipaddress.ip_address(host.partition("%")[0]).version


class AddressVote:
    """Observed addresses of this node, at most one vote per (observer network, family)."""

    def __init__(self, quorum: int = OBSERVATION_QUORUM, ttl: float = OBSERVATION_TTL,
                 max_voters: int = MAX_VOTERS) -> None:
        if quorum < 1 or ttl <= 0 or max_voters < 1:
            raise ValueError("quorum and max_voters must be >= 1 and ttl > 0")
        self.quorum = quorum
        self.ttl = ttl
        self.max_voters = max_voters
        self._votes: dict[tuple[str, int], tuple[Address, float]] = {}
        """(observer network, family of the observed address) -> (observed address, when)."""

    def __len__(self) -> int:
        return len(self._votes)

    def observe(self, observer: Address, observed: Address, now: float) -> None:
        """``observer`` (the address that answered) says it saw us at ``observed`` at ``now``."""
        key = (observer_network(observer[0]), _version(observed[0]))
        self._votes.pop(key, None)  # re-inserted last: the dict is oldest-first
        if len(self._votes) >= self.max_voters:
            self.expire(now)
            while len(self._votes) >= self.max_voters:
                del self._votes[next(iter(self._votes))]
        self._votes[key] = (observed, now)

    def expire(self, now: float) -> None:
        """Forget the votes older than the TTL."""
        for key in [k for k, (_, t) in self._votes.items() if now - t >= self.ttl]:
            del self._votes[key]

    def tally(self, version: int, now: float) -> Counter[Address]:
        """Live votes per observed address of IP ``version``: distinct observer networks."""
        return Counter(addr for (_, v), (addr, t) in self._votes.items()
                       if v == version and now - t < self.ttl)

    def agreed(self, version: int, now: float) -> Address | None:
        """The address of IP ``version`` named by at least ``quorum`` networks (the most
        named; on a tie, the most recently confirmed), or None."""
        best: Address | None = None
        best_key: tuple[int, float] = (0, 0.0)
        latest: dict[Address, float] = {}
        for (_, v), (addr, t) in self._votes.items():
            if v == version and now - t < self.ttl:
                latest[addr] = max(t, latest.get(addr, t))
        for addr, count in self.tally(version, now).items():
            key = (count, latest[addr])
            if count >= self.quorum and key > best_key:
                best, best_key = addr, key
        return best
