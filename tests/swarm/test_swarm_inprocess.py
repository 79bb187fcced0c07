"""Swarm downloads between real nodes in one process, on 127.0.0.1 with port 0."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import p2p.node
import p2p.swarm.download
from p2p import FetchResult
from p2p.errors import BadInput, DiskFull
from p2p.events import (
    ChunkFailed,
    ChunkRequested,
    ChunkVerified,
    DownloadCompleted,
    DownloadStarted,
    Event,
    PeerBanned,
)
from p2p.node import Node
from p2p.store import Store
from p2p.swarm.download import CHECK_BACKLOG_BYTES, Download
from p2p.swarm.scheduler import MAX_INFLIGHT, STRIKE_LIMIT
from p2p.wire.errors import ConnectionLost
from p2p.wire.messages import Request
from p2p.wire.transport import WireProtocol

from .conftest import MiB, drain, make_file, node_config, running_nodes, wait_for

# 16 MiB: 256 chunks of 64 KiB, enough to spread over five seeders.
SIZE = 16 * MiB
CHUNK = 64 * 1024
CHUNKS = SIZE // CHUNK


def of(kind: type[Event], events: list[Event]) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_file(tmp_path / "src" / "movie.bin", SIZE)


# -- many seeders ---------------------------------------------------------------------------


@pytest.mark.parametrize("discovery", ["dht", "peers"])
async def test_five_seeders_all_supply_and_file_arrives_identical(
        tmp_path: Path, discovery: str) -> None:
    # 64 MiB: 1024 chunks, so a seeder whose session comes up last still gets a share.
    source = make_file(tmp_path / "src" / "movie.bin", 4 * SIZE)
    async with asyncio.timeout(60), running_nodes(tmp_path, [f"s{i}" for i in range(5)]) as seeders:
        results = [await s.share(source) for s in seeders]
        cid = results[0].content_id
        assert all(r.content_id == cid for r in results)
        boot = [seeders[0].listen_address()]
        async with Node(node_config(tmp_path, "dl", boot)) as dl:
            peers = [s.listen_address() for s in seeders] if discovery == "peers" else []
            with dl.events.subscribed() as sub:
                result = await dl.fetch(str(cid), tmp_path / "out.bin", peers=peers, timeout=15)
                events = drain(sub)
    path = result.path
    assert path.read_bytes() == source.read_bytes()
    assert result.to_json()["paths"] == {str(s.peer_id): "direct" for s in seeders}
    [done] = of(DownloadCompleted, events)
    by_event = Counter(str(e.peer) for e in of(ChunkVerified, events))
    assert done.chunks_by_peer == dict(by_event)
    assert sum(done.chunks_by_peer.values()) == 4 * CHUNKS
    assert set(done.chunks_by_peer) == {str(s.peer_id) for s in seeders}, done.chunks_by_peer


# -- a lying seeder -------------------------------------------------------------------------


async def test_corrupting_seeder_is_banned_and_download_completes(tmp_path: Path, source: Path) -> None:
    async with asyncio.timeout(60), running_nodes(tmp_path, ["liar", "h1", "h2", "dl"]) as nodes:
        liar, h1, h2, dl = nodes
        for s in (liar, h1, h2):
            cid = (await s.share(source)).content_id
        honest_read = liar._store.read_chunk

        def corrupt(content_id: bytes, index: int) -> bytes:
            data = bytearray(honest_read(content_id, index))
            data[len(data) // 2] ^= 0x01
            return bytes(data)

        liar._store.read_chunk = corrupt  # type: ignore[method-assign]
        with dl.events.subscribed() as sub:
            fetch = asyncio.create_task(dl.fetch(
                cid, tmp_path / "out.bin", timeout=15,
                peers=[liar.listen_address(), h1.listen_address(), h2.listen_address()]))
            try:
                await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                download = dl.download(cid)
                assert download is not None
                path = (await fetch).path
            finally:
                fetch.cancel()
            events = drain(sub)
        assert path.read_bytes() == source.read_bytes()
        assert [e.peer for e in of(PeerBanned, events)] == [liar.peer_id]
        assert dl.library.is_banned(liar.peer_id)
        assert liar.peer_id not in download.chunks_by_peer
        failed = [e for e in of(ChunkFailed, events) if e.peer == liar.peer_id]
        assert len(failed) == STRIKE_LIMIT
        # The scheduler bans at the STRIKE_LIMIT-th bad chunk and the driver drops any later
        # data from a peer it no longer schedules, so only STRIKE_LIMIT chunks are wasted ...
        assert 0 < download.wasted_bytes <= STRIKE_LIMIT * CHUNK
        # ... and at most a full pipeline more was ever asked of the liar.
        asked = [e for e in of(ChunkRequested, events) if e.peer == liar.peer_id]
        assert len(asked) <= STRIKE_LIMIT + MAX_INFLIGHT
    with Store(tmp_path / "dl" / "state") as reopened:
        assert reopened.is_banned(liar.peer_id)


# -- a seeder that leaves -------------------------------------------------------------------

async def test_seeder_stopped_mid_transfer_download_completes_from_others(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "big.bin", 4 * SIZE)  # 1024 chunks
    chunks = 4 * CHUNKS
    stop_after = 2
    async with asyncio.timeout(60), running_nodes(tmp_path, ["s0", "s1", "s2", "dl"]) as nodes:
        *seeders, dl = nodes
        for s in seeders:
            cid = (await s.share(source)).content_id
        victim = seeders[1]
        with dl.events.subscribed() as sub:
            fetch = asyncio.create_task(dl.fetch(
                cid, tmp_path / "out.bin", timeout=15,
                peers=[s.listen_address() for s in seeders]))
            try:
                from_victim = 0
                while from_victim < stop_after:
                    event = await wait_for(sub, lambda e: isinstance(e, ChunkVerified)
                                           and e.peer == victim.peer_id)
                    from_victim += 1
                download = dl.download(cid)
                assert download is not None, "download finished before the seeder stopped"
                await victim.aclose()
                assert download.scheduler is not None and not download.scheduler.complete
                path = (await fetch).path
            finally:
                fetch.cancel()
            events = [event, *drain(sub)]
    assert path.read_bytes() == source.read_bytes()
    assert stop_after <= download.chunks_by_peer[victim.peer_id] < chunks
    others = sum(n for p, n in download.chunks_by_peer.items() if p != victim.peer_id)
    assert others + download.chunks_by_peer[victim.peer_id] == chunks
    assert victim.peer_id not in download.peers
    assert of(DownloadCompleted, events)


class _SendFailsAfter:
    """A real connection whose send side reports closed after ``limit`` messages.

    That is what a connection looks like to the downloader's writer in the moment after
    the peer went away and before its reader saw the end of the stream.
    """

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __aiter__(self) -> Any:
        return self._inner.__aiter__()

    async def send(self, message: Any) -> None:
        if self._limit <= 0:
            raise ConnectionLost("cannot send: the connection is closed")
        self._limit -= 1
        await self._inner.send(message)


async def test_peer_whose_connection_closes_under_the_writer_is_dropped(
        tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with asyncio.timeout(60), running_nodes(tmp_path, ["gone", "stays", "dl"]) as nodes:
        gone, stays, dl = nodes
        for s in (gone, stays):
            cid = (await s.share(source)).content_id
        real_connect = p2p.node.connect

        async def connect(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            if (host, port) != gone.listen_address():
                return await real_connect(host, port, *args, **kwargs)
            # GetManifest and GetBitfield go out with the handshake (its speculative Requests
            # are lost on the way); the first Request sent later finds the connection closed.
            kwargs["first"] = [m for m in kwargs.get("first", ()) if not isinstance(m, Request)]
            return _SendFailsAfter(await real_connect(host, port, *args, **kwargs), 0)

        monkeypatch.setattr(p2p.node, "connect", connect)
        with dl.events.subscribed() as sub:
            path = (await dl.fetch(cid, tmp_path / "out.bin", timeout=15,
                                  peers=[gone.listen_address(), stays.listen_address()])).path
            events = drain(sub)
    assert path.read_bytes() == source.read_bytes()
    [done] = of(DownloadCompleted, events)
    assert str(gone.peer_id) not in done.chunks_by_peer


# -- partial seeding --------------------------------------------------------------------------


async def test_second_downloader_gets_chunks_from_incomplete_first(
        tmp_path: Path, source: Path) -> None:
    """A holds only half (its only source advertises the first half); B fetches from A and a
    seeder that advertises the second half only, so B's first half comes from A (or the half
    seeder), however fast that seeder is: a fast full seeder would take every request."""
    half = CHUNKS // 2
    async with asyncio.timeout(90), running_nodes(tmp_path, ["half", "full", "a", "b"]) as nodes:
        half_seeder, full_seeder, a, b = nodes
        for s in (half_seeder, full_seeder):
            cid = (await s.share(source)).content_id
        all_bits = half_seeder._store.bitfield(cid.digest)
        assert all_bits is not None
        first_half = bytes([0xFF] * (half // 8)) + bytes(len(all_bits[1]) - half // 8)
        second_half = bytes(half // 8) + bytes([0xFF] * (len(all_bits[1]) - half // 8))
        half_seeder._store.bitfield = (  # type: ignore[method-assign]
            lambda content_id: (CHUNKS, first_half) if content_id == cid.digest else None)
        full_seeder._store.bitfield = (  # type: ignore[method-assign]
            lambda content_id: (CHUNKS, second_half) if content_id == cid.digest else None)
        # Whatever the DHT tells them: A has no other source of the second half than B, and
        # B no other source of the first half than A.
        a._store.ban(full_seeder.peer_id, "test: A must not complete without B")
        b._store.ban(half_seeder.peer_id, "test: B gets the first half from A")
        a_events: list[Event] = []
        with a.events.subscribed() as a_sub, b.events.subscribed() as b_sub:
            fetch_a = asyncio.create_task(a.fetch(cid, tmp_path / "a.bin", timeout=30,
                                                  peers=[half_seeder.listen_address()]))
            fetch_b: asyncio.Task[FetchResult] | None = None
            try:
                got = 0
                while got < half:
                    await wait_for(a_sub, lambda e: isinstance(e, ChunkVerified), a_events)
                    got += 1
                a_download = a.download(cid)
                assert a_download is not None and a_download.scheduler is not None
                assert not a_download.scheduler.complete
                fetch_b = asyncio.create_task(b.fetch(
                    cid, tmp_path / "b.bin", timeout=30,
                    peers=[a.listen_address(), full_seeder.listen_address()]))
                from_a = await wait_for(b_sub, lambda e: isinstance(e, ChunkVerified)
                                        and e.peer == a.peer_id)
                b_path = (await fetch_b).path
                a_events += drain(a_sub)
                a_done = of(DownloadCompleted, a_events)
                # A either finished on its own (from B, once B announced) or is still stuck;
                # either way it was incomplete when B got the chunk from it.
                assert not a_done or from_a.at < a_done[0].at
                if not fetch_a.done():
                    fetch_a.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await fetch_a
                    a_path = (await a.fetch(cid, tmp_path / "a.bin", timeout=30,
                                           peers=[full_seeder.listen_address()])).path
                else:
                    a_path = fetch_a.result().path
            finally:
                fetch_a.cancel()
                if fetch_b is not None:
                    fetch_b.cancel()
    assert b_path.read_bytes() == source.read_bytes()
    assert a_path.read_bytes() == source.read_bytes()


# -- failures -----------------------------------------------------------------------------------


async def test_directory_with_nested_folders_and_empty_file_arrives_identical(tmp_path: Path) -> None:
    root = tmp_path / "album"
    make_file(root / "cover.bin", 300_000, seed=2)
    make_file(root / "disc1" / "track1.bin", 2 * MiB + 17, seed=3)
    make_file(root / "disc1" / "deep" / "er" / "notes.bin", 70_000, seed=4)
    make_file(root / "disc2" / "track1.bin", 1 * MiB, seed=5)
    (root / "disc2" / "empty.txt").write_bytes(b"")
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(root)
        out = (await dl.fetch(shared.ticket, tmp_path / "got", timeout=15)).path
    assert _tree(out) == _tree(root)
    assert (out / "disc2" / "empty.txt").stat().st_size == 0


async def test_a_folder_of_small_files_is_checked_in_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The small chunks that arrive in one loop turn go to the hashing pool in a few jobs, not
    one each (CHECK_JOB_BYTES): far fewer hand-offs than files, and every file arrives whole."""
    root = tmp_path / "many"
    files = 400
    for i in range(files):
        make_file(root / f"d{i % 4}" / f"f{i:03d}.bin", 3000 + i, seed=i)
    batch = Download._check_and_write_all
    jobs: list[int] = []

    def counted(self: Download, job: list[tuple[int, Any]]) -> list[bool]:
        jobs.append(len(job))
        return batch(self, job)

    monkeypatch.setattr(Download, "_check_and_write_all", counted)
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(root)
        out = (await dl.fetch(shared.ticket, tmp_path / "got", timeout=15)).path
    assert _tree(out) == _tree(root)
    assert sum(jobs) >= files  # every chunk went through a job (a copy may come twice)
    assert len(jobs) < files * 3 // 4 and max(jobs) > 1, jobs


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- disk full ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (needs root); unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_keeps_progress_and_resumes(
        tmp_path: Path, source: Path, small_disk: Path) -> None:
    async with asyncio.timeout(90), running_nodes(tmp_path, ["s0", "s1", "dl"]) as nodes:
        *seeders, dl = nodes
        for s in seeders:
            cid = (await s.share(source)).content_id
        peers = [s.listen_address() for s in seeders]
        with pytest.raises(DiskFull) as info:
            await dl.fetch(cid, small_disk / "out.bin", peers=peers, timeout=15)
        assert info.value.exit_code == 6  # a local problem a person can fix, not a bug
        assert "space" in str(info.value)
        with Store(tmp_path / "dl" / "state") as other:
            [row] = other.downloads()
        assert 0 < row.done_chunks < CHUNKS
        assert row.state == "failed"
        await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,size=64m", str(small_disk)],
                                check=True)
        with dl.events.subscribed() as sub:
            path = (await dl.fetch(cid, small_disk / "out.bin", peers=peers, timeout=15)).path
            events = drain(sub)
    [started] = of(DownloadStarted, events)
    [done] = of(DownloadCompleted, events)
    fetched = sum(done.chunks_by_peer.values())
    assert started.held >= row.done_chunks
    assert started.held + fetched == CHUNKS
    assert fetched < CHUNKS
    assert path.read_bytes() == source.read_bytes()


