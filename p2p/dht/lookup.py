"""Iterative lookups with ``alpha`` requests always in flight, never waiting on the slowest peer.

The library's ``SpiderCrawl._find`` sends a round of alpha requests and waits
for all of them (``gather``), so one dead peer stalls the round for the whole
timeout. :class:`Lookup` overrides ``_find``:

* as soon as any request finishes, the next closest uncontacted node is asked;
* a request unanswered after ``stall`` seconds stops counting against alpha and
  stops holding the walk open (it may still answer until ``rpc_timeout``, and its
  contacts are used if it does) -- the "stalled peer" rule of libp2p's lookups;
* the walk ends when the k closest nodes known, ignoring failed and stalled ones,
  have all answered.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Coroutine
from typing import Any

from kademlia.crawling import SpiderCrawl

from ..errors import IntegrityError, NetworkError, RemoteProtocolError
from .errors import RPCTimeout

Query = Callable[[Any], Coroutine[Any, Any, list[Any]]]
"""Ask one node; return the contacts it named (records are collected by the caller's closure)."""

_NEW, _ASKED, _ANSWERED, _FAILED = range(4)

MIN_STALL = 0.05
"""Floor of the adaptive stall: scheduling noise on a busy host is not a dead node."""
MIN_RTT_SAMPLES = 8
"""Answers measured before the stall adapts (until then the configured stall applies)."""
UNREACHABLE_FOR = 60.0
"""Seconds a node that timed out is skipped by later lookups: long enough to stop paying for
the same dead nodes lookup after lookup, short enough that a restarted node is soon asked again."""


class Unreachable:
    """Nodes that timed out recently, shared by every lookup of one DHT node.

    Other nodes keep naming a dead node in their replies until their own tables drop it,
    so without this memory every lookup would stall on the same dead nodes again. An
    entry lasts :data:`UNREACHABLE_FOR` seconds (libp2p's dial backoff works the same way).
    """

    def __init__(self, ttl: float = 0.0, limit: int = 4096) -> None:
        self._ttl = ttl or UNREACHABLE_FOR
        self._limit = limit
        self._until: dict[bytes, float] = {}

    def note(self, nid: bytes, now: float) -> None:
        """``nid`` just timed out."""
        if len(self._until) >= self._limit:  # bounded: forget the entries that end soonest
            for old in sorted(self._until, key=self._until.__getitem__)[: self._limit // 4]:
                del self._until[old]
        self._until[nid] = now + self._ttl

    def recent(self, nid: bytes, now: float) -> bool:
        """Whether ``nid`` timed out less than the memory's lifetime ago."""
        until = self._until.get(nid)
        if until is None:
            return False
        if until <= now:
            del self._until[nid]
            return False
        return True


class RoundTrips:
    """Smoothed round-trip time of answered lookup requests, shared by the lookups of a node.

    A request is "stalled" after ``4 x smoothed RTT + 10 ms`` (TCP's retransmission
    timeout uses the same shape), never longer than the configured stall, never shorter
    than :data:`MIN_STALL`: a dead node then costs a few round trips, whether the network
    answers in 1 ms (a LAN) or in 150 ms (across the world).
    """

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.samples = 0

    def observe(self, rtt: float) -> None:
        """One answered request took ``rtt`` seconds."""
        self.samples += 1
        self.srtt = rtt if self.srtt is None else self.srtt + (rtt - self.srtt) / 8

    def stall(self, ceiling: float) -> float:
        """How long to wait for an answer before moving on."""
        if self.srtt is None or self.samples < MIN_RTT_SAMPLES:
            return ceiling
        return min(ceiling, max(MIN_STALL, 4 * self.srtt + 0.010))


class Lookup(SpiderCrawl):  # type: ignore[misc]
    """Walk towards ``target`` with ``query``; ``find()`` returns the k closest nodes that answered."""

    def __init__(self, protocol: Any, target: Any, peers: list[Any], ksize: int, alpha: int,
                 query: Query, done: Callable[[], bool] | None = None,
                 stall: float = 0.25, unreachable: Unreachable | None = None,
                 round_trips: RoundTrips | None = None) -> None:
        super().__init__(protocol, target, [], ksize, alpha)
        self._query = query
        self._done = done
        self._round_trips = round_trips or RoundTrips()
        self._stall = self._round_trips.stall(stall)
        self._unreachable = unreachable
        self._order: list[tuple[int, bytes]] = []
        self._nodes: dict[bytes, Any] = {}
        self._state: dict[bytes, int] = {}
        self._add(peers)
        self.rpcs = 0
        self.answered = 0
        self.failed = 0
        self.closest: list[Any] = []

    def _add(self, nodes: list[Any]) -> None:
        for node in nodes:
            if node.id not in self._state:
                self._state[node.id] = _NEW
                self._nodes[node.id] = node
                bisect.insort(self._order, (node.long_id ^ self.node.long_id, node.id))

    async def find(self) -> list[Any]:
        """Run the walk to completion (or until ``done()`` says enough was found)."""
        self.closest = await self._find(self._query)
        return self.closest

    async def _find(self, rpcmethod: Query) -> list[Any]:
        loop = asyncio.get_running_loop()
        in_flight: dict[asyncio.Task[list[Any]], tuple[bytes, float]] = {}
        try:
            while self._done is None or not self._done():
                now = loop.time()
                stalled = {nid for nid, sent in in_flight.values() if now - sent >= self._stall}
                active = len(in_flight) - len(stalled)
                counted = 0
                for _dist, nid in self._order:
                    state = self._state[nid]
                    if state == _FAILED or nid in stalled:
                        continue
                    if state == _NEW and self._unreachable is not None \
                            and self._unreachable.recent(nid, now):
                        # Timed out in a recent lookup: skip it rather than stall on it again.
                        self._state[nid] = _FAILED
                        self.failed += 1
                        continue
                    if state == _NEW and active < self.alpha:
                        self._state[nid] = _ASKED
                        self.rpcs += 1
                        task = loop.create_task(rpcmethod(self._nodes[nid]))
                        in_flight[task] = (nid, now)
                        active += 1
                    counted += 1
                    if counted >= self.ksize:
                        break
                if not active:
                    break  # the k closest (failed and stalled aside) have all answered
                deadlines = [sent + self._stall for nid, sent in in_flight.values()
                             if nid not in stalled]
                finished, _ = await asyncio.wait(
                    in_flight, timeout=max(0.0, min(deadlines) - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in finished:
                    nid, sent = in_flight.pop(task)
                    try:
                        contacts = task.result()
                    except (NetworkError, RemoteProtocolError, IntegrityError) as exc:
                        self.failed += 1
                        self._state[nid] = _FAILED
                        if isinstance(exc, RPCTimeout) and self._unreachable is not None:
                            self._unreachable.note(nid, loop.time())
                        continue
                    self.answered += 1
                    self._state[nid] = _ANSWERED
                    self._round_trips.observe(loop.time() - sent)
                    self._add(contacts)
        finally:
            # Owned by this walk: a cancelled or finished lookup leaves no request behind.
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        answered = [self._nodes[nid] for _d, nid in self._order if self._state[nid] == _ANSWERED]
        return answered[: self.ksize]

    async def _nodes_found(self, responses: Any) -> Any:  # pragma: no cover - replaced by _find
        raise NotImplementedError
