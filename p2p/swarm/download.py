"""The asyncio driver of one download: sources, connections, manifest, chunks, durability.

It runs the pure :class:`~p2p.swarm.scheduler.Scheduler` against real
connections. One task per connected peer reads its messages; one writer task
per peer sends what the scheduler planned; a ticker expires slow requests,
commits progress and publishes progress events. Hashing and disk writes run in
a small thread pool (BLAKE3 and ``pwrite`` release the GIL), so the event loop
keeps decrypting while chunks are checked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..content import ContentId, Manifest
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
from ..store import PartialDownload, Store, bit_get, bit_set, full_bitfield
from ..wire import messages as msg
from ..wire.errors import ClosedByUs, ConnectionLost
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
TICK = 0.25
"""Progress events and request expiry run this often."""
RATE_WINDOW = 3.0
"""Seconds of history behind the reported rate."""
REDISCOVER_INTERVAL = 5.0
"""While short of peers, ask the DHT again this often."""
WRONG_PUBLISHER_GRACE = 2.0
"""After a manifest signed by someone other than ``--from``, wait this long for the right one."""

Address = tuple[str, int]
Connector = Callable[[Address, PeerId | None], Awaitable[Any]]
ProviderSource = Callable[[ContentId], AsyncIterator[tuple[PeerId | None, Sequence[Address]]]]


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
    """Seconds to find a verified manifest, and the longest stall with no peer at all."""


@dataclass
class _Peer:
    conn: Any
    peer: PeerId
    outbox: asyncio.Queue[msg.Message]
    address: Address
    """The address we dialled."""
    bitfield: tuple[int, bytes] | None = None


class Download:
    """One running download. Create, then ``await run()``; cancel the task to pause."""

    def __init__(self, options: FetchOptions, *, store: Store, events: EventBus,
                 connect: Connector, providers: ProviderSource | None,
                 self_peer: PeerId, self_addrs: Callable[[], Sequence[Address]],
                 on_have: Callable[[bytes, int], None],
                 on_manifest: Callable[[Manifest], None],
                 pool: ThreadPoolExecutor, sync_pool: ThreadPoolExecutor) -> None:
        self.options = options
        self.content_id = options.content_id
        self.store = store
        self.events = events
        self._connect = connect
        self._providers = providers
        self._self_peer = self_peer
        self._self_addrs = self_addrs
        self._on_have = on_have
        self._on_manifest = on_manifest
        self._pool = pool
        self._sync_pool = sync_pool
        """One thread for fdatasync + progress records: a slow disk never stalls chunk checks."""
        self._commit: asyncio.Future[int] | None = None
        self._loop = asyncio.get_running_loop()
        self.manifest: Manifest | None = None
        self.partial: PartialDownload | None = None
        self.scheduler: Scheduler | None = None
        self._peers: dict[PeerId, _Peer] = {}
        self._tried: set[Address] = set()
        """Addresses dialled since the last discovery round."""
        self._connected_addrs: set[Address] = set()
        self._checking: set[tuple[PeerId, int]] = set()
        """(peer, chunk) copies being verified: a second copy of the same request is ignored."""
        self._candidates: asyncio.Queue[tuple[PeerId | None, Address]] = asyncio.Queue()
        self._dialing = 0
        self._peer_slots = asyncio.Semaphore(MAX_PEERS)
        self._manifest_ready = asyncio.Event()
        self._finished = asyncio.Event()
        self._fatal: P2PError | None = None
        self._wrong_publisher: WrongPublisher | None = None
        self._wrong_publisher_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = time.monotonic()
        self._bytes_this_run = 0
        self._history: collections.deque[tuple[float, int]] = collections.deque()
        self._last_peer_seen = time.monotonic()
        self.chunks_by_peer: collections.Counter[PeerId] = collections.Counter()
        self.fetched_this_run = 0
        """Chunks downloaded (verified) by this run: a resumed run never re-fetches recorded ones."""
        self.wasted_bytes = 0
        """Bytes received that failed verification."""

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

    async def run(self) -> Path:
        """Fetch everything, verify it, put it in place. Returns the final path.

        Raises :class:`NotFound` when no provider answers within the timeout,
        :class:`IntegrityError` subclasses for a bad or wrongly signed manifest,
        :class:`DiskFull` when the disk fills (progress kept).
        """
        result: Path | None = None
        error: P2PError | None = None
        # Errors are carried out of the task group by hand: raised inside it, they would
        # come out wrapped in an ExceptionGroup.
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                self._spawn(self._discover(), "discover")
                self._spawn(self._dialer(), "dialer")
                await self._await_manifest()
                self._spawn(self._ticker(), "ticker")
                self._pump()
                await self._finished.wait()
                if self._fatal is not None:
                    raise self._fatal
                result = await self._complete()
            except P2PError as exc:
                error = exc
            except OSError as exc:  # the destination's folder cannot be made, say
                error = StoreError(f"cannot write the download: {exc}")
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await self._close_all()
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
        if error is not None:
            raise error
        assert result is not None
        return result

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = self._tg.create_task(coro, name=f"{name} {self.content_id.short()}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- sources and dialling ------------------------------------------------------------

    def _add_candidate(self, peer: PeerId | None, addr: Address) -> None:
        if peer is not None and (peer == self._self_peer or peer in self._peers
                                 or self.store.is_banned(peer)):
            return
        if addr in self._tried or addr in self._connected_addrs or addr in set(self._self_addrs()):
            return
        self._tried.add(addr)
        self._candidates.put_nowait((peer, addr))

    async def _discover(self) -> None:
        for addr in self.options.peers:
            self._add_candidate(None, addr)
        if self._providers is None:
            return
        while not self._finished.is_set():
            try:
                async for peer, addrs in self._providers(self.content_id):
                    for addr in addrs:
                        self._add_candidate(peer, addr)
            except P2PError as exc:
                log.debug("provider lookup for %s: %s", self.content_id.short(), exc)
            # Look again later for new providers (partial seeders appear as they start).
            await asyncio.sleep(REDISCOVER_INTERVAL)
            # Addresses may be dialled again: a provider whose connection dropped may still
            # be there (a ticket's address above all, when there is no DHT to ask).
            self._tried.clear()
            for addr in self.options.peers:
                self._add_candidate(None, addr)

    async def _dialer(self) -> None:
        slots = asyncio.Semaphore(CONNECT_PARALLEL)
        while True:
            peer, addr = await self._candidates.get()
            await self._peer_slots.acquire()  # released when the dial fails or the peer leaves
            await slots.acquire()
            self._dialing += 1
            self._spawn(self._dial(peer, addr, slots), f"dial {addr}")

    async def _dial(self, peer: PeerId | None, addr: Address, slots: asyncio.Semaphore) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                conn = await self._connect(addr, peer)
        except (P2PError, OSError, TimeoutError) as exc:
            log.debug("dial %s failed: %s", addr, exc)
            self._peer_slots.release()
            return
        finally:
            self._dialing -= 1
            slots.release()
        remote: PeerId = conn.remote_peer
        if remote == self._self_peer or remote in self._peers or self.store.is_banned(remote):
            self._peer_slots.release()
            await conn.aclose("duplicate or banned")
            return
        self._spawn(self._serve_peer(conn, addr), f"peer {remote.short()}")

    # -- one peer ------------------------------------------------------------------------

    async def _serve_peer(self, conn: Any, addr: Address) -> None:
        peer: PeerId = conn.remote_peer
        state = _Peer(conn, peer, asyncio.Queue(), addr)
        self._peers[peer] = state
        self._connected_addrs.add(addr)
        self._last_peer_seen = time.monotonic()
        self.events.publish(PeerConnected(peer, conn.remote_address, inbound=False))
        reason = "done"
        writer = self._spawn(self._writer(state), f"writer {peer.short()}")
        try:
            cid = self.content_id.digest
            if self.manifest is None:
                state.outbox.put_nowait(msg.GetManifest(cid))
            state.outbox.put_nowait(msg.GetBitfield(cid))
            async for message in conn:
                self._handle(state, message)
                if peer not in self._peers:
                    reason = "banned"
                    break
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

    def _drop(self, peer: PeerId, reason: str) -> None:
        state = self._peers.pop(peer, None)
        if state is None:
            return
        self._connected_addrs.discard(state.address)
        if self.scheduler is not None:
            self.scheduler.remove_peer(peer)
            self._pump()
        self.events.publish(PeerDropped(peer, reason))

    def _handle(self, state: _Peer, message: msg.Message) -> None:
        match message:
            case msg.Manifest(content_id=cid, data=data) if cid == self.content_id.digest:
                if data is not None and self.manifest is None:
                    self._accept_manifest(state, data)
            case msg.Bitfield(content_id=cid, chunk_count=count, bits=bits) if cid == self.content_id.digest:
                state.bitfield = (count, bits)
                self._apply_bitfield(state)
            case msg.Have(content_id=cid, index=index) if cid == self.content_id.digest:
                if self.scheduler is not None:
                    self.scheduler.add_have(state.peer, index)
                    self._pump()
                elif state.bitfield is not None:
                    count, bits = state.bitfield
                    if 0 <= index < count:
                        b = bytearray(bits)
                        bit_set(b, index)
                        state.bitfield = (count, bytes(b))
            case msg.Data(content_id=cid, index=index, payload=payload) if cid == self.content_id.digest:
                self._spawn_data(state, index, payload)
            case msg.Reject(content_id=cid, index=index, reason=reason) if cid == self.content_id.digest:
                if self.scheduler is not None:
                    busy = reason == msg.RejectReason.TOO_MANY_IN_FLIGHT
                    self.scheduler.on_reject(state.peer, index, time.monotonic(), busy=busy)
                    self._pump()
            case msg.Ping(nonce=nonce):
                # Not queued: a peer that pings but never reads must not grow our memory.
                state.conn.send_nowait(msg.Pong(nonce))
            case _:
                pass  # other content ids, Pong, Hello repeats: nothing to do

    def _accept_manifest(self, state: _Peer, data: bytes) -> None:
        try:
            manifest = Manifest.decode(data)
            manifest.verify(self.content_id, self.options.publisher)
        except WrongPublisher as exc:
            # A valid manifest for these bytes, signed by someone else: maybe another peer has
            # the right publisher's; give it a moment, then fail with this error.
            self._wrong_publisher = exc
            if self._wrong_publisher_at is None:
                self._wrong_publisher_at = time.monotonic()
            return
        except (IntegrityError, UnsafePath, RemoteProtocolError) as exc:
            self._ban(state.peer, f"bad manifest: {exc}")
            return
        self.manifest = manifest
        self._on_manifest(manifest)
        self._manifest_ready.set()

    async def _await_manifest(self) -> None:
        deadline = time.monotonic() + self.options.timeout
        while not self._manifest_ready.is_set():
            now = time.monotonic()
            if self._wrong_publisher is not None and self._wrong_publisher_at is not None \
                    and now - self._wrong_publisher_at >= WRONG_PUBLISHER_GRACE:
                raise self._wrong_publisher
            if now >= deadline:
                if self._wrong_publisher is not None:
                    raise self._wrong_publisher
                raise NotFound(f"no peer provided {self.content_id} within {self.options.timeout:g} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(TICK, deadline - now)):
                    await self._manifest_ready.wait()
        await self._start_transfer()

    async def _start_transfer(self) -> None:
        manifest = self.manifest
        assert manifest is not None
        dest = self.options.dest
        if dest is None:
            dest = self.options.download_dir / manifest.name
        elif dest.is_dir() and manifest.kind == "file":
            dest = dest / manifest.name
        self.partial = self.store.open_download(manifest, dest)
        recovered = []
        if self.partial.resumed:
            recovered = await self._loop.run_in_executor(self._pool, self.partial.recover)
        if recovered:
            log.info("resume: %d chunks on disk verified again without fetching", len(recovered))
        first = manifest.entries[0].info if manifest.entries else None
        chunk_size = first.chunk_size if first else 1 << 20
        held = [i for i in range(self.partial.chunk_map.count) if bit_get(self.partial.bits, i)]
        self.scheduler = Scheduler(self.partial.chunk_map.count, held, chunk_size)
        self._history.append((time.monotonic(), self._bytes_done()))
        self.events.publish(DownloadStarted(self.content_id, manifest.name, manifest.total_size,
                                            self.partial.chunk_map.count, len(held), tuple(held)))
        for state in list(self._peers.values()):  # a bad bitfield bans (removes) its peer
            self._apply_bitfield(state)
        if self.scheduler.complete:
            self._finished.set()

    def _apply_bitfield(self, state: _Peer) -> None:
        if self.scheduler is None or state.bitfield is None or state.peer not in self._peers:
            return
        count, bits = state.bitfield
        if count == 0:
            # Holds nothing yet (it may not even have the manifest): its Haves still count.
            self.scheduler.add_peer(state.peer)
            return
        if count != self.scheduler.chunk_count:
            self._ban(state.peer, "bitfield of the wrong size")
            return
        self.scheduler.add_peer(state.peer)
        full = bits == full_bitfield(count)
        indexes = () if full else [i for i in range(count) if bit_get(bits, i)]
        self.scheduler.set_bitfield(state.peer, indexes, full=full)
        self._pump()

    # -- chunks ------------------------------------------------------------------------

    def _spawn_data(self, state: _Peer, index: int, payload: Any) -> None:
        scheduler = self.scheduler
        if scheduler is None or state.peer not in scheduler.peers or \
                index not in scheduler.peers[state.peer].inflight:
            return  # unrequested or cancelled: ignore
        if (state.peer, index) in self._checking:
            return  # a second copy for one request: it costs a hash, so it is not looked at
        self._checking.add((state.peer, index))
        self._spawn(self._on_data(state, index, payload), f"chunk {index}")

    async def _on_data(self, state: _Peer, index: int, payload: Any) -> None:
        partial, scheduler = self.partial, self.scheduler
        assert partial is not None and scheduler is not None
        nbytes = len(payload)
        try:
            ok = await self._loop.run_in_executor(self._pool, self._check_and_write, index, payload)
        except DiskFull as exc:
            self._fail(exc)
            return
        except OSError as exc:
            self._fail(StoreError(f"cannot write {partial.partial_path}: {exc}"))
            return
        finally:
            self._checking.discard((state.peer, index))
        if state.peer not in scheduler.peers:
            return
        outcome = scheduler.on_data(state.peer, index, ok, nbytes, time.monotonic())
        for other, idx in outcome.cancel:
            other_state = self._peers.get(other)
            if other_state is not None:
                other_state.outbox.put_nowait(msg.Cancel(self.content_id.digest, idx))
        if not ok:
            self.wasted_bytes += nbytes
            self.events.publish(ChunkFailed(self.content_id, index, state.peer))
            if outcome.ban:
                self._ban(state.peer, "sent chunks that fail verification")
        elif outcome.accepted:
            self.chunks_by_peer[state.peer] += 1
            self.fetched_this_run += 1
            self._bytes_this_run += nbytes
            self.events.publish(ChunkVerified(self.content_id, index, state.peer, nbytes))
            self._on_have(self.content_id.digest, index)
            if scheduler.complete:
                self._finished.set()
                return
        self._pump()

    def _check_and_write(self, index: int, payload: Any) -> bool:
        partial = self.partial
        assert partial is not None
        if not partial.chunk_map.verify(index, payload):
            return False
        if not partial.has(index):
            partial.write_chunk(index, payload)
        return True

    def _ban(self, peer: PeerId, reason: str) -> None:
        self.store.ban(peer, reason)
        self.events.publish(PeerBanned(peer, reason))
        state = self._peers.get(peer)
        self._drop(peer, f"banned: {reason}")
        if state is not None:
            self._spawn(state.conn.aclose(f"banned: {reason}"), "close banned")

    def _pump(self) -> None:
        scheduler = self.scheduler
        if scheduler is None or self._finished.is_set():
            return
        cid = self.content_id.digest
        for peer, index in scheduler.plan(time.monotonic()):
            state = self._peers.get(peer)
            if state is None:  # pragma: no cover - scheduler and peer table move together
                scheduler.remove_peer(peer)
                continue
            state.outbox.put_nowait(msg.Request(cid, index))
            self.events.publish(ChunkRequested(self.content_id, index, peer))

    def _fail(self, exc: P2PError) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._finished.set()

    # -- housekeeping ------------------------------------------------------------------

    async def _ticker(self) -> None:
        last_commit = time.monotonic()
        while not self._finished.is_set():
            await asyncio.sleep(TICK)
            now = time.monotonic()
            scheduler, partial = self.scheduler, self.partial
            assert scheduler is not None and partial is not None
            for peer, index in scheduler.expire(now, REQUEST_TIMEOUT):
                state = self._peers.get(peer)
                if state is not None:
                    state.outbox.put_nowait(msg.Cancel(self.content_id.digest, index))
            self._pump()
            if now - last_commit >= COMMIT_INTERVAL:
                commit = self._commit
                if commit is not None and commit.done():
                    self._commit = None
                    failure = commit.exception()
                    if failure is not None:
                        # After a failed fdatasync the kernel may have dropped the dirty pages;
                        # recording more progress could claim bytes that are not on disk.
                        self._fail(failure if isinstance(failure, P2PError) else
                                   StoreError(f"cannot record progress of {partial.partial_path}: {failure}"))
                        return
                if self._commit is None:
                    # Not awaited: the next one starts once this one is done.
                    last_commit = now
                    self._commit = self._loop.run_in_executor(self._sync_pool, partial.commit)
            if self._peers:
                self._last_peer_seen = now
            elif now - self._last_peer_seen > self.options.timeout and not self._dialing:
                self._fail(NetworkError(
                    f"no peer to download {self.content_id} from for {self.options.timeout:g} s; "
                    f"progress is kept ({partial.done}/{partial.chunk_map.count} chunks)"))
                return
            self._publish_progress(now)

    def _bytes_done(self) -> int:
        partial = self.partial
        if partial is None:
            return 0
        size = partial.manifest.total_size
        count = partial.chunk_map.count
        return size if count == 0 else min(size, partial.done * (size // count + 1))

    def _publish_progress(self, now: float) -> None:
        partial = self.partial
        assert partial is not None
        done_bytes = self._bytes_done()
        self._history.append((now, self._bytes_this_run))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW:
            self._history.popleft()
        t0, b0 = self._history[0]
        rate = (self._bytes_this_run - b0) / (now - t0) if now > t0 else 0.0
        size = partial.manifest.total_size
        eta = (size - done_bytes) / rate if rate > 0 else None
        self.events.publish(DownloadProgress(self.content_id, partial.done, partial.chunk_map.count,
                                             done_bytes, size, rate, eta, len(self._peers)))

    async def _complete(self) -> Path:
        partial = self.partial
        assert partial is not None
        self._publish_progress(time.monotonic())
        if self._commit is not None:  # let a progress record in flight land first
            with contextlib.suppress(P2PError, OSError):
                await self._commit
            self._commit = None
        path = await self._loop.run_in_executor(self._sync_pool, partial.finalize)
        seconds = time.monotonic() - self._started
        self.events.publish(DownloadCompleted(
            self.content_id, str(path), partial.manifest.total_size, seconds,
            {str(p): n for p, n in self.chunks_by_peer.items()}))
        return path

    async def _close_all(self) -> None:
        peers = list(self._peers.values())
        self._peers.clear()
        for state in peers:
            with contextlib.suppress(Exception):
                await state.conn.aclose("download finished")

