"""Routing table fixes on top of the library's buckets, and the inert library storage.

* :class:`ExactRoutingTable` replaces ``find_neighbors`` (the library's
  ``TableTraverser`` stops early and returns short or empty lists), fixes the
  bucket index at range edges, caps contacts per IP and never pings from a
  fire-and-forget task: a full bucket asks the protocol to check its head.
* :class:`Contact` is one verified node with its addresses, at most one per family:
  a node reached over IPv4 and over IPv6 is one contact, keyed by its node id.
* :class:`NullStorage` is handed to the library so its unauthenticated
  ``rpc_store``, hourly republish and newcomer hand-over have nothing to act on.

Time is a parameter: the table reads the clock it is given (bucket ages), never its own.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from kademlia.node import Node
from kademlia.routing import RoutingTable

from ..address import Address
from ..encoding import expect_bytes, expect_list
from ..identity import NODE_ID_LEN
from .records import check_address

KEYSPACE = 2**160
IPV6_GROUP_BYTES = 8
"""An IPv6 host usually holds a whole /64, so per-IP caps and rate limits count a /64 as one
IP: otherwise one host could take every slot by changing the last 64 bits."""


def ip_version(host: str) -> int:
    """4 or 6 for a literal IP (canonical text: only IPv6 has a colon)."""
    return 6 if ":" in host else 4


def ip_group(host: str) -> str:
    """The key one source counts under for caps and rate limits: the IPv4 address, or the /64
    of an IPv6 address (see :data:`IPV6_GROUP_BYTES`)."""
    if ":" not in host:
        return host
    packed = ipaddress.IPv6Address(host.partition("%")[0]).packed[:IPV6_GROUP_BYTES]
    return packed.hex() + "::/64"


class Contact(Node):  # type: ignore[misc]
    """A node whose key was verified at each of its addresses (at most one per family).

    ``ip`` and ``port``, which the library reads, are its preferred address: the first
    one it was verified at, until that one stops answering.
    """

    ip: str
    port: int

    def __init__(self, node_id: bytes, address: Address) -> None:
        super().__init__(node_id, address[0], address[1])
        self.addresses: dict[int, Address] = {ip_version(address[0]): address}
        self.groups: dict[int, str] = {ip_version(address[0]): ip_group(address[0])}

    def knows(self, address: Address) -> bool:
        """Whether ``address`` is one this contact was verified at."""
        return self.addresses.get(ip_version(address[0])) == address

    def learn(self, address: Address) -> None:
        """Add (or, in the same family, replace) a verified address."""
        version = ip_version(address[0])
        if version == ip_version(self.ip):
            self.ip, self.port = address
        self.addresses[version] = address
        self.groups[version] = ip_group(address[0])

    def forget(self, address: Address) -> bool:
        """Drop ``address``; the preferred address moves to the other family. Returns
        whether any address is left."""
        version = ip_version(address[0])
        if self.addresses.get(version) == address:
            del self.addresses[version]
            del self.groups[version]
            if self.addresses and (self.ip, self.port) == address:
                self.ip, self.port = next(iter(self.addresses.values()))
        return bool(self.addresses)

    def same_home_as(self, node: Any) -> bool:
        """Whether ``node``'s address is one of ours."""
        return (node.ip, node.port) in self.addresses.values()


def addresses_of(node: Any) -> dict[int, Address]:
    """A contact's addresses by family (a bare library ``Node`` has one)."""
    found = getattr(node, "addresses", None)
    return found if found is not None else {ip_version(node.ip): (node.ip, node.port)}


def groups_of(node: Any) -> Iterator[str]:
    """The cap groups of a contact's addresses."""
    found = getattr(node, "groups", None)
    return iter(found.values()) if found is not None else iter((ip_group(node.ip),))


class HeadChecker(Protocol):
    """What the table needs from the protocol: a liveness check of a full bucket's oldest contact."""

    def check_head(self, node: Any) -> None: ...


class NullStorage:
    """An IStorage that stores nothing; our records live in :class:`p2p.dht.store.RecordStore`.

    It defines no ``__len__`` on purpose: the library's ``storage or ForgetfulStorage()``
    would replace an empty, falsy storage with its own.
    """

    def __setitem__(self, key: bytes, value: Any) -> None:
        pass

    def __getitem__(self, key: bytes) -> Any:
        raise KeyError(key)

    def get(self, key: bytes, default: Any = None) -> Any:
        """Nothing is ever held."""
        return default

    def iter_older_than(self, seconds_old: float) -> Iterator[tuple[bytes, Any]]:
        """Nothing to republish."""
        return iter(())

    def __iter__(self) -> Iterator[tuple[bytes, Any]]:
        return iter(())