# -- a node on its own ------------------------------------------------------------------------

# Regression tests: Node.share() and Node.start() used to raise NoContacts (a NetworkError from
# dht.provide()) when the routing table was empty, so the first node of a swarm could not
# share, and a node with shares could not start again without a bootstrap node.


async def test_lone_node_shares_and_serves_by_ticket(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "small.bin", 1 * MiB)
    async with asyncio.timeout(30):
        async with Node(node_config(tmp_path, "alone")) as alone:
            shared = await alone.share(source)
            async with Node(node_config(tmp_path, "dl")) as dl:
                path = (await dl.fetch(shared.ticket, tmp_path / "out.bin", timeout=10)).path
        assert path.read_bytes() == source.read_bytes()


async def test_node_with_shares_restarts_without_bootstrap(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "small.bin", 1 * MiB)
    async with asyncio.timeout(30):
        async with running_nodes(tmp_path, ["seed", "other"]) as (seed, _):
            shared = await seed.share(source)
        async with Node(node_config(tmp_path, "seed")) as again:
            assert [s.content_id for s in again.library.shares()] == [shared.content_id]


# -- memory while the hash checks fall behind ---------------------------------------------------

BOUND = 1 * MiB


async def test_chunks_waiting_for_their_check_are_bounded_and_the_rest_wait_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hashing pool stops (a CPU taken by other work): once CHECK_BACKLOG_BYTES (here
    BOUND) wait for their check, the download takes no more messages from its peers, so
    what is in flight waits in the connection's bounded queue (and past that in TCP)
    instead of piling up in memory. Then the checks resume and the file arrives whole."""
    source = make_file(tmp_path / "src" / "big.bin", 96 * MiB)
    assert BOUND < CHECK_BACKLOG_BYTES
    loop = asyncio.get_running_loop()
    release = threading.Event()
    release.set()
    blocked = asyncio.Event()
    queued = asyncio.Event()
    verified = 0
    peak = 0
    check, spawn, queue = Download._check_and_write, Download._spawn_data, WireProtocol._queue_messages

    def slow_check(self: Download, index: int, payload: Any) -> bool:
        nonlocal verified
        verified += 1
        if verified == 64:  # the windows have grown: stop checking from here
            release.clear()
            loop.call_soon_threadsafe(blocked.set)
        release.wait(30)
        return check(self, index, payload)

    def counted_spawn(self: Download, state: Any, index: int, payload: Any) -> bool:
        nonlocal peak
        taken = spawn(self, state, index, payload)
        peak = max(peak, self._checking_bytes)
        return taken

    def watch(self: WireProtocol, msgs: list[Any]) -> None:
        queue(self, msgs)
        queued.set()

    def backed_up() -> bool:
        """Over the bound, with chunks waiting unread in the connection's queue."""
        return any(d._checking_bytes > BOUND and any(p.conn._p.queue for p in d._peers.values())
                   for d in dl.running_downloads())

    monkeypatch.setattr(p2p.swarm.download, "CHECK_BACKLOG_BYTES", BOUND)
    monkeypatch.setattr(Download, "_check_and_write", slow_check)
    monkeypatch.setattr(Download, "_spawn_data", counted_spawn)
    monkeypatch.setattr(WireProtocol, "_queue_messages", watch)
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(source)
        chunk = max(e.info.chunk_size for e in shared.manifest.entries)
        fetch = asyncio.create_task(dl.fetch(str(shared.content_id), tmp_path / "out.bin",
                                             peers=[seed.listen_address()], timeout=30))
        try:
            await blocked.wait()
            while not backed_up():  # what was in flight arrives and stays in the queue
                queued.clear()
                await queued.wait()
            assert peak <= BOUND + chunk
        finally:
            release.set()
        result = await fetch
    assert peak <= BOUND + chunk
    assert result.path.read_bytes() == source.read_bytes()


