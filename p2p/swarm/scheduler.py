"""The download scheduler: which chunk to ask of which peer, and when to give up on a request.

Sans-IO: it holds no sockets and reads no clock. The driver
(:mod:`p2p.swarm.download`) feeds it what happened (a peer joined, sent its
bitfield, delivered or botched a chunk) with the current time ``now`` and asks
it what to do next (:meth:`Scheduler.plan`, :meth:`Scheduler.expire`) and when
to ask again if nothing happens meanwhile (:meth:`Scheduler.next_deadline`).
The times it is given never decrease.

Policy, in the order it is applied:

* **Only what is wanted.** A download of some files of a folder wants only their chunks
  (:meth:`Scheduler.set_wanted`): no other chunk is ever requested, and the download is
  complete once every wanted chunk is held.
* **Rarest first.** Chunks no held and not requested are tried in order of
  how few connected peers have them (random among equals, so downloaders of
  the same content spread out instead of all asking for chunk 0).
* **Windows sized by bandwidth x delay.** Each peer's window (bytes in flight) is
  :data:`WINDOW_GAIN` times its delivery rate times its round trip, the round trip
  being the shortest request-to-arrival time seen (at least :data:`WINDOW_FLOOR`
  seconds, for a loaded event loop), plus a chunk. The delivery rate is measured as
  TCP's BBR does (bytes delivered between a request and its answer, over that time;
  the highest recent sample), so the window doubles every round trip from its
  :data:`INITIAL_INFLIGHT` chunks until the path is full, like TCP's slow start, and a
  long, fast path gets the requests it needs. Until then (BBR's startup: the rate grew
  by a quarter within the last three round trips) the gain is :data:`STARTUP_GAIN`, so
  the requests stay ahead of TCP's own window as it grows. No fixed small cap:
  :data:`MAX_INFLIGHT` is the chunk server's own.
* **A shared budget, shared by need.** :data:`INFLIGHT_BUDGET_BYTES` bounds the
  requests in flight over all peers; when the windows ask for more, each peer gets a
  share in proportion to its window (at least one request), so no peer starves.
* **End game.** When nothing is left unrequested, an idle peer duplicates the
  oldest outstanding request it can serve (at most :data:`ENDGAME_DUPLICATES`
  peers per chunk); the first copy to arrive wins and the others are cancelled.
* **Timeouts.** A request not answered by its deadline goes back to the pool
  (asked of another peer first), and the slow peer's pipeline shrinks.
* **Strikes.** A chunk that fails its hash is a strike against the peer that
  sent it; at :data:`STRIKE_LIMIT` strikes the peer is banned. Bytes wasted on a
  liar are therefore at most ``STRIKE_LIMIT`` chunks plus what was in flight.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

WINDOW_GAIN = 2.0
"""A peer's window is this many times its bandwidth-delay product once its path is full
(:data:`FULL_PIPE_ROUNDS`): one to fill the path, one more for the chunks being answered
and so the measured rate can still grow (BBR's cwnd gain)."""
STARTUP_GAIN = 2 / math.log(2)
"""The gain before the path is full (BBR's startup gain, 2/ln 2 = 2.89, the smallest that
doubles what is in flight every round trip). During TCP's slow start the rate sample lags
the path: a request takes half a round trip to reach the seeder, and a sample averages over
its whole request-to-answer time, in which TCP's window doubled at least once. A window of
:data:`WINDOW_GAIN` x that sample only matches TCP's own congestion window, so TCP runs
short of data to send (app-limited) and its window grows more slowly; the extra gain keeps
requests ahead of it."""
FULL_PIPE_GROWTH = 1.25
FULL_PIPE_ROUNDS = 3
"""BBR's full-pipe test: once the delivery rate grew less than 25% in each of three round
trips in a row the path is full and the window gain drops from :data:`STARTUP_GAIN` to
:data:`WINDOW_GAIN` (a request that times out ends the startup too)."""
WINDOW_FLOOR = 0.05
"""The shortest round trip a window is sized for: on loopback the measured one is a
millisecond, and an event loop that stalls for tens of milliseconds would then drain the
pipeline."""
MIN_INFLIGHT = 2
"""Never fewer than two requests in flight: one arriving, one being served."""
MAX_INFLIGHT = 512
"""Upper bound per peer: what a chunk server accepts in flight from one peer
(``ServerLimits.max_inflight_requests``); 512 x 64 KiB covers 32 MiB, twice the
bandwidth-delay product of 500 Mbit/s at 250 ms."""
INFLIGHT_BUDGET_BYTES = 64 * 1024 * 1024
"""Bytes requested and not yet received, over all peers of one download. Requested bytes
are not held in memory until they arrive (then each connection's receive queue bounds
them), so this bounds what one download asks of the network: 64 MiB is twice the
bandwidth-delay product of 1 Gbit/s at 250 ms."""
RATE_SAMPLES = 16
"""Delivery-rate samples kept per peer; the rate is the highest of them (a short queue or
a pause on the sender's side lowers one sample, not the estimate)."""
MIN_BUDGET_CHUNKS = 8
STREAM_READ_AHEAD_BYTES = 64 * 1024 * 1024
"""Streaming (``sequential``): how far past the first missing chunk requests may go. Enough
for every peer's window on a fast link; the bytes a player waits for next always come
first."""
INITIAL_INFLIGHT = 4
"""Requests before a peer's rate is known. In chunks, not bytes: even four 64 KiB chunks
(256 KiB) outlast TCP's first four round trips of slow start (10 segments, doubling: about
220 KB), and the first rate samples are back by then (a window counted in bytes, 1 MiB,
changed nothing on the emulated paths of ``tests/swarm/test_scheduler.py``)."""
REQUEST_TIMEOUT = 15.0
"""A request older than this goes to another peer. Generous: a queued request waits for those ahead of it."""
ENDGAME_DUPLICATES = 2
"""During the end game, at most this many peers are asked for the same chunk."""
STRIKE_LIMIT = 2
"""Bad chunks before a peer is banned. One could be a disk error on their side; two is a pattern."""
REORDER_INTERVAL = 0.2
"""Rarest-first order is rebuilt at most this often when availability changes."""
BUSY_BACKOFF = 0.05
"""After a peer rejects a request as one too many in flight, it is not asked again for this long."""

Peer = Any
"""Any hashable key naming a peer (the driver uses PeerId)."""


@dataclass
class PeerState:
    """What the scheduler knows about one connected peer."""

    bits: set[int] = field(default_factory=set)
    """Chunks the peer says it has (when it is not a seeder)."""
    seeder: bool = False
    """Has every chunk (its bitfield was full)."""
    inflight: dict[int, float] = field(default_factory=dict)
    """Chunk -> time requested, oldest first (requests are added in time order)."""
    rate: float = 0.0
    """Bytes per second: the highest recent delivery-rate sample."""
    last_rate_update: float | None = None
    samples: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=RATE_SAMPLES))
    """The latest delivery-rate samples (bytes per second), at most :data:`RATE_SAMPLES`."""
    min_rtt: float | None = None
    """The shortest time from a request to its answer seen (a round trip and one chunk)."""
    filled: bool = False
    """Its path is full (the full-pipe test passed, or a request timed out): the window gain
    is :data:`WINDOW_GAIN`, no longer :data:`STARTUP_GAIN`."""
    round_end: int = 0
    """:attr:`delivered_bytes` when the current round trip began: an answer to a request
    sent after that (asked at or past this mark) ends the round (BBR's round counting)."""
    full_rate: float = 0.0
    """The rate at the last round that grew it by :data:`FULL_PIPE_GROWTH` or more."""
    flat_rounds: int = 0
    """Round trips in a row since, each without that growth."""
    delivered_bytes: int = 0
    """Verified bytes this peer delivered in all."""
    delivered_chunks: int = 0
    """Verified chunks this peer delivered in all (first copies or not): with
    :attr:`delivered_bytes`, the mean length of its chunks."""
    delivered_at: dict[int, int] = field(default_factory=dict)
    """Chunk in flight -> :attr:`delivered_bytes` when it was requested."""
    delivered: int = 0
    """Chunks this peer delivered that verified."""
    strikes: int = 0
    """Chunks it sent that failed their hash."""
    timeouts: int = 0
    """Requests to it that expired unanswered."""
    choked_until: float = 0.0
    """After a busy reject, do not ask this peer again until then (0: not choked)."""

    def has(self, index: int) -> bool:
        return self.seeder or index in self.bits


