"""The asyncio driver of one download: sources, connections, manifest, chunks, durability.

It runs the pure :class:`~p2p.swarm.scheduler.Scheduler` against real
connections. One task per connected peer reads its messages; one writer task
per peer sends what the scheduler planned. Hashing and disk writes run in a
small thread pool (BLAKE3 and ``pwrite`` release the GIL), so the event loop
keeps decrypting while chunks are checked.

Time, as in aioquic's protocol: the download reads one injected clock and
keeps one armed timer. After every event it asks what comes next (a request
to expire, a progress event, a progress record, a dial to abandon, the next
discovery round, the manifest, no-peer and no-progress timeouts; :meth:`Download.next_deadline`)
and arms the timer for the earliest; when the timer fires,
:meth:`Download.handle_timer` does what is due. Nothing polls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bitfield import bit_get, bit_indexes, bit_set, full_bitfield
from ..content import MIN_CHUNK, ContentId, ListedRoot, Manifest, decode_manifest
from ..content.select import Selection
from ..errors import (
    DiskFull,
    IntegrityError,
    NetworkError,
    NotFound,
    P2PError,
    RemoteProtocolError,
    StoreError,
    UnsafePath,
    WrongPublisher,
)
from ..events import (
    ChunkFailed,
    ChunkRequested,
    ChunkVerified,
    DownloadCompleted,
    DownloadProgress,
    DownloadStarted,
    EventBus,
    PeerBanned,
    PeerConnected,
    PeerDropped,
)
from ..identity import PeerId
from ..store import PartialDownload, Store
from ..tasks import TaskOwner
from ..wire import messages as msg
from ..wire.budget import FLOOD_BAN, Budget
from ..wire.errors import ClosedByUs, ConnectionLost
from .listing import ListingFetch
from .scheduler import REQUEST_TIMEOUT, Scheduler

log = logging.getLogger(__name__)

MAX_PEERS = 16
"""Peers one download talks to at once: enough to fill a fast link from slow peers."""
CONNECT_PARALLEL = 8
"""Dials in progress at once per download."""
CONNECT_TIMEOUT = 5.0
"""A dial (TCP + handshake) that takes longer is abandoned."""
COMMIT_INTERVAL = 0.5
"""Seconds between durable progress records: at most this much verified work is re-checked after a crash."""
PROGRESS_INTERVAL = 0.25
"""Seconds between :class:`~p2p.events.DownloadProgress` events while chunks are fetched:
often enough for a smooth bar, rarely enough to cost nothing."""
RATE_WINDOW = 3.0
"""Seconds of history behind the reported rate."""
REDISCOVER_INTERVAL = 5.0
"""Seconds between discovery rounds (the DHT and the given addresses are asked again)."""
DIAL_BACKOFF = REDISCOVER_INTERVAL
"""After a failed dial, an address is not dialled again for this long; each further failure
in a row doubles the wait, up to :data:`DIAL_BACKOFF_MAX`. A success clears it. A peer
cannot make us hammer an address it names (nor can a dead one cost a dial per round)."""
DIAL_BACKOFF_MAX = 300.0
"""The longest wait between dials of an address that keeps failing: a provider back from
a restart is found again within five minutes."""
MAX_ADDRESSES_PER_PEER = 4
"""Addresses dialled per peer id per discovery round: what one signed record carries (1..4).
A peer id named with more addresses (several records, Hellos) costs no more dials."""
MAX_BACKOFF_ENTRIES = 4096
"""Failed addresses remembered per download; the oldest are forgotten first."""
CHECK_BACKLOG_BYTES = 16 << 20
"""Bytes of received chunks waiting for their hash check and write. Past it, no peer's
messages are taken until the checks catch up: the connections' receive queues fill, their
sockets are no longer read, and TCP slows the senders. Without it a CPU-starved hashing
pool would hold every chunk in flight (:data:`~p2p.swarm.scheduler.INFLIGHT_BUDGET_BYTES`)
in memory; 16 MiB keeps two hashing threads busy for several milliseconds."""
CHECK_JOB_BYTES = 256 << 10
"""Bytes of received chunks checked and written in one job of the hashing pool. The chunks of
one loop turn go in jobs of about this size, so a folder's small chunks (a whole file of a
few KiB each) cost one thread hand-off and one wake-up of the loop per 64 or so, not one
each; 64 KiB to 1 MiB chunks still go one or a few to a job."""
CHECK_JOBS_MIN = 2
"""Jobs at least, when two or more chunks came in one loop turn: the hashing pool's threads
(``HASH_THREADS`` in the node), so both hash."""
PEER_SILENCE_TIMEOUT = 20.0
"""A peer asked for chunks that sends nothing at all for this long (suspended, or behind a link
that died without a reset) is dropped: longer than a request's own timeout
(:data:`~p2p.swarm.scheduler.REQUEST_TIMEOUT`, whose chunks go to others first), so a slow
peer that still delivers is never dropped by it."""
WRONG_PUBLISHER_GRACE = 2.0
"""After a manifest signed by someone other than ``--from``, wait this long for the right one."""
SPECULATIVE_CHUNKS = 4
"""Chunks asked, before the manifest is known, of a peer that claims the content (a ticket's,
``--peer``, a provider record), in the flight that asks for the manifest: the chunk size is
not known yet, but every file has a chunk 0, and four chunks (256 KiB to 4 MiB) are more than
TCP's first round trips can carry, so the link is busy from the first round trip on instead
of idle until the manifest and a Bitfield came back (two round trips on a long path)."""
SPECULATIVE_PEERS = 2
"""Peers given speculative requests, each its own :data:`SPECULATIVE_CHUNKS` (peer ``n``
chunks ``n*k`` to ``n*k+k-1``): two keep the start from hanging on one slow peer; more only
asks for chunks that a file of a few chunks lacks (rejected, ``BAD_INDEX``, at no cost)."""
SPECULATIVE_HOLD_BYTES = 16 << 20
"""Chunks that answer speculative requests before the scheduler exists are held (not
dropped, not charged as a flood) up to this many bytes, then checked and written as any
other: every speculative chunk at up to 2 MiB per chunk (files up to 2 GiB and a bit more);
beyond it a chunk is dropped and asked again later."""

Address = tuple[str, int]
Connector = Callable[[Address, PeerId | None, Sequence[msg.Message]], Awaitable[Any]]
"""Dials ``(address, expected peer or None, first messages)`` and returns a connection; the
first messages go out right after our Hello, without waiting for the remote's
(:func:`p2p.wire.transport.connect`'s ``first``)."""
ProviderSource = Callable[[ContentId], AsyncIterator[tuple[PeerId | None, Sequence[Address], bool]]]
"""Yields ``(peer, addresses, holds)``: ``holds`` when the source says the peer has the content
(a signed provider record), not only that it is there (a peer connected to us)."""
Clock = Callable[[], float]
"""Seconds on a monotonic clock; only differences matter."""


@dataclass(frozen=True)
class FetchOptions:
    """What to fetch and how (built by the node from the front end's request)."""

    content_id: ContentId
    dest: Path | None
    """Final path; None means ``download_dir / manifest name``."""
    download_dir: Path
    publisher: PeerId | None = None
    """Required publisher (``--from``)."""
    peers: tuple[Address, ...] = ()
    """Addresses to dial before (and besides) the DHT: the ticket's and ``--peer``."""
    timeout: float = 30.0
    """Seconds to find a verified manifest, the longest stall with no peer at all, and the
    longest stall with no verified chunk (counted from the start of the transfer)."""
    sequential: bool = False
    """Chunks in file order within a read-ahead window (streaming, :meth:`Node.stream`)."""
    selection: Selection = field(default_factory=Selection)
    """The files wanted (``--include``/``--exclude``, ticked files); the default wants all.
    Only their chunks are asked for; :meth:`Download.select` changes it while it runs."""


@dataclass
class _Peer:
    conn: Any
    peer: PeerId
    outbox: asyncio.Queue[msg.Message]
    address: Address
    """The address we dialled."""
    budget: Budget
    """What it may still spend on messages that change nothing (then it is dropped and banned)."""
    bitfield: tuple[int, bytearray] | None = None
    """Its Bitfield, and the Haves since, while the transfer has not started."""
    manifest_answered: bool = False
    """It answered our one GetManifest: another Manifest from it changes nothing."""
    bitfield_answered: bool = False
    """It answered our one GetBitfield: another Bitfield from it changes nothing."""
    holds: bool = False
    """It was named as holding the content (a ticket's, ``--peer``, a provider record): until
    its Bitfield says otherwise the scheduler takes it for a seeder."""
    speculative: set[int] = field(default_factory=set)
    """Chunks asked with the GetManifest (:data:`SPECULATIVE_CHUNKS`) and not yet answered nor
    handed to the scheduler."""
    asked_at: float = 0.0
    """When the dial that sent the speculative requests began (they were sent later, so a
    round trip measured from here is never too short)."""
    early: dict[int, Any] = field(default_factory=dict)
    """Payloads answering speculative requests that came before the scheduler existed."""
    heard_at: float = 0.0
    """When it last sent us anything (see :data:`PEER_SILENCE_TIMEOUT`)."""
    owed_since: float | None = None
    """Since when it has had requests in flight without a pause (None: nothing asked)."""
    moved: bool = False
    """Its connection was replaced (:meth:`Download.move`): ending it drops nobody."""


class Download:
    """One running download. Create, then ``await run()``; cancel the task to pause.

    ``clock`` is where every time the download acts on comes from (default: the
    running loop's clock). A test passes a fake one, moves it forward and calls
    :meth:`handle_timer`; the download never sleeps on its own.
    """

    def __init__(self, options: FetchOptions, *, store: Store, events: EventBus,
                 connect: Connector, providers: ProviderSource | None,
                 self_peer: PeerId, self_addrs: Callable[[], Sequence[Address]],
                 on_have: Callable[[bytes, int], None],
                 on_manifest: Callable[[Manifest], None],
                 pool: ThreadPoolExecutor, sync_pool: ThreadPoolExecutor,
                 clock: Clock | None = None,
                 place: Callable[[Manifest, Path], Awaitable[Path]] | None = None,
                 on_punch: Callable[[Any, msg.Message], bool] | None = None) -> None:
        self.options = options
        self._on_punch = on_punch
        """Given the hole punch messages a peer sends on our connection to it (a relay
        circuit's), with that connection: the node's punch reads them. It returns whether a
        punch took the message (one no punch takes is charged to the peer's budget)."""
        self._place = place
        """Settles the destination once the manifest is in, before any chunk is asked for: returns
        the path to download into (it may rename), or raises to refuse (see :meth:`Node.fetch`)."""
        self.content_id = options.content_id
        self.store = store
        self.events = events
        self._connector = connect
        self._providers = providers
        self._self_peer = self_peer
        self._self_addrs = self_addrs
        self._on_have = on_have
        self._on_manifest = on_manifest
        self._pool = pool
        self._sync_pool = sync_pool
        """One thread for fdatasync + progress records: a slow disk never stalls chunk checks."""
        self._loop = asyncio.get_running_loop()
        self._clock: Clock = clock if clock is not None else self._loop.time
        self._tasks = TaskOwner(f"download {self.content_id.short()}", log)
        self.manifest: Manifest | None = None
        self._listing_fetch: ListingFetch | None = None
        """A listed directory's listing being fetched (its root verified, the manifest not yet whole)."""
        self._listing_bytes: bytearray | None = None
        """The fetched listing, handed to the store with the manifest."""
        self._decoding_listing = False
        """Every listing chunk verified (or the stored copy being read), the listing being
        decoded: the manifest timeout does not run (nothing is awaited of any peer) and another
        root starts no second fetch."""
        self._root_senders: list[PeerId] = []
        """Peers whose root came while the stored listing was being read (sources if it fails)."""
        self._listing_at = 0.0
        """When the listing fetch started or last verified a chunk (the manifest timeout counts
        from it: a large listing on a slow link is not cut off while it moves)."""
        self.selection = options.selection
        """The files wanted now (see :meth:`select`)."""
        self._selected: list[int] | None = None
        """The entries :attr:`selection` picks (None: every one), once the manifest is in."""
        self._selected_size = 0
        """Bytes of those entries (summed once per selection, not per progress event)."""
        self.partial: PartialDownload | None = None
        self.scheduler: Scheduler | None = None
        self._peers: dict[PeerId, _Peer] = {}
        self._tried: set[Address] = set()
        """Addresses dialled since the last discovery round."""
        self._per_peer: collections.Counter[PeerId] = collections.Counter()
        """Addresses dialled per peer id since the last discovery round."""
        self._round_started = 0.0
        """When the current discovery round began (dial backoff counts from it)."""
        self._backoff: dict[Address, tuple[int, float]] = {}
        """Address -> (failed dials in a row, when it may be dialled again)."""
        self._dial_errors: dict[Address, str] = {}
        """Why each address we could not connect to failed (cleared when one connects)."""
        self._unsettled = 0
        """Addresses queued to dial or being dialled."""
        self._round_done = False
        """The current discovery round has named every address it will."""
        self._ever_connected = False
        self._connected_addrs: set[Address] = set()
        self._checking: set[tuple[PeerId, int]] = set()
        self._checking_bytes = 0
        """Bytes of the chunks in :attr:`_checking`."""
        self._to_check: list[tuple[_Peer, int, Any]] = []
        """Chunks received in this loop turn, handed to the pool at its end (:meth:`_start_checks`)."""
        self._backlog_cleared = asyncio.Event()
        """Set while :attr:`_checking_bytes` is at most :data:`CHECK_BACKLOG_BYTES`."""
        self._backlog_cleared.set()
        """(peer, chunk) copies being verified: a second copy of the same request is ignored."""
        self._candidates: asyncio.Queue[tuple[PeerId | None, Address, bool]] = asyncio.Queue()
        self._listing = False
        """Only the manifest is wanted (:meth:`fetch_manifest`): no speculative requests."""
        self._speculated = 0
        """Peers given speculative requests so far (at most :data:`SPECULATIVE_PEERS`)."""
        self._early_bytes = 0
        """Bytes of speculative chunks held until the scheduler exists."""
        self._dialing = 0
        self._peer_slots = asyncio.Semaphore(MAX_PEERS)
        self._manifest_ready = asyncio.Event()
        """Set when a verified manifest arrived, or when the download failed before one did."""
        self._finished = asyncio.Event()
        """Set when the download stops: every chunk held, failed, or (in run's cleanup) paused."""
        self._fatal: Exception | None = None
        self._wrong_publisher: WrongPublisher | None = None
        self._bad_manifests: list[str] = []
        """Why each peer banned for its manifest was (the error, if no valid one comes)."""
        self._wrong_publisher_at: float | None = None
        # Time: one armed timer, and the deadlines it is armed from.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._started = self._clock()
        self._alone_since: float | None = self._started
        """When the last peer left (or the download began without one); None while one is connected."""
        self._last_verified_at = self._started
        """When the last new chunk verified (or the transfer started): peers that claim chunks
        and never deliver them cannot hold the download past this plus the timeout."""
        self._banned_for_bad_data: set[PeerId] = set()
        """Peers dropped because the chunks they sent failed verification."""
        self._dropped_otherwise = False
        self._lost: tuple[PeerId, str] | None = None
        self._lost_has_it = True
        self._lost_at: float | None = None
        """When the last peer the transfer counted on was lost, leaving none (None: not so)."""
        self._transfer_at = 0.0
        """When the transfer started (the scheduler came to be)."""
        """The last peer the download lost for a reason worth saying (:meth:`_lose`)."""
        """A peer was dropped for another reason (it left, a network error, a bad bitfield)."""
        self._dial_deadlines: dict[asyncio.Timeout, float] = {}
        self._rediscover = asyncio.Event()
        self._rediscover_at: float | None = None
        self._next_progress = math.inf
        self._next_commit = math.inf
        """Earliest start of the next progress record (one is started only if there is news)."""
        self._update_pending = False
        """A scheduling pass is queued on the loop (:meth:`_update_soon`)."""
        self._commit: asyncio.Future[int] | None = None
        self._recorded = 0
        """:attr:`fetched_this_run` when the last progress record started."""
        self._bytes_this_run = 0
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._progress: DownloadProgress | None = None
        self.chunks_by_peer: collections.Counter[PeerId] = collections.Counter()
        self.paths: dict[PeerId, str] = {}
        """How each peer was reached (``direct``, ``punched``, ``relayed``), as last connected."""
        self.fetched_this_run = 0
        """Chunks downloaded (verified) by this run: a resumed run never re-fetches recorded ones."""
        self.wasted_bytes = 0
        """Bytes received that failed verification."""
        self.progressed = asyncio.Event()
        """Set whenever a chunk verified or the download stopped (a streaming reader clears
        it, then waits)."""

    # -- public ------------------------------------------------------------------------

    @property
    def peers(self) -> list[PeerId]:
        """Peers connected for this download."""
        return list(self._peers)

    def connections(self) -> list[tuple[PeerId, Any, int]]:
        """(peer, its connection, its strikes) for each connected peer, for live views."""
        scheduler = self.scheduler
        return [(peer, state.conn,
                 scheduler.peers[peer].strikes if scheduler and peer in scheduler.peers else 0)
                for peer, state in self._peers.items()]

    @property
    def progress(self) -> DownloadProgress | None:
        """The latest progress figures (chunks and bytes done, rate, ETA, peers): the last
        :class:`~p2p.events.DownloadProgress` published. None until the transfer starts."""
        return self._progress

    @property
    def selected_paths(self) -> list[str] | None:
        """The relative paths of the files wanted (None: every file, or no manifest yet)."""
        if self.manifest is None or self._selected is None:
            return None
        return [self.manifest.entries[i].path for i in self._selected]

    def select(self, selection: Selection) -> None:
        """Want the files ``selection`` picks from now on (the terminal app's ticks): chunks
        of files no longer wanted are cancelled, newly wanted ones asked for; what is held
        stays held. Before the manifest is in, it is what the transfer starts with.

        Once every wanted chunk is in (the files are being put in place) it changes nothing: a
        later fetch gets more. Raises :class:`~p2p.errors.BadInput` when it picks no file of
        the manifest, or names one that is not in it (the selection is then unchanged).
        """
        manifest = self.manifest
        if manifest is None:
            self.selection = selection
            return
        entries = None if selection.everything else selection.check(manifest)
        if self._finished.is_set() and self.scheduler is not None:
            return  # every wanted file is in (or it stopped): what lands is decided; fetch again
        self.selection = selection
        self._set_selected(entries)
        scheduler, partial = self.scheduler, self.partial
        if scheduler is None or partial is None:
            return  # the transfer starts with it
        partial.select(entries)
        wanted = None if entries is None else partial.chunk_map.chunks_of(entries)
        for peer, index in scheduler.set_wanted(wanted):
            state = self._peers.get(peer)
            if state is not None:
                state.outbox.put_nowait(msg.Cancel(self.content_id.digest, index))
        if scheduler.complete:
            self._finished.set()
            self.progressed.set()
            return
        self._last_verified_at = self._clock()  # new chunks to find: the stall clock restarts
        self._update()

    async def run(self) -> Path:
        """Fetch everything, verify it, put it in place. Returns the final path.

        Raises :class:`NotFound` when no provider answers within the timeout,
        :class:`IntegrityError` subclasses for a bad or wrongly signed manifest,
        :class:`DiskFull` when the disk fills (progress kept), :class:`NetworkError`
        when every peer is gone for longer than the timeout (progress kept),
        :class:`NotFound` when peers are connected but no chunk verified for the
        timeout (progress kept), and :class:`IntegrityError` when every peer that
        offered the content was banned for sending chunks that fail verification.
        """
        try:
            await self._find_manifest()
            if self._fatal is None:
                await self._start_transfer()
                self._update()
                await self._finished.wait()
            if self._fatal is None:
                return await self._complete()
        except OSError as exc:  # the destination's folder cannot be made, say
            raise StoreError(f"cannot write the download: {exc}") from exc
        finally:
            await self._stop()
        # Raised once everything is closed and the progress is recorded.
        raise self._fatal

    async def fetch_manifest(self) -> Manifest:
        """Find and verify the manifest only, and stop (a listing: ``p2p ls ID``): no file is
        opened, no chunk asked for. Raises as :meth:`run` does before its transfer starts."""
        self._listing = True
        try:
            await self._find_manifest()
            if self._fatal is None:
                assert self.manifest is not None
                return self.manifest
        finally:
            await self._stop()
        raise self._fatal

    async def _find_manifest(self) -> None:
        """Start finding and dialling peers; return once a verified manifest is in (or the
        download failed before one was)."""
        self._spawn(self._discover(), "discover")
        self._spawn(self._dialer(), "dialer")
        self._update()
        await self._manifest_ready.wait()

    def next_deadline(self) -> float | None:
        """When, on the download's clock, :meth:`handle_timer` next has something to do.

        None when nothing is pending on time alone (or the download stopped).
        """
        if self._finished.is_set():
            return None
        times = list(self._dial_deadlines.values())
        if self._rediscover_at is not None:
            times.append(self._rediscover_at)
        scheduler = self.scheduler
        if self.manifest is None and not self._decoding_listing:
            times.append(max(self._started, self._listing_at) + self.options.timeout)
            if self._wrong_publisher_at is not None:
                times.append(self._wrong_publisher_at + WRONG_PUBLISHER_GRACE)
            fetch = self._listing_fetch
            if fetch is not None and (expiry := fetch.next_deadline(REQUEST_TIMEOUT)) is not None:
                times.append(expiry)
        elif scheduler is not None:
            requests = scheduler.next_deadline(REQUEST_TIMEOUT)
            if requests is not None:
                times.append(requests)
            times.append(self._next_progress)
            times += [since + PEER_SILENCE_TIMEOUT for state in self._peers.values()
                      if (since := self._silent_since(state)) is not None]
            if self._commit is None and self.fetched_this_run != self._recorded:
                times.append(self._next_commit)
            if not self._peers and not self._dialing and self._alone_since is not None:
                times.append(self._alone_since + self.options.timeout)
            times.append(self._last_verified_at + self.options.timeout)
        deadline = min(times, default=math.inf)
        return None if deadline == math.inf else deadline

    def handle_timer(self) -> None:
        """Do everything due by the download's clock, then arm the timer for what is next.

        The armed timer calls this. A test that moved a fake clock forward calls it
        too: the download cannot know when a fake clock moves.
        """
        self._disarm()
        if self._finished.is_set():
            return
        now = self._clock()
        for scope, deadline in list(self._dial_deadlines.items()):
            if now >= deadline:
                del self._dial_deadlines[scope]
                scope.reschedule(-math.inf)  # already past: the dial times out at once
        if self._rediscover_at is not None and now >= self._rediscover_at:
            self._rediscover_at = None
            self._rediscover.set()
        if self.manifest is None and not self._decoding_listing:
            self._check_manifest_deadline(now)
        elif self.scheduler is not None:
            self._check_transfer_deadlines(now)
        self._update()

    # -- time --------------------------------------------------------------------------

    def _update(self) -> None:
        """After every event: send what the scheduler plans now, then arm the timer."""
        if self._finished.is_set():
            return
        scheduler = self.scheduler
        if scheduler is not None:
            cid = self.content_id.digest
            for peer, index in scheduler.plan(self._clock()):
                state = self._peers.get(peer)
                if state is None:  # pragma: no cover - scheduler and peer table move together
                    scheduler.remove_peer(peer)
                    continue
                state.outbox.put_nowait(msg.Request(cid, index))
                self.events.publish(ChunkRequested(self.content_id, index, peer))
        self._arm()

    def _arm(self) -> None:
        deadline = self.next_deadline()
        if deadline is None:
            return  # a timer still armed fires, finds nothing due and is not armed again
        if self._timer is not None:
            assert self._timer_at is not None
            if self._timer_at <= deadline:
                return  # it fires first and arms again then: no churn per event
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - self._clock()), self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        try:
            self.handle_timer()
        except Exception as exc:  # a bug: end the download with it rather than stall it
            log.exception("download %s: timer failed", self.content_id.short())
            self._fail(exc)

    def _check_manifest_deadline(self, now: float) -> None:
        fetch = self._listing_fetch
        if fetch is not None:
            for peer, index in fetch.expire(now, REQUEST_TIMEOUT):
                state = self._peers.get(peer)
                if state is not None:
                    state.outbox.put_nowait(msg.Cancel(fetch.listing_id, index))
            self._ask_listing()
        deadline = max(self._started, self._listing_at) + self.options.timeout
        if fetch is not None and now >= deadline:
            self._fail(NotFound(f"the listing of {self.content_id} did not come within "
                                f"{self.options.timeout:g} s ({fetch.done}/"
                                f"{fetch.root.listing.chunk_count} chunks from {fetch.peers} peers)"))
            return
        wrong, wrong_at = self._wrong_publisher, self._wrong_publisher_at
        if wrong is not None and wrong_at is not None and \
                (now >= wrong_at + WRONG_PUBLISHER_GRACE or now >= deadline):
            self._fail(wrong)
        elif now >= deadline and self._bad_manifests:
            count = len(self._bad_manifests)
            self._fail(IntegrityError(
                f"no valid manifest of {self.content_id} within {self.options.timeout:g} s: "
                f"{_peers(count)} sent one that is refused and {'was' if count == 1 else 'were'} "
                f"banned ({self._bad_manifests[-1]})"))
        elif now >= deadline:
            lost = f" (peer {self._lost[0].short()} {self._lost[1]})" if self._lost else ""
            self._fail(NotFound(f"no peer provided {self.content_id} within {self.options.timeout:g} s{lost}"))

    def _lose(self, state: _Peer, reason: str, *, has_it: bool = True) -> None:
        """Drop a peer the download was counting on, and say why (the front end shows it).
        ``has_it``: False when the peer no longer has the content (then, left with no peer,
        the download ends as not found rather than as a network failure)."""
        self._lost_has_it = has_it
        # Not dialled again by the next round: it just failed us, and a look for others
        # must not end by reconnecting to it (a frozen peer's kernel still accepts).
        self._backoff[state.address] = (1, self._clock() + DIAL_BACKOFF)
        self._drop(state.peer, reason, notable=True)
        if not self._tasks.closed:
            self._spawn(state.conn.aclose(reason), "close lost peer")
        if not self._peers and self.manifest is not None:
            self._lost_at = self._clock()
            self._check_lost()

    def _check_lost(self) -> None:
        """Fail at once when the transfer lost its last peer (it stopped answering, or its
        copy changed) and a look for others since found nobody: the person is told which
        peer went and why within seconds, not after the whole timeout as data nobody sent.
        Without discovery (a ticket and no DHT) nobody else can turn up, so that is now."""
        lost_at = self._lost_at
        if lost_at is None or self._lost is None or self._peers or self._dialing \
                or self._unsettled or not self._round_done or self.scheduler is None \
                or self.partial is None:
            return
        if self._providers is not None and self._round_started < lost_at:
            return  # the next round (REDISCOVER_INTERVAL) may find another provider
        peer, reason = self._lost
        scheduler = self.scheduler
        kept = f"progress is kept ({scheduler.wanted_held}/{scheduler.wanted_count} chunks)"
        error = NetworkError if self._lost_has_it else NotFound
        self._fail(error(f"no peer left to download {self.content_id} from: the last one, "
                         f"{peer.short()}, {reason}, and no other was found; {kept}"))

    def _silent_peers(self, now: float) -> list[_Peer]:
        scheduler = self.scheduler
        if scheduler is None:
            return []
        return [state for peer, state in self._peers.items()
                if (since := self._silent_since(state)) is not None
                and now >= since + PEER_SILENCE_TIMEOUT]

    def _silent_since(self, state: _Peer) -> float | None:
        """Since when a peer owes us an answer and said nothing: its last word, or its oldest
        request in flight if that is later (a peer idle while nothing was asked of it, during
        a long listing decode say, is not silent). None when nothing is asked of it."""
        scheduler = self.scheduler
        held = scheduler.peers.get(state.peer) if scheduler is not None else None
        if held is None or not held.inflight:
            state.owed_since = None
            return None
        if state.owed_since is None:  # its requests expired and went out again: still owed
            # Speculative requests count from the transfer's start: before it, their answers
            # wait unchecked (a long listing decode must not make their sender look silent).
            state.owed_since = max(next(iter(held.inflight.values())),  # kept in the order asked
                                   self._transfer_at)
        return max(state.heard_at, state.owed_since)

    def _check_transfer_deadlines(self, now: float) -> None:
        scheduler, partial = self.scheduler, self.partial
        assert scheduler is not None and partial is not None
        for silent in self._silent_peers(now):
            self._lose(silent, f"stopped answering (nothing for {PEER_SILENCE_TIMEOUT:g} s)")
        for peer, index in scheduler.expire(now, REQUEST_TIMEOUT):
            state = self._peers.get(peer)
            if state is not None:
                state.outbox.put_nowait(msg.Cancel(self.content_id.digest, index))
        if self._commit is None and self.fetched_this_run != self._recorded and now >= self._next_commit:
            self._start_commit(now)
        alone = not self._peers and not self._dialing and self._alone_since is not None \
            and now >= self._alone_since + self.options.timeout
        stalled = now >= self._last_verified_at + self.options.timeout
        if alone or stalled:
            self._fail(self._no_progress_error(alone))
            return
        if now >= self._next_progress:
            self._publish_progress(now)

    def _no_progress_error(self, alone: bool) -> P2PError:
        """Why the download ends when the timeout passed with no peer or no verified chunk."""
        scheduler, partial = self.scheduler, self.partial
        assert scheduler is not None and partial is not None
        timeout = self.options.timeout
        kept = f"progress is kept ({scheduler.wanted_held}/{scheduler.wanted_count} chunks)"
        if not self._peers and self._banned_for_bad_data and not self._dropped_otherwise:
            count = len(self._banned_for_bad_data)
            return IntegrityError(
                f"{_peers(count)} that offered {self.content_id} sent chunks that fail "
                f"verification and {'was' if count == 1 else 'were'} banned; no other peer "
                f"has it; {kept}")
        if alone or (not self._peers and self._lost is not None):
            lost = f" (the last one, {self._lost[0].short()}, {self._lost[1]})" if self._lost else ""
            error = NetworkError if self._lost_has_it else NotFound
            return error(f"no peer to download {self.content_id} from for {timeout:g} s{lost}; {kept}")
        claiming = sum(1 for state in scheduler.peers.values()
                       if state.seeder or any(scheduler.wants(i) and i not in scheduler.held
                                              for i in state.bits))
        if claiming:
            claim = "claims" if claiming == 1 else "claim"
            return NotFound(f"no verified data for {timeout:g} s from {_peers(claiming)} that "
                            f"{claim} the content {self.content_id}; {kept}")
        return NotFound(f"no verified data for {timeout:g} s: no connected peer has the missing "
                        f"chunks of {self.content_id}; {kept}")

    # -- sources and dialling ------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = self._tasks.spawn(coro, name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        # The owner logs it; the download ends with it (each task catches what it expects).
        if not task.cancelled() and (exc := task.exception()) is not None \
                and isinstance(exc, Exception):
            self._fail(exc)

    def offer(self, peer: PeerId, addrs: Sequence[Address], holds: bool = False) -> None:
        """Dial ``peer`` at ``addrs`` now, between discovery rounds (a peer that just
        appeared on the LAN): a candidate like the ones the provider source yields."""
        if self._finished.is_set():
            return
        for addr in addrs:
            self._add_candidate(peer, addr, holds)

    def _add_candidate(self, peer: PeerId | None, addr: Address, holds: bool) -> None:
        if peer is not None and (peer == self._self_peer or peer in self._peers
                                 or self.store.is_banned(peer)):
            return
        if addr in self._tried or addr in self._connected_addrs or addr in set(self._self_addrs()):
            return
        backoff = self._backoff.get(addr)
        if backoff is not None and backoff[1] > self._clock():
            return
        if peer is not None:
            if self._per_peer[peer] >= MAX_ADDRESSES_PER_PEER:
                return
            self._per_peer[peer] += 1
        self._tried.add(addr)
        self._unsettled += 1
        self._candidates.put_nowait((peer, addr, holds))

    def _check_unreachable(self) -> None:
        """Fail at once when the addresses we were given (a ticket's, ``--peer``) all refused
        us or timed out and discovery found nothing else to try: a ticket whose only sharer is
        down says so in seconds, not after the whole timeout as content nobody has.

        Only for a new download whose every failed address was a given one: a provider record
        may be stale while a fresh one is on its way, and a download being resumed keeps
        trying its sources until the timeout (they may be restarting too)."""
        if self.manifest is not None or self._ever_connected or self._peers or self._unsettled \
                or not self._round_done or not self._dial_errors or self._listing_fetch is not None:
            return
        given = set(self.options.peers)
        if not given.issuperset(self._dial_errors) or self.store.download_info(self.content_id):
            return
        shown = ", ".join(f"{host}:{port} ({why})" for (host, port), why in
                          list(self._dial_errors.items())[:4])
        more = len(self._dial_errors) - 4
        self._fail(NetworkError(f"could not connect to {shown}" + (f" and {more} more" if more > 0 else "")
                                + f" for {self.content_id}"))

    def _dial_failed(self, addr: Address, why: str = "failed") -> None:
        self._dial_errors[addr] = why
        failures = self._backoff.pop(addr, (0, 0.0))[0] + 1
        wait = min(DIAL_BACKOFF * 2 ** min(failures - 1, 32), DIAL_BACKOFF_MAX)
        # Counted from the round that named it, not from when the dial gave up: the first
        # wait then ends by the next round (rounds are REDISCOVER_INTERVAL apart), the
        # second skips one round, and so on, however long the dial took.
        self._backoff[addr] = (failures, self._round_started + wait)  # re-inserted: the newest
        if len(self._backoff) > MAX_BACKOFF_ENTRIES:
            del self._backoff[next(iter(self._backoff))]

    async def _discover(self) -> None:
        while True:
            self._round_started = self._clock()
            self._round_done = False
            for addr in self.options.peers:
                self._add_candidate(None, addr, True)
            if self._providers is None:
                self._round_done = True
                self._check_unreachable()
                return
            try:
                async for peer, addrs, holds in self._providers(self.content_id):
                    for addr in addrs:
                        self._add_candidate(peer, addr, holds)
            except P2PError as exc:
                log.debug("provider lookup for %s: %s", self.content_id.short(), exc)
            self._round_done = True
            self._check_unreachable()
            self._check_lost()
            # Look again later for new providers (partial seeders appear as they start).
            self._rediscover.clear()
            self._rediscover_at = self._clock() + REDISCOVER_INTERVAL
            self._update()
            await self._rediscover.wait()
            # Addresses may be dialled again: a provider whose connection dropped may still
            # be there (a ticket's address above all, when there is no DHT to ask).
            self._tried.clear()
            self._per_peer.clear()

    async def _dialer(self) -> None:
        slots = asyncio.Semaphore(CONNECT_PARALLEL)
        while True:
            peer, addr, holds = await self._candidates.get()
            await self._peer_slots.acquire()  # released when the dial fails or the peer leaves
            await slots.acquire()
            self._dialing += 1
            self._spawn(self._dial(peer, addr, holds, slots), f"dial {addr}")

    def _first_messages(self, holds: bool) -> tuple[tuple[msg.Message, ...], set[int]]:
        """What a dial sends with its Hello, and the chunks among it asked speculatively."""
        cid = self.content_id.digest
        if self.manifest is not None:
            return (msg.GetBitfield(cid),), set()
        first: list[msg.Message] = [msg.GetManifest(cid), msg.GetBitfield(cid)]
        speculative: set[int] = set()
        if holds and not self._listing and self._speculated < SPECULATIVE_PEERS \
                and self._guess_is_wanted():
            start = self._speculated * SPECULATIVE_CHUNKS
            self._speculated += 1
            speculative = set(range(start, start + SPECULATIVE_CHUNKS))
            first += [msg.Request(cid, index) for index in sorted(speculative)]
        return tuple(first), speculative

    def _guess_is_wanted(self) -> bool:
        """Speculative chunks (the first ones) are asked only of a fresh download of all of it:
        with a selection they may be files not wanted, and a resumed download may hold them
        already. Either way their bytes would cross the network for nothing."""
        if not self.selection.everything:
            return False
        recorded = self.store.recorded_bitfield(self.content_id)
        return recorded is None or not any(recorded[1])

    async def _dial(self, peer: PeerId | None, addr: Address, holds: bool,
                    slots: asyncio.Semaphore) -> None:
        conn = None
        asked_at = self._clock()
        first, speculative = self._first_messages(holds)
        try:
            conn = await self._connect_in_time(addr, peer, first)
        except (P2PError, OSError, TimeoutError) as exc:
            log.debug("dial %s failed: %s", addr, exc)
            self._dial_failed(addr, _dial_error(exc))
            self._peer_slots.release()
        finally:
            self._dialing -= 1
            self._unsettled -= 1
            slots.release()
        if conn is None:
            self._check_unreachable()
            self._check_lost()
            self._update()  # the no-peer timeout may be due now
            return
        self._backoff.pop(addr, None)
        self._dial_errors.clear()
        self._ever_connected = True
        remote: PeerId = conn.remote_peer
        if remote == self._self_peer or remote in self._peers or self.store.is_banned(remote):
            self._peer_slots.release()
            self._update()
            await conn.aclose("duplicate or banned")
            return
        # Registered here, not in the peer's task: there is no moment between the dial and
        # the peer's task in which the download has neither a peer nor a dial.
        state = _Peer(conn, remote, asyncio.Queue(), addr, Budget(self._clock()), holds=holds,
                      speculative=speculative, asked_at=asked_at, heard_at=self._clock())
        self._peers[remote] = state
        self.paths[remote] = str(getattr(conn, "path", "direct"))
        self._connected_addrs.add(addr)
        self._alone_since = None
        self._lost_at = None
        self._spawn(self._serve_peer(state), f"peer {remote.short()}")
        self._join_scheduler(state)
        self._update()

    def move(self, peer: PeerId, conn: Any, *, replacing: Any) -> bool:
        """Carry on with ``peer`` over ``conn`` (a direct connection a hole punch opened)
        instead of ``replacing`` (the relay circuit the punch ran over), which is closed:
        what was in flight on it goes back to the scheduler and is asked again, here or
        elsewhere. Returns False (and leaves ``conn`` to the caller) when the peer is no
        longer connected over ``replacing``."""
        old = self._peers.get(peer)
        if old is None or old.conn is not replacing or self._finished.is_set() \
                or conn.remote_peer != peer:
            return False
        old.moved = True
        self._peers.pop(peer)
        if self.scheduler is not None:
            self.scheduler.remove_peer(peer)  # its in-flight chunks are wanted again
        if self._listing_fetch is not None:
            self._listing_fetch.remove_peer(peer)
        self._early_bytes -= sum(len(payload) for payload in old.early.values())
        old.conn.close_nowait("moved to a direct connection")
        state = _Peer(conn, peer, asyncio.Queue(), old.address, old.budget, holds=old.holds,
                      asked_at=self._clock(), heard_at=self._clock(),
                      manifest_answered=old.manifest_answered)
        cid = self.content_id.digest
        if self.manifest is None and not old.manifest_answered:
            state.outbox.put_nowait(msg.GetManifest(cid))
        state.outbox.put_nowait(msg.GetBitfield(cid))
        self._peers[peer] = state
        self.paths[peer] = str(getattr(conn, "path", "direct"))
        self._spawn(self._serve_peer(state), f"peer {peer.short()}")
        self._join_scheduler(state)
        if self._listing_fetch is not None:
            self._ask_listing()
        self._update()
        return True

    async def _connect_in_time(self, addr: Address, peer: PeerId | None,
                               first: Sequence[msg.Message]) -> Any:
        """Dial, abandoned by :meth:`handle_timer` at ``CONNECT_TIMEOUT`` on the download's clock."""
        async with asyncio.timeout(None) as scope:
            self._dial_deadlines[scope] = self._clock() + CONNECT_TIMEOUT
            self._arm()
            try:
                return await self._connector(addr, peer, first)
            finally:
                self._dial_deadlines.pop(scope, None)

    # -- one peer ------------------------------------------------------------------------

    async def _serve_peer(self, state: _Peer) -> None:
        peer, conn = state.peer, state.conn
        self.events.publish(PeerConnected(peer, conn.remote_address, inbound=False))
        reason = "done"
        writer = self._spawn(self._writer(state), f"writer {peer.short()}")
        try:
            # GetManifest, GetBitfield and any speculative Requests went out with our Hello.
            async for message in conn:
                self._handle(state, message)
                if peer not in self._peers:
                    reason = "banned"
                    break
                if not self._backlog_cleared.is_set():
                    await self._backlog_cleared.wait()  # see CHECK_BACKLOG_BYTES
        except (ConnectionLost, ClosedByUs) as exc:
            reason = str(exc) or "closed"
        except (RemoteProtocolError, IntegrityError) as exc:
            reason = f"misbehaved: {exc}"
        except (NetworkError, OSError) as exc:
            reason = f"network: {exc}"
        except asyncio.CancelledError:
            reason = "download stopped"
            raise
        except Exception as exc:  # the per-peer edge: log, drop the peer, keep the download
            log.exception("peer %s: unexpected error", peer.short())
            reason = f"error: {exc}"
        finally:
            writer.cancel()
            if not state.moved:
                self._peer_slots.release()
                self._drop(peer, reason)
            with contextlib.suppress(Exception):
                await conn.aclose(reason)

    async def _writer(self, state: _Peer) -> None:
        try:
            while True:
                message = await state.outbox.get()
                await state.conn.send(message)
        except (NetworkError, ClosedByUs, OSError) as exc:  # ConnectionLost is a NetworkError
            # The reader sees the same close and drops the peer; make sure it does.
            log.debug("peer %s: send failed: %s", state.peer.short(), exc)
            with contextlib.suppress(Exception):
                await state.conn.aclose("send failed")

    def _drop(self, peer: PeerId, reason: str, *, notable: bool = False) -> None:
        state = self._peers.pop(peer, None)
        if state is None:
            return
        self._early_bytes -= sum(len(payload) for payload in state.early.values())
        state.early.clear()
        self._connected_addrs.discard(state.address)
        if peer not in self._banned_for_bad_data:
            self._dropped_otherwise = True
        if not self._peers:
            self._alone_since = self._clock()
        if self.scheduler is not None:
            self.scheduler.remove_peer(peer)
        if self._listing_fetch is not None:
            self._listing_fetch.remove_peer(peer)
            self._ask_listing()
        self._update()
        if notable:
            self._lost = (peer, reason)
        self.events.publish(PeerDropped(peer, reason, notable))

    def _handle(self, state: _Peer, message: msg.Message) -> None:
        """One message from a peer: O(1) work (a bitfield's is its size, once), and the
        scheduler runs only when the message changed something. A message that changed
        nothing is charged to the peer's budget; overdrawn, the peer is banned."""
        state.heard_at = self._clock()
        if self._changed_something(state, message):
            return
        # Unrequested Data costs its decryption: charged per 64 KiB (the smallest chunk), so
        # an end game's cancelled copies (at most INFLIGHT_BUDGET_BYTES) fit the budget.
        cost = max(1.0, len(message.payload) / MIN_CHUNK) if type(message) is msg.Data else 1.0
        if not state.budget.spend(self._clock(), cost):
            self._ban(state.peer, state.budget.reason(), duration=FLOOD_BAN)

    def _changed_something(self, state: _Peer, message: msg.Message) -> bool:
        cid = self.content_id.digest
        fetch = self._listing_fetch
        if fetch is not None and isinstance(message, (msg.Data, msg.Reject)) \
                and message.content_id == fetch.listing_id:
            return self._on_listing_answer(state, fetch, message)
        match message:
            case msg.Data(content_id=c, index=index, payload=payload) if c == cid:
                if index in state.speculative:
                    return self._early_data(state, index, payload)
                return self._spawn_data(state, index, payload)
            case msg.Have(content_id=c, index=index) if c == cid:
                return self._on_have_message(state, index)
            case msg.Reject(content_id=c, reason=msg.RejectReason.CHANGED) if c == cid:
                # Its file changed under it: it serves none of this content any more.
                self._lose(state, "no longer has it (its copy changed on disk)", has_it=False)
                return True
            case msg.Reject(content_id=c, index=index, reason=reason) if c == cid:
                if index in state.speculative:
                    # A guess that missed (past the last chunk of a small file, say): the
                    # peer answered what we asked, which costs it nothing.
                    state.speculative.discard(index)
                    return True
                scheduler = self.scheduler
                busy = reason == msg.RejectReason.TOO_MANY_IN_FLIGHT
                if scheduler is None or not scheduler.on_reject(state.peer, index, self._clock(), busy=busy):
                    return False
                self._update_soon()
                return True
            case msg.Bitfield(content_id=c, chunk_count=count, bits=bits) if c == cid:
                if state.bitfield_answered:
                    return False
                state.bitfield_answered = True
                state.bitfield = (count, bytearray(bits))
                self._apply_bitfield(state)
                return True
            case msg.Manifest(content_id=c, data=data) if c == cid:
                if state.manifest_answered:
                    return False
                state.manifest_answered = True
                if data is not None and self.manifest is None:
                    self._accept_manifest(state, data)
                return True
            case msg.HolePunchConnect() | msg.HolePunchSync() if self._on_punch is not None:
                return self._on_punch(state.conn, message)
            case msg.Ping(nonce=nonce):
                # Not queued: a peer that pings but never reads must not grow our memory.
                state.conn.send_nowait(msg.Pong(nonce))
                return False
            case _:
                return False  # other content ids, Pong, Hello repeats: nothing to do

    def _on_have_message(self, state: _Peer, index: int) -> bool:
        if self.scheduler is not None:
            if not self.scheduler.add_have(state.peer, index):
                return False
            self._update_soon()
            return True
        if state.bitfield is None:
            return False  # a Have before its Bitfield: the Bitfield says it all
        count, bits = state.bitfield
        if not 0 <= index < count or bit_get(bits, index):
            return False
        bit_set(bits, index)
        return True

    def _update_soon(self) -> None:
        """Plan once the messages at hand are handled, not once per message: a burst of
        Haves or Rejects costs one scheduling pass per loop turn."""
        if not self._update_pending:
            self._update_pending = True
            self._loop.call_soon(self._deferred_update)

    def _deferred_update(self) -> None:
        self._update_pending = False
        if not self._tasks.closed:
            self._update()

    def _accept_manifest(self, state: _Peer, data: bytes) -> None:
        try:
            manifest = decode_manifest(data)
            manifest.verify(self.content_id, self.options.publisher)
        except WrongPublisher as exc:
            # A valid manifest for these bytes, signed by someone else: maybe another peer has
            # the right publisher's; give it a moment, then fail with this error.
            self._wrong_publisher = exc
            if self._wrong_publisher_at is None:
                self._wrong_publisher_at = self._clock()
                self._arm()
            return
        except (IntegrityError, UnsafePath, RemoteProtocolError) as exc:
            self._bad_manifests.append(str(exc))
            self._ban(state.peer, f"bad manifest: {exc}")
            return
        if isinstance(manifest, ListedRoot):
            self._accept_root(state, manifest)
            return
        self._have_manifest(manifest)

    def _have_manifest(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._listing_fetch = None
        self._on_manifest(manifest)
        self._manifest_ready.set()

    # -- a listed directory's listing ---------------------------------------------------

    def _accept_root(self, state: _Peer, root: ListedRoot) -> None:
        """A verified root of a listed directory: its sender can serve the listing. The first
        one starts the listing's fetch, unless the listing is held here already (a resume)."""
        fetch = self._listing_fetch
        if self._decoding_listing:
            self._root_senders.append(state.peer)  # a source, should the stored copy not do
            return  # the whole listing is in hand (or being read from the store)
        if fetch is None:
            self._decoding_listing = True
            self._root_senders = [state.peer]
            self._spawn(self._stored_or_fetch(root), "stored listing")
            return
        fetch.add_peer(state.peer)
        self._ask_listing()

    async def _stored_or_fetch(self, root: ListedRoot) -> None:
        """Use the listing held here (a resume), read and checked off the event loop (a million
        entries take seconds), or else fetch it from the peers that sent the root."""
        try:
            stored = await self._loop.run_in_executor(self._pool, self.store.stored_listing, root)
        finally:
            self._decoding_listing = False
        if stored is not None:
            self._have_manifest(stored)
            return
        self._listing_fetch = fetch = ListingFetch(root)
        self._listing_at = self._clock()
        for peer in self._root_senders:
            if peer in self._peers:
                fetch.add_peer(peer)
        self._root_senders = []
        self._ask_listing()

    def _ask_listing(self) -> None:
        fetch = self._listing_fetch
        if fetch is None:
            return
        for peer, index in fetch.plan(self._clock()):
            self._peers[peer].outbox.put_nowait(msg.Request(fetch.listing_id, index))
        self._arm()

    def _on_listing_answer(self, state: _Peer, fetch: ListingFetch, message: msg.Data | msg.Reject) -> bool:
        if isinstance(message, msg.Reject):
            if not fetch.on_reject(state.peer, message.index):
                return False
            self._ask_listing()
            return True
        verified = fetch.on_data(state.peer, message.index, message.payload)
        if verified is None:
            return False  # not asked: charged as any unrequested Data
        if not verified:
            self._ban(state.peer, "sent a listing chunk that fails verification")
            return True
        self._listing_at = self._clock()
        if fetch.complete:
            self._listing_fetch = None  # later answers are unrequested
            self._decoding_listing = True
            self._spawn(self._complete_listing(fetch), "listing")
        else:
            self._ask_listing()
        return True

    async def _complete_listing(self, fetch: ListingFetch) -> None:
        """Decode the verified listing (off the event loop: a million entries take seconds).
        A listing that matches the signed hashes but breaks the entry rules was made that way
        by its publisher: every peer would send the same bytes, so the download fails."""
        try:
            manifest = await self._loop.run_in_executor(self._pool, fetch.root.complete, fetch.buffer)
        except (IntegrityError, UnsafePath, RemoteProtocolError) as exc:
            self._fail(IntegrityError(f"the listing of {self.content_id} is refused: {exc}"))
            return
        finally:
            self._decoding_listing = False
        self._listing_bytes = fetch.buffer
        self._have_manifest(manifest)

    async def _start_transfer(self) -> None:
        manifest = self.manifest
        assert manifest is not None
        dest = self.options.dest
        if dest is None:
            dest = self.options.download_dir / manifest.name
        elif dest.is_dir():
            # An existing folder: the file or folder lands inside it, as OUT/NAME; a path that
            # does not exist is the destination itself.
            dest = dest / manifest.name
        self._set_selected(None if self.selection.everything else self.selection.check(manifest))
        if self._place is not None:
            dest = await self._place(manifest, dest)
        self.partial = self.store.open_download(manifest, dest, self._listing_bytes,
                                                selected=self._selected)
        self._listing_bytes = None
        recovered = []
        if self.partial.resumed:
            recovered = await self._loop.run_in_executor(self._pool, self.partial.recover)
        if recovered:
            log.info("resume: %d chunks on disk verified again without fetching", len(recovered))
        self.partial.select(self._selected)  # ticks changed while the files were checked (select())
        first = manifest.entries[0].info if manifest.entries else None
        chunk_size = first.chunk_size if first else 1 << 20
        held = bit_indexes(self.partial.bits, self.partial.chunk_map.count)
        wanted = None if self._selected is None else self.partial.chunk_map.chunks_of(self._selected)
        self.scheduler = Scheduler(self.partial.chunk_map.count, held, chunk_size,
                                   sequential=self.options.sequential, wanted=wanted)
        now = self._transfer_at = self._clock()
        self._history.append((now, self._bytes_this_run))
        self._next_progress = now + PROGRESS_INTERVAL
        self._next_commit = now + COMMIT_INTERVAL
        self._last_verified_at = now
        chosen = self._selected is not None
        self.events.publish(DownloadStarted(
            self.content_id, manifest.name, manifest.total_size, self.partial.chunk_map.count,
            len(held), tuple(held),
            wanted_chunks=self.scheduler.wanted_count if chosen else None,
            wanted_size=self.selected_size() if chosen else None,
            wanted_held=self.scheduler.wanted_held if chosen else None))
        for state in list(self._peers.values()):  # a bad bitfield bans (removes) its peer
            self._join_scheduler(state)
        if self.scheduler.complete:
            self._finished.set()

    def _join_scheduler(self, state: _Peer) -> None:
        """Hand a connected peer to the scheduler once it exists: a peer named as holding the
        content counts as a seeder until its Bitfield arrives (requests go out now, not a
        round trip later; a chunk it lacks is rejected and asked elsewhere), its speculative
        requests count as in flight, and the chunks that answered them early are checked."""
        scheduler = self.scheduler
        if scheduler is None or state.peer not in self._peers:
            return
        scheduler.add_peer(state.peer)
        if state.bitfield is None and state.holds:
            scheduler.set_bitfield(state.peer, (), full=True)
        early, state.early = state.early, {}
        if state.speculative or early:
            # The rest (past the last chunk, or held already) stay speculative: their answers
            # are taken and dropped without cost.
            taken = scheduler.add_inflight(state.peer, state.speculative | early.keys(),
                                           state.asked_at)
            state.speculative.difference_update(taken)
            for index in taken:
                self.events.publish(ChunkRequested(self.content_id, index, state.peer))
        for index, payload in early.items():
            self._early_bytes -= len(payload)
            self._spawn_data(state, index, payload)  # checked and written as any other chunk
        self._apply_bitfield(state)

    def _early_data(self, state: _Peer, index: int, payload: Any) -> bool:
        """A chunk answering a speculative request the scheduler did not take (yet)."""
        state.speculative.discard(index)
        if self.scheduler is None and self._early_bytes + len(payload) <= SPECULATIVE_HOLD_BYTES:
            state.early[index] = payload  # checked once the scheduler exists (_join_scheduler)
            self._early_bytes += len(payload)
        return True  # asked for: never charged as a flood

    def _apply_bitfield(self, state: _Peer) -> None:
        if self.scheduler is None or state.bitfield is None or state.peer not in self._peers:
            return
        count, bits = state.bitfield
        if count == 0:
            # Holds nothing yet (it may not even have the manifest): its Haves still count.
            self.scheduler.add_peer(state.peer)
            self.scheduler.set_bitfield(state.peer, ())  # no longer taken for a seeder
            return
        if count != self.scheduler.chunk_count:
            self._ban(state.peer, "bitfield of the wrong size")
            return
        self.scheduler.add_peer(state.peer)
        full = bits == full_bitfield(count)
        indexes = () if full else bit_indexes(bits, count)
        self.scheduler.set_bitfield(state.peer, indexes, full=full)
        self._update()

    # -- chunks ------------------------------------------------------------------------

    def _spawn_data(self, state: _Peer, index: int, payload: Any) -> bool:
        """Check and write a chunk we asked ``state`` for; False (nothing done) for any other."""
        scheduler = self.scheduler
        if scheduler is None or state.peer not in scheduler.peers or \
                index not in scheduler.peers[state.peer].inflight:
            return False  # unrequested or cancelled: ignore
        if (state.peer, index) in self._checking:
            return False  # a second copy for one request: it costs a hash, so it is not looked at
        self._checking.add((state.peer, index))
        self._checking_bytes += len(payload)
        if self._checking_bytes > CHECK_BACKLOG_BYTES:
            self._backlog_cleared.clear()
        self._to_check.append((state, index, payload))
        if len(self._to_check) == 1:
            self._loop.call_soon(self._start_checks)
        return True

    def _start_checks(self) -> None:
        """Hand the chunks received in this loop turn to the pool in a few jobs (see
        :data:`CHECK_JOB_BYTES`), not one each."""
        batch, self._to_check = self._to_check, []
        if self._tasks.closed:
            return
        total = sum(len(payload) for _, _, payload in batch)
        jobs = max(min(len(batch), CHECK_JOBS_MIN), -(-total // CHECK_JOB_BYTES))
        step = -(-len(batch) // jobs)
        for start in range(0, len(batch), step):
            self._spawn(self._on_data(batch[start:start + step]), "chunks")

    async def _on_data(self, job: list[tuple[_Peer, int, Any]]) -> None:
        partial = self.partial
        assert partial is not None
        try:
            results = await self._loop.run_in_executor(self._pool, self._check_and_write_all,
                                                       [(index, payload) for _, index, payload in job])
        except DiskFull as exc:
            self._fail(exc)
            return
        except OSError as exc:
            self._fail(StoreError(f"cannot write {partial.partial_path}: {exc}"))
            return
        finally:
            for state, index, payload in job:
                self._checking.discard((state.peer, index))
                self._checking_bytes -= len(payload)
            if self._checking_bytes <= CHECK_BACKLOG_BYTES:
                self._backlog_cleared.set()
        for (state, index, payload), ok in zip(job, results, strict=True):
            if self._checked(state, index, len(payload), ok):
                return  # complete
        self._update_soon()  # one scheduling pass for every chunk verified in this loop turn

    def _checked(self, state: _Peer, index: int, nbytes: int, ok: bool) -> bool:
        """Chunk ``index`` from ``state`` was checked (``ok``: verified and written); returns
        whether the download is now complete."""
        scheduler = self.scheduler
        assert scheduler is not None
        if state.peer not in scheduler.peers:
            return False
        outcome = scheduler.on_data(state.peer, index, ok, nbytes, self._clock())
        for other, idx in outcome.cancel:
            other_state = self._peers.get(other)
            if other_state is not None:
                other_state.outbox.put_nowait(msg.Cancel(self.content_id.digest, idx))
        if not ok:
            self.wasted_bytes += nbytes
            self.events.publish(ChunkFailed(self.content_id, index, state.peer))
            if outcome.ban:
                self._banned_for_bad_data.add(state.peer)
                self._ban(state.peer, "sent chunks that fail verification")
        elif outcome.accepted:
            self.chunks_by_peer[state.peer] += 1
            self.fetched_this_run += 1
            self._bytes_this_run += nbytes
            self._last_verified_at = self._clock()
            self.events.publish(ChunkVerified(self.content_id, index, state.peer, nbytes))
            self.progressed.set()
            self._on_have(self.content_id.digest, index)
            if scheduler.complete:
                self._finished.set()
                return True
        return False

    def _check_and_write_all(self, job: list[tuple[int, Any]]) -> list[bool]:
        """:meth:`_check_and_write` each chunk of ``job`` in turn (on a pool thread)."""
        return [self._check_and_write(index, payload) for index, payload in job]

    def _check_and_write(self, index: int, payload: Any) -> bool:
        partial = self.partial
        assert partial is not None
        if not partial.chunk_map.verify(index, payload):
            return False
        if not partial.has(index):
            partial.write_chunk(index, payload)
        return True

    def _ban(self, peer: PeerId, reason: str, duration: float | None = None) -> None:
        self.store.ban(peer, reason, duration)
        self.events.publish(PeerBanned(peer, reason))
        state = self._peers.get(peer)
        self._drop(peer, f"banned: {reason}")
        # Closing wakes the peer's reader if it is waiting; once the download stops,
        # the reader's own cleanup closes it.
        if state is not None and not self._tasks.closed:
            self._spawn(state.conn.aclose(f"banned: {reason}"), "close banned")

    def _fail(self, exc: Exception) -> None:
        """Stop the download with ``exc``: run() wakes from whichever wait it is in and raises it."""
        if self._fatal is None:
            self._fatal = exc
        self._finished.set()
        self.progressed.set()
        self._manifest_ready.set()
        self._disarm()

    # -- durability and progress -------------------------------------------------------

    def _start_commit(self, now: float) -> None:
        partial = self.partial
        assert partial is not None
        self._recorded = self.fetched_this_run
        self._next_commit = now + COMMIT_INTERVAL
        # Not awaited here: the next one starts once this one is done (see _committed).
        self._commit = commit = self._loop.run_in_executor(self._sync_pool, partial.commit)
        commit.add_done_callback(self._committed)

    def _committed(self, commit: asyncio.Future[int]) -> None:
        if self._commit is commit:
            self._commit = None
        if commit.cancelled() or self._finished.is_set():
            return  # run() has its own last record to make
        failure = commit.exception()
        if failure is not None:
            # After a failed fdatasync the kernel may have dropped the dirty pages;
            # recording more progress could claim bytes that are not on disk.
            partial = self.partial
            assert partial is not None
            self._fail(failure if isinstance(failure, P2PError) else
                       StoreError(f"cannot record progress of {partial.partial_path}: {failure}"))
            return
        self._arm()  # the next record may be due

    def _set_selected(self, entries: list[int] | None) -> None:
        manifest = self.manifest
        assert manifest is not None
        self._selected = entries
        self._selected_size = manifest.total_size if entries is None else \
            sum(manifest.entries[i].info.size for i in entries)

    def selected_size(self) -> int:
        """Bytes of the files wanted (all of them with no selection; 0 before the manifest)."""
        return 0 if self.manifest is None else self._selected_size

    def _bytes_done(self) -> int:
        scheduler = self.scheduler
        if scheduler is None:
            return 0
        size = self.selected_size()
        count = scheduler.wanted_count
        return size if count == 0 else min(size, scheduler.wanted_held * (size // count + 1))

    def _publish_progress(self, now: float) -> None:
        partial = self.partial
        assert partial is not None
        self._next_progress = now + PROGRESS_INTERVAL
        done_bytes = self._bytes_done()
        self._history.append((now, self._bytes_this_run))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW:
            self._history.popleft()
        t0, b0 = self._history[0]
        rate = (self._bytes_this_run - b0) / (now - t0) if now > t0 else 0.0
        scheduler = self.scheduler
        assert scheduler is not None
        size = self.selected_size()
        eta = (size - done_bytes) / rate if rate > 0 else None
        # Figures of the files wanted: a bar for three files of a large folder fills up.
        self._progress = DownloadProgress(self.content_id, scheduler.wanted_held,
                                          scheduler.wanted_count, done_bytes, size, rate, eta,
                                          len(self._peers),
                                          {str(p): self.paths.get(p, "direct")
                                           for p in self._peers})
        self.events.publish(self._progress)

    async def _complete(self) -> Path:
        partial = self.partial
        assert partial is not None
        now = self._clock()
        self._publish_progress(now)
        if self._commit is not None:  # let a progress record in flight land first
            with contextlib.suppress(P2PError, OSError):
                await self._commit
            self._commit = None
        path = await self._loop.run_in_executor(self._sync_pool, partial.finalize)
        seconds = self._clock() - self._started
        self.events.publish(DownloadCompleted(
            self.content_id, str(path), self.selected_size(), seconds,
            {str(p): n for p, n in self.chunks_by_peer.items()}))
        return path

    async def _stop(self) -> None:
        """Close everything the download started; keep its progress. Runs once, at the end of run()."""
        self._finished.set()
        self._disarm()
        await self._tasks.aclose()
        peers = list(self._peers.values())
        self._peers.clear()
        for state in peers:
            with contextlib.suppress(Exception):
                await state.conn.aclose("download finished")
        if self._commit is not None:
            with contextlib.suppress(P2PError, OSError):
                await self._commit
        if self.partial is not None:
            if not self.partial.complete:
                with contextlib.suppress(P2PError, OSError):
                    await self._loop.run_in_executor(self._sync_pool, self.partial.commit)
            # Also after a failed finalize (destination exists): release the lock,
            # keep the partial and its record for the next try. Idempotent.
            self.partial.close()


def _dial_error(exc: BaseException) -> str:
    """A short reason for a failed dial: what a person would look for."""
    cause: BaseException | None = exc
    while cause is not None:  # the transport wraps the socket's error in a NetworkError
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError):
            return f"no answer within {CONNECT_TIMEOUT:g} s"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def _peers(count: int) -> str:
    return f"{count} peer" if count == 1 else f"{count} peers"