def parse_contact(value: Any) -> Any:
    """A ``Node`` from a wire contact ``[id20, ip, port]``; raises :class:`DecodeError`.

    Only canonical literal IPs (either family) and ports 1..65535: a hostname, ``None``
    or 70000 reaching ``sendto`` would close the library's transport.
    """
    node_id, host, port = expect_list(value, 3, "contact")
    node_id = expect_bytes(node_id, NODE_ID_LEN, "contact id")
    host, port = check_address(host, port, "contact")
    return Node(node_id, host, port)


class ExactRoutingTable(RoutingTable):  # type: ignore[misc]
    """The library's k-buckets with an exact neighbour search, a per-IP cap and owned pings.

    ``clock`` (monotonic seconds) dates the buckets' last lookups; the library's own
    ``time.monotonic()`` stamps are overwritten wherever it creates a bucket.
    """

    def __init__(self, protocol: HeadChecker, ksize: int, node: Any,
                 max_per_ip: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # before super().__init__, which calls flush()
        super().__init__(protocol, ksize, node)
        self.max_per_ip = max_per_ip
        self.refused_ip_cap = 0

    def flush(self) -> None:
        """One bucket for the whole keyspace, dated by our clock."""
        super().flush()
        self.buckets[0].last_updated = self._clock()

    def split_bucket(self, index: int) -> None:
        """Split as the library does; both halves are dated now, by our clock."""
        super().split_bucket(index)
        self.buckets[index].last_updated = self.buckets[index + 1].last_updated = self._clock()

    def get_bucket_for(self, node: Any) -> int:
        """Bucket index for ``node``: ranges are inclusive (the library's ``<`` misplaces edges)."""
        for index, bucket in enumerate(self.buckets):
            if node.long_id <= bucket.range[1]:
                return index
        return len(self.buckets) - 1

    def get(self, node_id: bytes) -> Any:
        """The contact with this id, or None."""
        return self.buckets[self.get_bucket_for(Node(node_id))].nodes.get(node_id)

    def contacts(self) -> list[Any]:
        """Every contact, bucket by bucket (least recently seen first within a bucket)."""
        return [n for b in self.buckets for n in b.nodes.values()]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    def _ip_count(self, group: str) -> int:
        return sum(
            1 for b in self.buckets
            for n in (*b.nodes.values(), *b.replacement_nodes.values()) if group in groups_of(n)
        )

    def _over_cap(self, host: str) -> bool:
        if self.max_per_ip is None or self._ip_count(ip_group(host)) < self.max_per_ip:
            return False
        self.refused_ip_cap += 1
        return True

    def add_contact(self, node: Any) -> None:
        """Add a verified contact, or refresh it to most-recently-seen if already present."""
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        known = node.id in bucket.nodes or node.id in bucket.replacement_nodes
        if not known and self._over_cap(node.ip):
            return
        # add_node moves a known contact to the tail: that is the least-recently-seen order.
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        else:
            # Full: the newcomer waits in the replacement cache; the head is pinged and
            # evicted only after repeated failures (protocol.MAX_FAILURES).
            self.protocol.check_head(bucket.head())

    def add_address(self, contact: Contact, address: Address) -> bool:
        """Give a contact in the table one more verified address (per-IP cap permitting)."""
        if contact.knows(address):
            return True
        old = contact.addresses.get(ip_version(address[0]))
        if (old is None or ip_group(old[0]) != ip_group(address[0])) and self._over_cap(address[0]):
            return False
        contact.learn(address)
        return True

    def find_neighbors(self, node: Any, k: int | None = None, exclude: Any = None) -> list[Any]:
        """The ``k`` contacts closest to ``node`` (by XOR), found by an exact scan of every bucket."""
        k = k or self.ksize
        target = node.long_id
        candidates = (
            n for b in self.buckets for n in b.nodes.values()
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        )
        return heapq.nsmallest(k, candidates, key=lambda n: n.long_id ^ target)

    def lonely_buckets(self, age: float = 3600.0, now: float | None = None) -> list[Any]:
        """Buckets not looked up in the ``age`` seconds before ``now`` (default: the clock);
        the library hard-codes an hour."""
        limit = (self._clock() if now is None else now) - age
        return [b for b in self.buckets if b.last_updated <= limit]

    def touch(self, key: bytes) -> None:
        """Note a lookup of ``key``: its bucket is not lonely."""
        self.buckets[self.get_bucket_for(Node(key))].last_updated = self._clock()

    @staticmethod
    def random_id_in(bucket: Any) -> bytes:
        """A random id inside ``bucket`` (the library's inclusive 2**160 bound can overflow)."""
        lo, hi = bucket.range
        return random.randint(lo, min(hi, KEYSPACE - 1)).to_bytes(NODE_ID_LEN, "big")