@dataclass(frozen=True)
class DataOutcome:
    """What to do after a chunk arrived."""

    accepted: bool
    """The bytes verified and this was the first copy: write them."""
    cancel: tuple[tuple[Peer, int], ...] = ()
    """Duplicate end-game requests to cancel: (peer, index)."""
    ban: bool = False
    """The sender reached the strike limit: drop and ban it."""


class Scheduler:
    """Chunk selection for one download over many peers. Pure: feed events with ``now``, ask for plans."""

    def __init__(self, chunk_count: int, held: Iterable[int], chunk_size: int,
                 *, rng: random.Random | None = None, sequential: bool = False,
                 wanted: Iterable[int] | None = None) -> None:
        self.chunk_count = chunk_count
        self.chunk_size = chunk_size
        self.sequential = sequential
        """Streaming: chunks in file order, none more than :attr:`read_ahead` past the first
        one missing (instead of rarest first), still from every peer at once."""
        self.read_ahead = max(MIN_BUDGET_CHUNKS, STREAM_READ_AHEAD_BYTES // max(chunk_size, 1))
        self.held: set[int] = set(held)
        self.peers: dict[Peer, PeerState] = {}
        self._rng = rng or random.Random()
        self._availability = [0] * chunk_count
        self._seeders = 0
        self._order: list[int] = []
        self._order_dirty = True
        self._order_built_at = float("-inf")
        self._requested: dict[int, set[Peer]] = {}
        """Chunk -> peers it is requested from."""
        self._avoid: dict[int, set[Peer]] = {}
        """Chunk -> peers that timed out or lied about it: ask others first."""
        self._cursor = 0
        self._scan = 0
        """Every chunk of the order before here is held or requested (or was when last looked
        at): picking starts here, so a pick costs O(1), not a pass over every request in flight.
        Moved back to the start whenever a request goes back to the pool unanswered."""
        self.budget = max(MIN_BUDGET_CHUNKS, INFLIGHT_BUDGET_BYTES // max(chunk_size, 1))
        """Most requests in flight at once over all peers."""
        self.wanted: frozenset[int] | None = None
        """The chunks the download wants (the selected files'); None: every chunk."""
        self._missing = 0
        """Wanted chunks not held: complete at 0."""
        self.set_wanted(wanted)

    # -- state ---------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Every wanted chunk is held."""
        return self._missing == 0

    @property
    def wanted_count(self) -> int:
        """How many chunks are wanted (all of them with no selection)."""
        return self.chunk_count if self.wanted is None else len(self.wanted)

    @property
    def wanted_held(self) -> int:
        """How many wanted chunks are held."""
        return self.wanted_count - self._missing

    def wants(self, index: int) -> bool:
        """Whether chunk ``index`` is wanted (held or not)."""
        return self.wanted is None or index in self.wanted

    def set_wanted(self, wanted: Iterable[int] | None) -> list[tuple[Peer, int]]:
        """Want only the chunks ``wanted`` (None: every chunk); a running download's selection
        changed. Requests in flight for chunks no longer wanted are released and returned
        (peer, index), for the driver to cancel; newly wanted chunks are planned from the next
        :meth:`plan` on."""
        self.wanted = None if wanted is None else frozenset(
            i for i in wanted if 0 <= i < self.chunk_count)
        if self.wanted is None:
            self._missing = self.chunk_count - len(self.held)
        else:
            self._missing = sum(1 for i in self.wanted if i not in self.held)
        released = [(peer, index) for peer, state in self.peers.items()
                    for index in state.inflight if not self.wants(index)]
        for peer, index in released:
            self._unrequest(peer, index)
        self._order_dirty = True
        self._order_built_at = float("-inf")  # the streaming order is rebuilt too
        self._order = []
        self._cursor = self._scan = 0
        return released

    @property
    def outstanding(self) -> int:
        """Chunks requested and not yet received."""
        return len(self._requested)

    # -- peers -----------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """A peer connected (its bitfield follows)."""
        self.peers.setdefault(peer, PeerState())

    def remove_peer(self, peer: Peer) -> list[int]:
        """A peer left or was dropped: its requests go back to the pool. Returns them."""
        state = self.peers.pop(peer, None)
        if state is None:
            return []
        released = list(state.inflight)
        for index in released:
            self._unrequest(peer, index)
        self._scan = 0
        if state.seeder:
            self._seeders -= 1
        else:
            for index in state.bits:
                self._availability[index] -= 1
        self._order_dirty = True
        return released

    def set_bitfield(self, peer: Peer, indexes: Iterable[int], full: bool = False) -> None:
        """The peer's bitfield: the chunks it has (or ``full=True`` for all)."""
        state = self.peers[peer]
        if state.seeder:
            self._seeders -= 1
        for index in state.bits:
            self._availability[index] -= 1
        state.bits = set()
        state.seeder = full
        if full:
            self._seeders += 1
        else:
            for index in indexes:
                if 0 <= index < self.chunk_count and index not in state.bits:
                    state.bits.add(index)
                    self._availability[index] += 1
        self._order_dirty = True

    def add_have(self, peer: Peer, index: int) -> bool:
        """The peer got one more chunk. Returns whether that was news (False for a chunk
        it was known to have, past the last chunk, or from a peer not added)."""
        state = self.peers.get(peer)
        if state is None or state.seeder or not 0 <= index < self.chunk_count or index in state.bits:
            return False
        state.bits.add(index)
        self._availability[index] += 1
        if len(state.bits) == self.chunk_count:
            for i in state.bits:
                self._availability[i] -= 1
            state.bits = set()
            state.seeder = True
            self._seeders += 1
        self._order_dirty = True
        return True

    def add_inflight(self, peer: Peer, indexes: Iterable[int], asked: float) -> list[int]:
        """Requests the driver sent ``peer`` before this scheduler existed (speculative ones,
        with the manifest request), counted in flight from ``asked``. Returns those taken:
        the ones within the content, not held and not in flight to the peer already."""
        state = self.peers[peer]
        taken = []
        for index in sorted(indexes):
            if 0 <= index < self.chunk_count and index not in self.held and \
                    index not in state.inflight and self.wants(index):
                self._request(peer, state, index, asked)
                taken.append(index)
        if taken:  # keep the oldest first, as planned requests are (next_deadline relies on it)
            state.inflight = dict(sorted(state.inflight.items(), key=lambda kv: kv[1]))
        return taken

    # -- planning ----------------------------------------------------------------------

    def window(self, peer: Peer) -> float:
        """Bytes ``peer`` should have in flight now (its bandwidth x delay, see the module)."""
        state = self.peers[peer]
        if state.last_rate_update is None or state.min_rtt is None:
            return INITIAL_INFLIGHT * self.chunk_size
        rtt = max(state.min_rtt, WINDOW_FLOOR)
        gain = WINDOW_GAIN if state.filled else STARTUP_GAIN
        return gain * state.rate * rtt + self.chunk_size

    def depth(self, peer: Peer) -> int:
        """How many requests ``peer`` should have in flight now: its window over the mean
        length of the chunks it delivered. Not over the chunk size: in a folder of small files
        most chunks are a whole file of a few KiB, and a window of 64 KiB chunks would keep
        a sixteenth of the requests the path carries in flight."""
        state = self.peers[peer]
        if state.last_rate_update is None:
            return INITIAL_INFLIGHT
        mean = state.delivered_bytes / state.delivered_chunks if state.delivered_chunks else self.chunk_size
        want = math.ceil(self.window(peer) / max(mean, 1.0))
        return max(MIN_INFLIGHT, min(MAX_INFLIGHT, want))

    def plan(self, now: float) -> list[tuple[Peer, int]]:
        """New requests to send: fills every peer's pipeline. The caller sends them all."""
        self._maybe_reorder(now)
        out: list[tuple[Peer, int]] = []
        budget = self.budget - sum(len(state.inflight) for state in self.peers.values())
        # Faster peers choose first, so scarce chunks and the shared budget go where they
        # arrive soonest.
        ready = []
        for peer, state in sorted(self.peers.items(), key=lambda kv: -kv[1].rate):
            if state.choked_until:
                if state.choked_until > now:
                    continue
                state.choked_until = 0.0  # over: no longer a deadline
            ready.append((peer, state))
        # While some chunk has a suspect (a peer that timed out on it or sent it bad), every
        # peer first takes only chunks it is no suspect for; a suspect gets its chunk back
        # (and the end game starts) only after that, so the chunk goes to another peer first.
        passes = (False, True) if self._avoid else (True,)
        rooms = self._share(ready, budget)
        endgame: list[int] | None = None
        """The requests in flight, oldest first: built once per plan, when the end game needs it."""
        for last in passes:
            for peer, state in ready:
                room = min(rooms[peer] - len(state.inflight), budget)
                if not state.inflight:
                    room = max(room, 1)  # every peer keeps one request, so its rate stays known
                seen = 0  # of the end-game list: what this peer passed over stays passed over
                while room > 0:
                    index = self._pick(peer, state, suspect_too=last)
                    if index is None and last:
                        if endgame is None:
                            endgame = self._oldest_first()
                        index, seen = self._pick_endgame(peer, state, endgame, seen)
                    if index is None:
                        break
                    self._request(peer, state, index, now)
                    out.append((peer, index))
                    room -= 1
                    budget -= 1
        return out

    def _share(self, ready: list[tuple[Peer, PeerState]], budget: int) -> dict[Peer, int]:
        """Each ready peer's depth, scaled down in proportion when together they would take
        more than ``budget`` new requests: a share by need, not first come first served."""
        depths = {peer: self.depth(peer) for peer, _ in ready}
        wants = {peer: max(0, depths[peer] - len(state.inflight)) for peer, state in ready}
        total = sum(wants.values())
        if total <= budget:
            return depths
        scale = max(budget, 0) / total
        return {peer: len(state.inflight) + int(wants[peer] * scale) for peer, state in ready}

    def _maybe_reorder(self, now: float) -> None:
        if self.sequential:
            # File order (see the attribute) does not depend on availability, and a held chunk
            # is never wanted again (_pick skips it): built once.
            if self._order_built_at == float("-inf"):
                self._order = self._not_held()
                self._cursor = self._scan = 0
                self._order_built_at = now
            return
        if not self._order_dirty or (now - self._order_built_at < REORDER_INTERVAL and self._order):
            return
        wanted = self._not_held()
        self._rng.shuffle(wanted)
        avail = self._availability
        # Stable sort: random among equally rare chunks. Chunks nobody has go last, so
        # picking does not scan past them on every call.
        wanted.sort(key=lambda i: avail[i] or self.chunk_count + 1)
        self._order = wanted
        self._cursor = self._scan = 0
        self._order_dirty = False
        self._order_built_at = now

    def _not_held(self) -> list[int]:
        """The wanted chunks not held, in chunk order."""
        if self.wanted is None:
            return [i for i in range(self.chunk_count) if i not in self.held]
        return sorted(i for i in self.wanted if i not in self.held)

    def _pick(self, peer: Peer, state: PeerState, *, suspect_too: bool) -> int | None:
        """The next unrequested chunk for ``peer`` in rarest-first order; one it is a suspect
        for only with ``suspect_too`` and when there is no other."""
        order = self._order
        # Skip the prefix that is done or requested for good; it only grows.
        while self._cursor < len(order) and order[self._cursor] in self.held:
            self._cursor += 1
        held, requested = self.held, self._requested
        scan = max(self._scan, self._cursor)
        while scan < len(order) and (order[scan] in held or order[scan] in requested):
            scan += 1
        self._scan = scan
        fallback = None
        limit = self.chunk_count
        if self.sequential and self._cursor < len(order):
            limit = order[self._cursor] + self.read_ahead
        for pos in range(scan, len(order)):
            index = order[pos]
            if index >= limit:
                break  # streaming: nothing further ahead than the read-ahead window
            if index in self.held or index in self._requested or not state.has(index):
                continue
            if peer in self._avoid.get(index, ()):
                if fallback is None and suspect_too:
                    fallback = index
                continue
            return index
        return fallback

    def _oldest_first(self) -> list[int]:
        """The chunks requested, oldest request first (by the first time each was asked)."""
        peers = self.peers
        return sorted(self._requested,
                      key=lambda index: min(peers[p].inflight[index] for p in self._requested[index]))

    def _pick_endgame(self, peer: Peer, state: PeerState, oldest: list[int],
                      start: int) -> tuple[int | None, int]:
        """The oldest request ``peer`` may duplicate, from ``oldest[start:]`` (a list of this
        plan, :meth:`_oldest_first`), and where to look next. A chunk passed over stays passed
        over for this peer within a plan (its holders only grow), so a plan's end game costs
        one pass over the requests per peer, not one per request it sends."""
        for pos in range(start, len(oldest)):
            index = oldest[pos]
            holders = self._requested.get(index)
            if not holders or peer in holders or not state.has(index):
                continue
            if len(holders) >= ENDGAME_DUPLICATES:
                continue
            avoided = self._avoid.get(index, ())
            # When every peer holding this request is a suspect (it timed out or lied about
            # this chunk before), a suspect may duplicate it too: otherwise a silent peer
            # could keep the chunk from a seeder that once timed out, forever.
            if peer in avoided and not all(h in avoided for h in holders):
                continue
            return index, pos + 1
        return None, len(oldest)

    def _request(self, peer: Peer, state: PeerState, index: int, now: float) -> None:
        state.inflight[index] = now
        state.delivered_at[index] = state.delivered_bytes
        self._requested.setdefault(index, set()).add(peer)

    def _unrequest(self, peer: Peer, index: int) -> None:
        holders = self._requested.get(index)
        if holders is not None:
            holders.discard(peer)
            if not holders:
                del self._requested[index]
        state = self.peers.get(peer)
        if state is not None:
            state.inflight.pop(index, None)
            state.delivered_at.pop(index, None)

    # -- outcomes -------------------------------------------------------------------------

    def on_data(self, peer: Peer, index: int, verified: bool, nbytes: int, now: float) -> DataOutcome:
        """A chunk arrived from ``peer``; ``verified`` says whether its hash matched."""
        state = self.peers.get(peer)
        if state is None or index not in state.inflight:
            # Unrequested or cancelled data: count it against nobody, use nothing.
            return DataOutcome(False)
        if verified:  # bytes that fail their hash are not throughput
            self._update_rate(state, index, nbytes, now)
        self._unrequest(peer, index)
        if not verified:
            self._scan = 0  # asked again, from here on
            state.strikes += 1
            self._avoid.setdefault(index, set()).add(peer)
            return DataOutcome(False, ban=state.strikes >= STRIKE_LIMIT)
        if index in self.held:
            return DataOutcome(False)
        self.held.add(index)
        if self.wants(index):
            self._missing -= 1
        state.delivered += 1
        self._avoid.pop(index, None)
        others = tuple((p, index) for p in self._requested.pop(index, set()))
        for p, _ in others:
            self.peers[p].inflight.pop(index, None)
            self.peers[p].delivered_at.pop(index, None)
        return DataOutcome(True, cancel=others)

    def on_reject(self, peer: Peer, index: int, now: float, *, busy: bool = False) -> bool:
        """``peer`` refused a request: it does not have the chunk, or (``busy``) too many are in flight.

        Returns whether the request was in flight; a Reject of anything else changes nothing.
        """
        state = self.peers.get(peer)
        if state is None or index not in state.inflight:
            return False
        self._unrequest(peer, index)
        self._scan = 0  # to be asked again
        if busy:
            state.choked_until = now + BUSY_BACKOFF
        else:
            if state.seeder:
                state.seeder = False
                self._seeders -= 1
                state.bits = set(range(self.chunk_count)) - {index}
                for i in state.bits:
                    self._availability[i] += 1
            elif index in state.bits:
                state.bits.discard(index)
                self._availability[index] -= 1
            self._order_dirty = True
        return True

    def expire(self, now: float, timeout: float = REQUEST_TIMEOUT) -> list[tuple[Peer, int]]:
        """Requests older than ``timeout``: released (to be asked elsewhere) and returned for cancelling."""
        expired = []
        for peer, state in self.peers.items():
            for index, asked in list(state.inflight.items()):
                if asked + timeout <= now:  # the same sum next_deadline() reports
                    expired.append((peer, index))
        if expired:
            self._scan = 0  # to be asked again
        for peer, index in expired:
            state = self.peers[peer]
            state.timeouts += 1
            state.filled = True  # requests pile up unanswered: past full, not filling
            self._unrequest(peer, index)
            self._avoid.setdefault(index, set()).add(peer)
            # A slow peer's measured rate is overstated: halve it so its pipeline shrinks.
            state.rate /= 2
            if state.samples:
                state.samples.clear()
                state.samples.append(state.rate)
        return expired

    def next_deadline(self, timeout: float = REQUEST_TIMEOUT) -> float | None:
        """When to call :meth:`expire` and :meth:`plan` again if nothing else happens first.

        The earliest of: the oldest request in flight reaching ``timeout``, and a choked
        peer's pause ending. None when neither is pending. Cheap (one look per peer), so
        a driver may ask after every event.
        """
        best: float | None = None
        for state in self.peers.values():
            if state.inflight:
                oldest = next(iter(state.inflight.values())) + timeout
                if best is None or oldest < best:
                    best = oldest
            if state.choked_until and (best is None or state.choked_until < best):
                best = state.choked_until
        return best

    def _update_rate(self, state: PeerState, index: int, nbytes: int, now: float) -> None:
        """A verified chunk of ``nbytes`` arrived for the request of ``index`` (still in flight)."""
        asked = state.inflight[index]
        elapsed = max(now - asked, 1e-4)
        state.min_rtt = elapsed if state.min_rtt is None else min(state.min_rtt, elapsed)
        state.delivered_bytes += nbytes
        state.delivered_chunks += 1
        # BBR's delivery rate: what the peer delivered while this request was out, over that time.
        asked_at = state.delivered_at.get(index, state.delivered_bytes - nbytes)
        delivered = state.delivered_bytes - asked_at
        state.samples.append(delivered / elapsed)  # the oldest falls out (maxlen)
        state.rate = max(state.samples)
        state.last_rate_update = now
        if asked_at >= state.round_end:  # asked after the round began: a round trip is over
            state.round_end = state.delivered_bytes
            self._check_full_pipe(state)

    @staticmethod
    def _check_full_pipe(state: PeerState) -> None:
        """At the end of each round trip: has the rate stopped growing (BBR's full-pipe test)?"""
        if state.filled:
            return
        if state.rate >= state.full_rate * FULL_PIPE_GROWTH:
            state.full_rate = state.rate
            state.flat_rounds = 0
            return
        state.flat_rounds += 1
        if state.flat_rounds >= FULL_PIPE_ROUNDS:
            state.filled = True
