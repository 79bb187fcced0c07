"""Routing table fixes on top of the library's buckets, and the inert library storage.

* :class:`ExactRoutingTable` replaces ``find_neighbors`` (the library's
  ``TableTraverser`` stops early and returns short or empty lists), fixes the
  bucket index at range edges, caps contacts per IP and never pings from a
  fire-and-forget task: a full bucket asks the protocol to check its head.
* :class:`NullStorage` is handed to the library so its unauthenticated
  ``rpc_store``, hourly republish and newcomer hand-over have nothing to act on.
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import time
from collections.abc import Iterator
from typing import Any, Protocol

from kademlia.node import Node
from kademlia.routing import RoutingTable

from ..encoding import expect_bytes, expect_list
from ..errors import DecodeError
from ..identity import NODE_ID_LEN
from .records import check_address

KEYSPACE = 2**160


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


def parse_contact(value: Any, ipv6: bool) -> Any:
    """A ``Node`` from a wire contact ``[id20, ip, port]``; raises :class:`DecodeError`.

    Only literal IPs of our socket's family and ports 1..65535: a hostname, ``None``
    or 70000 reaching ``sendto`` would close the library's transport.
    """
    node_id, host, port = expect_list(value, 3, "contact")
    node_id = expect_bytes(node_id, NODE_ID_LEN, "contact id")
    host, port = check_address(host, port, "contact")
    if (ipaddress.ip_address(host).version == 6) != ipv6:
        raise DecodeError("contact: address family differs from ours")
    return Node(node_id, host, port)


class ExactRoutingTable(RoutingTable):  # type: ignore[misc]
    """The library's k-buckets with an exact neighbour search, a per-IP cap and owned pings."""

    def __init__(self, protocol: HeadChecker, ksize: int, node: Any,
                 max_per_ip: int | None) -> None:
        super().__init__(protocol, ksize, node)
        self.max_per_ip = max_per_ip
        self.refused_ip_cap = 0

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

    def _ip_count(self, ip: str) -> int:
        return sum(
            1 for b in self.buckets
            for n in (*b.nodes.values(), *b.replacement_nodes.values()) if n.ip == ip
        )

    def add_contact(self, node: Any) -> None:
        """Add a verified contact, or refresh it to most-recently-seen if already present."""
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        known = node.id in bucket.nodes or node.id in bucket.replacement_nodes
        if not known and self.max_per_ip is not None and self._ip_count(node.ip) >= self.max_per_ip:
            self.refused_ip_cap += 1
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

    def find_neighbors(self, node: Any, k: int | None = None, exclude: Any = None) -> list[Any]:
        """The ``k`` contacts closest to ``node`` (by XOR), found by an exact scan of every bucket."""
        k = k or self.ksize
        target = node.long_id
        candidates = (
            n for b in self.buckets for n in b.nodes.values()
            if n.id != node.id and (exclude is None or not n.same_home_as(exclude))
        )
        return heapq.nsmallest(k, candidates, key=lambda n: n.long_id ^ target)

    def lonely_buckets(self, age: float = 3600.0) -> list[Any]:
        """Buckets not looked up in the last ``age`` seconds (the library hard-codes an hour)."""
        limit = time.monotonic() - age
        return [b for b in self.buckets if b.last_updated < limit]

    def touch(self, key: bytes) -> None:
        """Note a lookup of ``key``: its bucket is not lonely."""
        self.buckets[self.get_bucket_for(Node(key))].touch_last_updated()

    @staticmethod
    def random_id_in(bucket: Any) -> bytes:
        """A random id inside ``bucket`` (the library's inclusive 2**160 bound can overflow)."""
        lo, hi = bucket.range
        return random.randint(lo, min(hi, KEYSPACE - 1)).to_bytes(NODE_ID_LEN, "big")
