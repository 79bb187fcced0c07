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

The decisions live in :class:`Walk`, a pure object that takes ``now`` (monotonic
seconds) and does no I/O; :class:`Lookup` is the thin asyncio shell that sends the
requests it names and sleeps until its next deadline. Tests drive a :class:`Walk`
with a fake clock.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from kademlia.crawling import SpiderCrawl

from ..errors import IntegrityError, NetworkError, RemoteProtocolError
from .errors import RPCTimeout
from .records import SignedRecord

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


class Walk:
    """One iterative lookup's state: whom to ask next, which requests stalled, when it is done.

    Pure: no I/O, no clock; every method that depends on time takes ``now`` (monotonic
    seconds). ``peers`` and the contacts fed back are library ``Node`` objects (they
    carry ``id`` and ``long_id``).
    """

    def __init__(self, target: int, peers: Iterable[Any], ksize: int, alpha: int,
                 stall: float, unreachable: Unreachable | None = None) -> None:
        self._target = target
        self.ksize = ksize
        self.alpha = alpha
        self.stall = stall
        """Seconds after which an unanswered request stops counting against alpha."""
        self._unreachable = unreachable
        self._order: list[tuple[int, bytes]] = []
        self._nodes: dict[bytes, Any] = {}
        self._state: dict[bytes, int] = {}
        self._sent: dict[bytes, float] = {}
        self._active = 0
        self.rpcs = 0
        """Requests sent."""
        self.answered = 0
        """Requests answered."""
        self.failed = 0
        """Requests that failed or timed out, and nodes skipped as recently unreachable."""
        self._hop: dict[bytes, int] = {}
        self.rounds = 0
        """Hops of the deepest answer: a start contact's answer is round 1, the answer of a
        node it named is round 2, and so on (the asynchronous walk has no lock-step rounds)."""
        self.add(peers)

    def add(self, nodes: Iterable[Any], hop: int = 1) -> None:
        """Candidates learned from a reply (nodes already known are ignored); ``hop``: the
        round in which asking them is (one more than the hop of the node that named them)."""
        for node in nodes:
            if node.id not in self._state:
                self._hop[node.id] = hop
                self._state[node.id] = _NEW
                self._nodes[node.id] = node
                bisect.insort(self._order, (node.long_id ^ self._target, node.id))

    def step(self, now: float) -> list[Any]:
        """The nodes to ask at ``now``, each marked as asked; :attr:`finished` is then current."""
        stall = self.stall
        stalled = {nid for nid, sent in self._sent.items() if now - sent >= stall}
        active = len(self._sent) - len(stalled)
        ask: list[Any] = []
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
                self._sent[nid] = now
                self.rpcs += 1
                ask.append(self._nodes[nid])
                active += 1
            counted += 1
            if counted >= self.ksize:
                break
        self._active = active
        return ask

    @property
    def finished(self) -> bool:
        """As of the last :meth:`step`: the k closest (failed and stalled aside) all answered."""
        return not self._active

    def next_deadline(self, now: float) -> float | None:
        """When the next unanswered request stalls (None if none is waiting unstalled)."""
        pending = [sent + self.stall for sent in self._sent.values() if now - sent < self.stall]
        return min(pending) if pending else None

    def answer(self, nid: bytes, contacts: Iterable[Any], now: float) -> float:
        """``nid`` answered at ``now`` naming ``contacts``; returns its round-trip time."""
        sent = self._sent.pop(nid)
        self.answered += 1
        self._state[nid] = _ANSWERED
        hop = self._hop.get(nid, 1)
        self.rounds = max(self.rounds, hop)
        self.add(contacts, hop + 1)
        return now - sent

    def fail(self, nid: bytes, now: float, timed_out: bool) -> None:
        """``nid``'s request failed at ``now`` (``timed_out``: no answer within the RPC timeout)."""
        self._sent.pop(nid, None)
        self.failed += 1
        self._state[nid] = _FAILED
        if timed_out and self._unreachable is not None:
            self._unreachable.note(nid, now)

    def closest(self) -> list[Any]:
        """The k closest nodes that answered, closest first."""
        answered = [self._nodes[nid] for _d, nid in self._order if self._state[nid] == _ANSWERED]
        return answered[: self.ksize]