# -- streaming --------------------------------------------------------------------------------


async def test_stream_writes_verified_bytes_in_order_while_the_download_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last chunk's check is held back until the first chunks were written out: the
    stream can only finish if it writes while the download is still running."""
    source = make_file(tmp_path / "src" / "film.bin", 24 * MiB + 1234)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    check = Download._check_and_write
    last = -1

    def held_check(self: Download, index: int, payload: Any) -> bool:
        if index == last:
            release.wait(30)
        return check(self, index, payload)

    monkeypatch.setattr(Download, "_check_and_write", held_check)
    out = bytearray()
    writes = 0
    running_at_writes: list[bool] = []

    async def write(data: Any) -> None:
        nonlocal writes
        out.extend(data)
        writes += 1
        running_at_writes.append(bool(dl.running_downloads()))
        if writes == 8:
            loop.call_soon(release.set)

    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(source)
        last = shared.manifest.chunk_count - 1
        try:
            result = await dl.stream(str(shared.content_id), write, peers=[seed.listen_address()])
        finally:
            release.set()
    assert bytes(out) == source.read_bytes()
    assert all(running_at_writes[:8])  # the first chunks went out during the download
    assert writes == shared.manifest.chunk_count
    assert result.path.read_bytes() == source.read_bytes()  # and the file is kept


async def test_a_folder_cannot_be_streamed(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "album"
    make_file(folder / "a.bin", 300_000)
    make_file(folder / "b.bin", 300_000)

    async def write(data: Any) -> None:
        raise AssertionError("nothing may be written")

    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(folder)
        with pytest.raises(BadInput, match="only a single file"):
            await dl.stream(str(shared.content_id), write, peers=[seed.listen_address()])
        assert not dl.running_downloads()
