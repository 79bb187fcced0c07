"""Iterative lookups with ``alpha`` requests always in flight.

The library's ``SpiderCrawl._find`` sends a round of alpha requests and waits
for all of them (``gather``), so one dead peer stalls the round for the whole
timeout. :class:`Lookup` overrides ``_find``: as soon as any request finishes, the
next closest uncontacted node is asked. The walk ends when the k closest nodes
known have all answered (or failed and been dropped).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Coroutine
from typing import Any

from kademlia.crawling import SpiderCrawl
from kademlia.node import NodeHeap

from ..errors import IntegrityError, NetworkError, PeerMisbehaved

Query = Callable[[Any], Coroutine[Any, Any, list[Any]]]
"""Ask one node; return the contacts it named (records are collected by the caller's closure)."""


class Candidates(NodeHeap):  # type: ignore[misc]
    """The library's ``NodeHeap`` with O(1) membership (its ``push`` scans the whole heap)."""

    def __init__(self, node: Any, maxsize: int) -> None:
        super().__init__(node, maxsize)
        self._ids: set[bytes] = set()

    def push(self, nodes: Any) -> None:
        """Add nodes not seen before in this lookup."""
        if not isinstance(nodes, list):
            nodes = [nodes]
        for node in nodes:
            if node.id not in self._ids:
                self._ids.add(node.id)
                heapq.heappush(self.heap, (self.node.distance_to(node), node))

    def __contains__(self, node: Any) -> bool:
        return node.id in self._ids


class Lookup(SpiderCrawl):  # type: ignore[misc]
    """Walk towards ``target`` with ``query``; ``find()`` returns the k closest nodes that answered."""

    def __init__(self, protocol: Any, target: Any, peers: list[Any], ksize: int, alpha: int,
                 query: Query, done: Callable[[], bool] | None = None) -> None:
        super().__init__(protocol, target, [], ksize, alpha)
        self.nearest = Candidates(target, ksize)
        self.nearest.push(list(peers))
        self._query = query
        self._done = done
        self.rpcs = 0
        self.answered = 0
        self.failed = 0
        self.closest: list[Any] = []

    async def find(self) -> list[Any]:
        """Run the walk to completion (or until ``done()`` says enough was found)."""
        self.closest = await self._find(self._query)
        return self.closest

    async def _find(self, rpcmethod: Query) -> list[Any]:
        in_flight: dict[asyncio.Task[list[Any]], Any] = {}
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._done is not None and self._done():
                    break
                for peer in self.nearest.get_uncontacted():
                    if len(in_flight) >= self.alpha:
                        break
                    self.nearest.mark_contacted(peer)
                    self.rpcs += 1
                    in_flight[loop.create_task(rpcmethod(peer))] = peer
                if not in_flight:
                    break
                finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    peer = in_flight.pop(task)
                    try:
                        contacts = task.result()
                    except (NetworkError, PeerMisbehaved, IntegrityError):
                        self.failed += 1
                        self.nearest.remove([peer.id])
                        continue
                    self.answered += 1
                    self.nearest.push(contacts)
        finally:
            # Owned by this walk: a cancelled or finished lookup leaves no request behind.
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        return [n for n in self.nearest if n.id in self.nearest.contacted]

    async def _nodes_found(self, responses: Any) -> Any:  # pragma: no cover - replaced by _find
        raise NotImplementedError