class Lookup(SpiderCrawl):  # type: ignore[misc]
    """Walk towards ``target`` with ``query``; ``find()`` returns the k closest nodes that answered.

    The asyncio shell of a :class:`Walk`: it sends what the walk names, waits for the
    first answer or the walk's next deadline, and reads time from ``clock`` (monotonic
    seconds). The requests are tasks this lookup owns: when it ends, finished or
    cancelled, it cancels and awaits every one still in flight.
    """

    def __init__(self, protocol: Any, target: Any, peers: list[Any], ksize: int, alpha: int,
                 query: Query, done: Callable[[], bool] | None = None,
                 stall: float = 0.25, unreachable: Unreachable | None = None,
                 round_trips: RoundTrips | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(protocol, target, [], ksize, alpha)
        self._query = query
        self._done = done
        self._round_trips = round_trips or RoundTrips()
        self._clock = clock or asyncio.get_running_loop().time
        self.walk = Walk(target.long_id, peers, ksize, alpha, self._round_trips.stall(stall),
                         unreachable)
        self.closest: list[Any] = []

    @property
    def rpcs(self) -> int:
        """Requests sent."""
        return self.walk.rpcs

    @property
    def answered(self) -> int:
        """Requests answered."""
        return self.walk.answered

    @property
    def failed(self) -> int:
        """Requests failed, timed out or skipped."""
        return self.walk.failed

    @property
    def rounds(self) -> int:
        """Hops of the deepest answer (:attr:`Walk.rounds`)."""
        return self.walk.rounds

    async def find(self) -> list[Any]:
        """Run the walk to completion (or until ``done()`` says enough was found)."""
        self.closest = await self._find(self._query)
        return self.closest

    async def _find(self, rpcmethod: Query) -> list[Any]:
        loop = asyncio.get_running_loop()
        walk, clock = self.walk, self._clock
        in_flight: dict[asyncio.Task[list[Any]], bytes] = {}
        try:
            while self._done is None or not self._done():
                now = clock()
                for node in walk.step(now):
                    in_flight[loop.create_task(rpcmethod(node))] = node.id
                if walk.finished:
                    break
                deadline = walk.next_deadline(now)
                finished, _ = await asyncio.wait(
                    in_flight, timeout=None if deadline is None else max(0.0, deadline - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                now = clock()
                for task in finished:
                    nid = in_flight.pop(task)
                    try:
                        contacts = task.result()
                    except (NetworkError, RemoteProtocolError, IntegrityError) as exc:
                        walk.fail(nid, now, isinstance(exc, RPCTimeout))
                        continue
                    self._round_trips.observe(walk.answer(nid, contacts, now))
        finally:
            # Owned by this walk: a cancelled or finished lookup leaves no request behind.
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        return walk.closest()

    async def _nodes_found(self, responses: Any) -> Any:  # pragma: no cover - replaced by _find
        raise NotImplementedError


PROVIDER_SOURCES = 6
"""Nodes whose ``get`` replies a provider lookup merges before any one of them may fill the
result: twice alpha, so one lying or flooded node among the first answers cannot decide what
a download sees. Until that many replied, each contributes at most ``limit // 6`` providers
(at least one); the rest wait and are yielded once that many answered or the walk ended."""


class ProviderMerge:
    """Provider records from several nodes' replies, merged one per author, fairly.

    Pure: no I/O. :meth:`offer` takes one reply (or the records held locally) and returns
    what may be yielded now; :meth:`finish` returns what is still held back when the walk
    ends. Nothing beyond ``limit`` authors is ever returned.
    """

    def __init__(self, limit: int, sources: int = PROVIDER_SOURCES) -> None:
        self.limit = limit
        self.sources = sources
        self.share = max(1, limit // sources)
        """Providers one reply may contribute until :attr:`sources` replies were merged."""
        self.replies = 0
        """Replies (and local holdings) offered so far."""
        self._yielded: set[bytes] = set()
        self._waiting: dict[bytes, SignedRecord] = {}

    @property
    def full(self) -> bool:
        """Whether ``limit`` authors were returned: the walk may stop."""
        return len(self._yielded) >= self.limit

    @property
    def open(self) -> bool:
        """Whether enough replies were merged for the per-reply share to lift."""
        return self.replies >= self.sources

    def offer(self, records: Iterable[SignedRecord]) -> list[SignedRecord]:
        """One node's reply (verified records, best first); returns the records to yield
        now, each author once over the whole lookup."""
        self.replies += 1
        out: list[SignedRecord] = []
        taken = 0
        for signed in records:
            author = signed.author
            if self.full:
                return out
            if author in self._yielded:
                continue
            if self.open or taken < self.share:
                self._waiting.pop(author, None)
                out.append(signed)
                taken += 1
                self._yielded.add(author)
            else:
                self._waiting.setdefault(author, signed)
        if self.open:
            out.extend(self.finish())
        return out

    def finish(self) -> list[SignedRecord]:
        """The records held back (first come, first returned), up to ``limit`` in all."""
        out: list[SignedRecord] = []
        while self._waiting and not self.full:
            author, signed = next(iter(self._waiting.items()))
            del self._waiting[author]
            self._yielded.add(author)
            out.append(signed)
        if self.full:
            self._waiting.clear()
        return out
