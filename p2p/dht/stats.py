"""What a running DHT reports about itself: typed snapshots for health pages, metrics and views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..address import Address


@dataclass(frozen=True)
class ContactInfo:
    """One routing-table contact: a node id and the addresses its key was verified at."""

    node_id: bytes
    """The contact's 20-byte node id (derived from its key)."""
    addresses: tuple[Address, ...]
    """Where it answered, at most one per family; the one this node sends to first comes first."""


@dataclass(frozen=True)
class DHTStats:
    """A snapshot of one DHT node's counters and routing table (:meth:`p2p.dht.DHT.summary`).

    Counters count from the node's start. :meth:`to_json` gives the same numbers under
    the keys the old ``DHT.stats()`` dict used, plus the newer ones.
    """

    node_id: bytes
    """This node's 20-byte DHT id."""
    uptime: float
    """Seconds since the DHT was opened (monotonic clock)."""
    contacts: int
    """Verified contacts in the routing table."""
    buckets: int
    """Buckets in the routing table."""
    bucket_sizes: tuple[int, ...]
    """Contacts per bucket, in keyspace order."""
    contacts_ipv4: int
    """Contacts with an IPv4 address (a dual-stack contact counts here and in ``contacts_ipv6``)."""
    contacts_ipv6: int
    """Contacts with an IPv6 address."""
    listen: tuple[Address, ...]
    """The bound UDP sockets, one per address family."""
    rpcs_received: Mapping[str, int]
    """Requests answered, by RPC name."""
    rpcs_sent: Mapping[str, int]
    """Requests sent, by RPC name."""
    rejected: Mapping[str, int]
    """Inbound datagrams, requests, contacts and records refused, by reason (a hostile or
    broken peer shows up here)."""
    events: Mapping[str, int]
    """Notable events by kind: contacts verified or evicted, timeouts, ICMP errors..."""
    records: Mapping[str, int]
    """Records held for others, by kind (provider, peer, channel)."""
    outstanding: int
    """Requests waiting for an answer now."""
    lookups: int
    """Lookups this node has run."""
    lookup_rpcs: int
    """Requests those lookups sent."""
    refused_ip_cap: int
    """Contacts (or addresses) refused because their IPv4 address or IPv6 /64 holds too many."""
    signature_cache_hits: int
    """Record and identify signatures found in the verification cache."""
    signature_cache_misses: int
    """Signatures that had to be checked."""
    provided: int
    """Content ids re-announced by ``DHT.provide``."""
    state_load_error: str | None
    """Why the saved routing table was ignored at start, if it was."""
    restored_contacts: int
    """Contacts of the saved routing table that answered re-verification at start."""
    lookup_rounds: int = 0
    """Sum over those lookups of their depth in hops (:attr:`p2p.dht.lookup.Walk.rounds`)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``node_id`` in hex, addresses as ``[host, port]`` lists, and
        ``signature_cache`` as ``{"hits", "misses"}``, as the old ``DHT.stats()`` dict gave."""
        return {
            "node_id": self.node_id.hex(),
            "uptime": self.uptime,
            "contacts": self.contacts,
            "buckets": self.buckets,
            "bucket_sizes": list(self.bucket_sizes),
            "contacts_ipv4": self.contacts_ipv4,
            "contacts_ipv6": self.contacts_ipv6,
            "listen": [list(a) for a in self.listen],
            "rpcs_received": dict(self.rpcs_received),
            "rpcs_sent": dict(self.rpcs_sent),
            "rejected": dict(self.rejected),
            "events": dict(self.events),
            "records": dict(self.records),
            "outstanding": self.outstanding,
            "lookups": self.lookups,
            "lookup_rpcs": self.lookup_rpcs,
            "refused_ip_cap": self.refused_ip_cap,
            "signature_cache": {"hits": self.signature_cache_hits,
                                "misses": self.signature_cache_misses},
            "provided": self.provided,
            "state_load_error": self.state_load_error,
            "restored_contacts": self.restored_contacts,
            "lookup_rounds": self.lookup_rounds,
        }
