"""The download's timeouts and periodic work, on a fake clock; and who owns its tasks.

Each test runs one :class:`~p2p.swarm.download.Download` against real chunk
servers on 127.0.0.1 (port 0) with its clock injected: the test moves the clock
and calls ``handle_timer()``, so nothing waits for real time to pass and no
test depends on how fast this machine is. Every wait for something to happen
is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from p2p import exit_code_for
from p2p.content import ContentId
from p2p.errors import IntegrityError, NetworkError, NotFound, WrongPublisher
from p2p.events import (
    ChunkFailed,
    ChunkRequested,
    ChunkVerified,
    DownloadCompleted,
    DownloadProgress,
    DownloadStarted,
    PeerBanned,
    PeerDropped,
)
from p2p.identity import Identity, PeerId
from p2p.swarm.download import (
    COMMIT_INTERVAL,
    CONNECT_TIMEOUT,
    PEER_SILENCE_TIMEOUT,
    PROGRESS_INTERVAL,
    REDISCOVER_INTERVAL,
    SPECULATIVE_CHUNKS,
    WRONG_PUBLISHER_GRACE,
)
from p2p.swarm.scheduler import REQUEST_TIMEOUT
from p2p.wire.errors import ConnectionLost
from p2p.wire.messages import Bitfield, Cancel, Data, Manifest, Message, Request
from p2p.wire.transport import Connection

from .conftest import drain, wait_for
from .doubles import (
    Address,
    Content,
    Dialer,
    FakeClock,
    Holder,
    make_content,
    running_download,
    seeders,
)

T = 30
"""Bound on any single awaited step (real seconds, on a loaded machine): never reached when
the code works, so no test depends on it."""


def of(kind: type, events: list) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


def providers_from(addresses: list[Address]):  # type: ignore[no-untyped-def]
    """A provider source that yields, at each discovery round, the addresses listed then."""
    async def providers(content_id: ContentId) -> AsyncIterator[tuple[PeerId | None, list[Address], bool]]:
        for addr in list(addresses):
            yield None, [addr], True
    return providers


# -- requests ---------------------------------------------------------------------------------


async def test_unanswered_request_times_out_on_the_clock_and_the_chunk_goes_to_another_peer(
        tmp_path: Path) -> None:
    content = make_content(1)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Holder(content), Holder(content), Holder(content)) as (
            deaf1, deaf2, honest):
        # Two peers that claim every chunk and never answer hold the only chunk (the end game
        # allows two copies); the honest seeder is found at the next discovery round.
        dialer = Dialer(deaf=[deaf1.address, deaf2.address])
        found: list[Address] = []
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[deaf1.address, deaf2.address],
                                    providers=providers_from(found)) as rig:
            asked = set()
            while len(asked) < 2:
                event = await wait_for(rig.events, lambda e: isinstance(e, ChunkRequested))
                asked.add(event.peer)
            assert asked == {deaf1.peer, deaf2.peer}
            found.append(honest.address)
            clock.advance(REDISCOVER_INTERVAL)
            rig.download.handle_timer()
            conn = await dialer.connection(honest.address)
            await conn.received(Bitfield).wait()
            assert not of(ChunkRequested, drain(rig.events))  # both copies are out already
            assert not rig.run.done()

            clock.advance(REQUEST_TIMEOUT - REDISCOVER_INTERVAL)  # since the chunk was asked for
            rig.download.handle_timer()
            await rig.run
            events = drain(rig.events)
    assert [e.peer for e in of(ChunkRequested, events)] == [honest.peer]
    assert [e.peer for e in of(ChunkVerified, events)] == [honest.peer]
    assert (tmp_path / "dl" / "downloads" / "movie.bin").read_bytes() == content.data
    # The timed-out requests were cancelled at the deaf peers.
    for deaf in (deaf1, deaf2):
        [watched] = dialer.connections[deaf.address]
        assert Cancel(content.content_id.digest, 0) in watched.sent


async def test_request_is_not_expired_before_its_timeout(tmp_path: Path) -> None:
    content = make_content(1)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Holder(content)) as [deaf]:
        dialer = Dialer(deaf=[deaf.address])
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[deaf.address]) as rig:
            await wait_for(rig.events, lambda e: isinstance(e, ChunkRequested))
            asked_at = clock.now
            assert rig.download.next_deadline() == asked_at + PROGRESS_INTERVAL
            clock.advance(REQUEST_TIMEOUT - 0.001)
            rig.download.handle_timer()
            # Requests are planned (and their events published) as handle_timer runs: an
            # expired one would have gone straight back to the only peer.
            assert not of(ChunkRequested, drain(rig.events))
            clock.advance(0.001)
            rig.download.handle_timer()
            assert [e.peer for e in of(ChunkRequested, drain(rig.events))] == [deaf.peer]
            [conn] = dialer.connections[deaf.address]
            await conn.sent_one(Cancel).wait()
            # After GetManifest and GetBitfield: the speculative requests (chunk 0 and three
            # past the end of this one-chunk file), then chunk 0 cancelled and asked again.
            cid = content.content_id.digest
            assert conn.sent[2:] == [*(Request(cid, i) for i in range(SPECULATIVE_CHUNKS)),
                                     Cancel(cid, 0), Request(cid, 0)]


# -- before the manifest ----------------------------------------------------------------------


async def test_no_manifest_within_the_timeout_raises_not_found_and_writes_nothing(
        tmp_path: Path) -> None:
    clock = FakeClock()
    missing = make_content(1).content_id
    async with asyncio.timeout(T), running_download(tmp_path, missing, clock, timeout=20) as rig:
        start = clock.now
        assert rig.download.next_deadline() == start + 20
        clock.advance(20 - 0.001)
        rig.download.handle_timer()
        assert rig.download.next_deadline() == start + 20  # still waiting
        clock.advance(0.001)
        rig.download.handle_timer()
        assert rig.download.next_deadline() is None  # stopped
        with pytest.raises(NotFound, match="within 20 s"):
            await rig.run
        assert rig.store.download_info(missing) is None
    assert not (tmp_path / "dl" / "downloads").exists()


async def test_wrong_publisher_fails_after_the_grace_on_the_clock_and_writes_nothing(
        tmp_path: Path) -> None:
    content = make_content(4)
    clock = FakeClock()
    someone_else = Identity.generate().peer_id
    async with asyncio.timeout(T), seeders(Holder(content)) as [seed]:
        dialer = Dialer()
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[seed.address], publisher=someone_else) as rig:
            conn = await dialer.connection(seed.address)
            await conn.received(Manifest).wait()
            received_at = clock.now
            assert rig.download.next_deadline() == received_at + WRONG_PUBLISHER_GRACE
            clock.advance(WRONG_PUBLISHER_GRACE - 0.001)
            rig.download.handle_timer()
            assert rig.download.next_deadline() == received_at + WRONG_PUBLISHER_GRACE
            clock.advance(0.001)
            rig.download.handle_timer()
            with pytest.raises(WrongPublisher):
                await rig.run
            assert rig.store.download_info(content.content_id) is None
            assert not of(DownloadStarted, drain(rig.events))
    assert not (tmp_path / "dl" / "downloads").exists()


async def test_a_dial_that_hangs_is_abandoned_at_the_connect_timeout(tmp_path: Path) -> None:
    clock = FakeClock()
    entered, abandoned = asyncio.Event(), asyncio.Event()

    class Hangs(Dialer):
        async def __call__(self, addr: Address, peer: PeerId | None,
                           first: Sequence[Message] = ()) -> Connection:
            entered.set()
            try:
                await asyncio.Future()  # a SYN nobody answers
            except asyncio.CancelledError:
                abandoned.set()
                raise
            raise AssertionError("unreachable")

    content_id = make_content(1).content_id
    async with asyncio.timeout(T), running_download(
            tmp_path, content_id, clock, dialer=Hangs(), peers=[("127.0.0.1", 9)]) as rig:
        await entered.wait()
        start = clock.now
        assert rig.download.next_deadline() == start + CONNECT_TIMEOUT  # before the manifest's
        clock.advance(CONNECT_TIMEOUT - 0.001)
        rig.download.handle_timer()
        assert rig.download.next_deadline() == start + CONNECT_TIMEOUT
        clock.advance(0.001)
        rig.download.handle_timer()
        await abandoned.wait()
        # The only address could not be reached and there is nothing else to try: the
        # download says so now rather than at the manifest timeout.
        with pytest.raises(NetworkError, match=r"could not connect to 127\.0\.0\.1:9 \(no answer within 5 s\)"):
            await rig.run


# -- during the transfer ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def half_fetched(tmp_path: Path, clock: FakeClock, **kwargs: object) -> AsyncIterator[tuple]:  # type: ignore[type-arg]
    """A download of 8 chunks from a seeder that holds the first 4: it stalls at 4."""
    content = make_content(8)
    async with seeders(Holder(content, range(4))) as [seed], running_download(
            tmp_path, content.content_id, clock, peers=[seed.address], **kwargs) as rig:  # type: ignore[arg-type]
        got = 0
        while got < 4:
            await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
            got += 1
        yield content, seed, rig


async def test_progress_events_come_every_interval_of_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    async with asyncio.timeout(T), half_fetched(tmp_path, clock) as (_content, _seed, rig):
        # The first chunks were fetched at one instant of the fake clock: no progress yet.
        assert not of(DownloadProgress, drain(rig.events))
        assert rig.download.progress is None
        clock.advance(PROGRESS_INTERVAL - 0.001)
        rig.download.handle_timer()
        assert not of(DownloadProgress, drain(rig.events))
        clock.advance(0.001)
        rig.download.handle_timer()
        [progress] = of(DownloadProgress, drain(rig.events))
        assert rig.download.progress == progress
        assert (progress.done_chunks, progress.chunk_count, progress.peers) == (4, 8, 1)
        assert progress.bytes_done > 0 and progress.rate > 0
        rig.download.handle_timer()  # the clock did not move: nothing is due
        assert not of(DownloadProgress, drain(rig.events))
        for _ in range(3):
            clock.advance(PROGRESS_INTERVAL)
            rig.download.handle_timer()
        assert len(of(DownloadProgress, drain(rig.events))) == 3


async def test_progress_records_are_batched_by_the_clock_and_only_when_there_is_news(
        tmp_path: Path) -> None:
    clock = FakeClock()
    async with asyncio.timeout(T), half_fetched(tmp_path, clock) as (content, _seed, rig):
        assert rig.sync_pool.named("commit") == []
        clock.advance(COMMIT_INTERVAL - 0.001)
        rig.download.handle_timer()
        assert rig.sync_pool.named("commit") == []
        clock.advance(0.001)
        rig.download.handle_timer()
        [commit] = rig.sync_pool.named("commit")
        assert await asyncio.wrap_future(commit) == 4
        info = rig.store.download_info(content.content_id)
        assert info is not None and info.done_chunks == 4
        clock.advance(10 * COMMIT_INTERVAL)  # nothing new arrived: nothing to record
        rig.download.handle_timer()
        assert len(rig.sync_pool.named("commit")) == 1


async def test_every_peer_gone_for_the_timeout_fails_and_keeps_the_progress(tmp_path: Path) -> None:
    clock = FakeClock()
    async with asyncio.timeout(T), half_fetched(tmp_path, clock, timeout=20) as (content, seed, rig):
        await seed.server.aclose()
        await wait_for(rig.events, lambda e: isinstance(e, PeerDropped))
        clock.advance(20 - 0.001)
        rig.download.handle_timer()
        # Still running: it published progress (a failing timer publishes none) ...
        [progress] = of(DownloadProgress, drain(rig.events))
        assert progress.peers == 0
        clock.advance(0.001)
        rig.download.handle_timer()
        with pytest.raises(NetworkError, match=r"no peer .* for 20 s; progress is kept \(4/8"):
            await rig.run
        assert not of(DownloadProgress, drain(rig.events))
        info = rig.store.download_info(content.content_id)
        assert info is not None and info.done_chunks == 4


async def test_a_peer_that_claims_every_chunk_and_stops_answering_fails_at_the_timeout(
        tmp_path: Path) -> None:
    content = make_content(8)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Holder(content)) as [seed]:
        # A full bitfield, and chunks 4-7 asked for are never sent: the request timeout alone
        # would ask the same silent peer again, forever.
        dialer = Dialer(deaf_to={seed.address: range(4, 8)})
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[seed.address], timeout=6) as rig:
            for _ in range(4):
                await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
            last_verified = clock.now
            assert REQUEST_TIMEOUT > 6  # so the request timeout cannot end it first
            clock.advance(6 - 0.001)
            rig.download.handle_timer()
            assert not rig.run.done()
            assert rig.download.next_deadline() == last_verified + 6
            clock.advance(0.001)
            rig.download.handle_timer()
            with pytest.raises(NotFound) as failure:
                await rig.run
            assert str(failure.value).startswith(
                "no verified data for 6 s from 1 peer that claims the content ")
            assert str(failure.value).endswith("progress is kept (4/8 chunks)")
            assert exit_code_for(failure.value) == 3
            info = rig.store.download_info(content.content_id)
            assert info is not None and info.done_chunks == 4
    [partial] = (tmp_path / "dl" / "downloads").iterdir()  # kept for the next try
    assert partial.name != "movie.bin"


async def test_a_peer_that_answers_each_chunk_within_the_timeout_never_trips_it(
        tmp_path: Path) -> None:
    content = make_content(3)
    clock = FakeClock()
    step = 4.5
    """Under the timeout (6 s) between chunks; the whole download takes more than twice it,
    and less than the request timeout, so no request is asked again."""
    assert 3 * step < REQUEST_TIMEOUT
    async with asyncio.timeout(T), seeders(Holder(content)) as [seed]:
        dialer = Dialer(deaf=[seed.address])  # the test passes each request on, late
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[seed.address], timeout=6) as rig:
            asked = [await wait_for(rig.events, lambda e: isinstance(e, ChunkRequested))
                     for _ in range(3)]
            conn = await dialer.connection(seed.address)
            start = clock.now
            for event in asked:
                clock.advance(step)
                rig.download.handle_timer()
                assert rig.download.next_deadline() is not None  # None once it stopped
                await conn.deliver(Request(content.content_id.digest, event.index))
                await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified | DownloadCompleted))
            await rig.run
    assert clock.now - start == 3 * step
    assert (tmp_path / "dl" / "downloads" / "movie.bin").read_bytes() == content.data


class Corrupting(Holder):
    """Claims every chunk and sends each one with its first byte flipped."""

    def read_chunk(self, content_id: bytes, index: int) -> bytes:
        chunk = super().read_chunk(content_id, index)
        return bytes([chunk[0] ^ 0xFF]) + chunk[1:]


async def test_the_only_peer_sending_bad_chunks_ends_in_an_integrity_failure(
        tmp_path: Path) -> None:
    content: Content = make_content(8)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Corrupting(content)) as [liar], running_download(
            tmp_path, content.content_id, clock, peers=[liar.address], timeout=6) as rig:
        seen: list[object] = []
        banned = await wait_for(rig.events, lambda e: isinstance(e, PeerBanned), seen)
        assert banned.peer == liar.peer
        assert of(ChunkFailed, seen)
        clock.advance(6)
        rig.download.handle_timer()
        with pytest.raises(IntegrityError) as failure:
            await rig.run
    assert str(failure.value).startswith(
        f"1 peer that offered {content.content_id} sent chunks that fail verification "
        "and was banned")
    assert exit_code_for(failure.value) == 4


async def test_a_liar_banned_next_to_a_peer_that_left_is_a_network_failure(
        tmp_path: Path) -> None:
    content = make_content(8)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Corrupting(content), Holder(content, ())) as (
            liar, empty), running_download(tmp_path, content.content_id, clock,
                                           peers=[liar.address, empty.address], timeout=6) as rig:
        await wait_for(rig.events, lambda e: isinstance(e, PeerBanned))
        await empty.server.aclose()
        await wait_for(rig.events, lambda e: isinstance(e, PeerDropped) and e.peer == empty.peer)
        clock.advance(6)
        rig.download.handle_timer()
        with pytest.raises(NetworkError, match="no peer to download"):
            await rig.run


async def test_resumed_download_reports_no_negative_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    async with asyncio.timeout(T), half_fetched(tmp_path, clock) as (content, _seed, _first):
        pass  # paused with 4 of 8 chunks recorded
    async with asyncio.timeout(T), seeders(Holder(content)) as [deaf]:
        dialer = Dialer(deaf=[deaf.address])
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[deaf.address]) as rig:
            started = await wait_for(rig.events, lambda e: isinstance(e, DownloadStarted))
            assert started.held == 4
            clock.advance(PROGRESS_INTERVAL)
            rig.download.handle_timer()
            [progress] = of(DownloadProgress, drain(rig.events))
            # Nothing new arrived: the rate is 0 (it was minus the resumed bytes per second).
            assert progress.done_chunks == 4 and progress.rate == 0.0 and progress.eta is None


async def test_ticket_address_is_dialled_again_at_the_next_discovery_round_after_its_connection_drops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = make_content(16)
    cut_after = 4
    first: list[Connection] = []
    sent_on_first = 0
    send = Connection.send

    async def cut_first_connection(conn: Connection, message: Message) -> None:
        nonlocal sent_on_first
        if isinstance(message, Data):  # only the seeder sends Data
            if not first:
                first.append(conn)
            if conn is first[0]:
                if sent_on_first >= cut_after:
                    conn.abort("test: first connection cut mid-transfer")
                    raise ConnectionLost("cut")
                sent_on_first += 1
        await send(conn, message)

    monkeypatch.setattr(Connection, "send", cut_first_connection)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Holder(content)) as [seed]:
        dialer = Dialer()
        # The ticket's address is the only source; the DHT knows nobody.
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[seed.address], providers=providers_from([])) as rig:
            await wait_for(rig.events, lambda e: isinstance(e, PeerDropped))
            assert len(dialer.connections[seed.address]) == 1
            clock.advance(REDISCOVER_INTERVAL)
            rig.download.handle_timer()
            await rig.run
            events = drain(rig.events)
    assert sent_on_first == cut_after
    assert len(dialer.connections[seed.address]) == 2
    [done] = of(DownloadCompleted, events)
    assert done.chunks_by_peer == {str(seed.peer): 16}  # over two connections
    assert (tmp_path / "dl" / "downloads" / "movie.bin").read_bytes() == content.data


# -- task ownership -----------------------------------------------------------------------------


def tasks_of(content_id: ContentId) -> list[asyncio.Task]:  # type: ignore[type-arg]
    """Tasks still running that a download of ``content_id`` started (they carry its name)."""
    prefix = f"download {content_id.short()}: "
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


async def test_a_finished_or_paused_download_leaves_no_task_behind(tmp_path: Path) -> None:
    content = make_content(8)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Holder(content), Holder(content, range(4))) as (
            full, half):
        async with running_download(tmp_path, content.content_id, clock, name="done",
                                    peers=[full.address, half.address]) as rig:
            await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
            assert tasks_of(content.content_id)  # discovery, dialler, peers, writers ...
            await rig.run
            assert tasks_of(content.content_id) == []
        async with half_fetched(tmp_path, clock) as (_content, _seed, paused):
            assert tasks_of(content.content_id)
            paused.run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await paused.run
            assert tasks_of(content.content_id) == []


async def test_a_bug_in_a_download_task_is_logged_and_ends_the_download(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    content = make_content(4)
    clock = FakeClock()

    def broken(content_id: bytes, index: int) -> None:
        raise RuntimeError("a bug in the Have announcer")

    async with asyncio.timeout(T), seeders(Holder(content)) as [seed], running_download(
            tmp_path, content.content_id, clock, peers=[seed.address], on_have=broken) as rig:
        with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="a bug"):
            await rig.run
        assert tasks_of(content.content_id) == []
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed  # each chunk task that hit the bug, with its traceback
    assert all(r.exc_info and "a bug in the Have announcer" in str(r.exc_info[1]) for r in failed)


# -- peers that stop answering ------------------------------------------------------------------


async def test_a_peer_that_stops_answering_is_dropped_named_and_the_failure_says_why(
        tmp_path: Path) -> None:
    content = make_content(8)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Holder(content)) as [deaf]:
        # It sends its manifest and Bitfield, then nothing: suspended, or behind a dead link.
        dialer = Dialer(deaf=[deaf.address])
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[deaf.address], timeout=30) as rig:
            await wait_for(rig.events, lambda e: isinstance(e, ChunkRequested))
            conn = await dialer.connection(deaf.address)
            await conn.received(Bitfield).wait()
            heard = clock.now  # the fake clock has not moved since it was heard
            clock.advance(PEER_SILENCE_TIMEOUT - 0.001)
            rig.download.handle_timer()
            assert not [e for e in of(PeerDropped, drain(rig.events)) if e.notable]
            assert rig.download.peers == [deaf.peer]
            clock.advance(0.001)
            assert rig.download.next_deadline() == heard + PEER_SILENCE_TIMEOUT
            rig.download.handle_timer()
            [dropped] = [e for e in of(PeerDropped, drain(rig.events)) if e.notable]
            assert dropped.peer == deaf.peer and "stopped answering" in dropped.reason
            assert rig.download.peers == []
            clock.advance(30)
            rig.download.handle_timer()
            with pytest.raises(NetworkError, match="stopped answering") as failed:
                await rig.run
    assert exit_code_for(failed.value) == 5


async def test_a_slow_peer_that_still_delivers_is_not_dropped(tmp_path: Path) -> None:
    content = make_content(3)
    clock = FakeClock()
    cid = content.content_id.digest
    async with asyncio.timeout(T), seeders(Holder(content)) as [slow]:
        dialer = Dialer(deaf_to={slow.address: {1, 2}})  # chunks 1 and 2 are answered late
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[slow.address], timeout=60) as rig:
            conn = await dialer.connection(slow.address)
            await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
            start = clock.now
            clock.advance(PEER_SILENCE_TIMEOUT - 1)
            await conn.deliver(Request(cid, 1))  # a late answer, before any timer ran
            verified = await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
            assert verified.index == 1  # type: ignore[attr-defined]
            clock.advance(PEER_SILENCE_TIMEOUT - 2)  # chunk 2 still owed, and 37 s since start
            assert clock.now - start > PEER_SILENCE_TIMEOUT
            rig.download.handle_timer()
            assert not [e for e in of(PeerDropped, drain(rig.events)) if e.notable]
            assert rig.download.peers == [slow.peer]  # it spoke 18 s ago
            clock.advance(2)
            rig.download.handle_timer()
            [dropped] = [e for e in of(PeerDropped, drain(rig.events)) if e.notable]
            assert dropped.peer == slow.peer


# -- nobody to connect to --------------------------------------------------------------------


async def test_addresses_that_all_refuse_fail_at_once_with_could_not_connect(tmp_path: Path) -> None:
    content = make_content(1)
    clock = FakeClock()
    closed = []
    for _ in range(2):  # ports nothing listens on: bound, then closed
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        closed.append(("127.0.0.1", server.sockets[0].getsockname()[1]))
        server.close()
        await server.wait_closed()
    async with asyncio.timeout(T), running_download(tmp_path, content.content_id, clock,
                                                    peers=closed, timeout=30) as rig:
        with pytest.raises(NetworkError, match=r"could not connect to 127\.0\.0\.1:") as failed:
            await rig.run  # the fake clock never moved: no timeout was waited for
    assert "connection refused" in str(failed.value)
    assert all(f"127.0.0.1:{port}" in str(failed.value) for _, port in closed)
    assert exit_code_for(failed.value) == 5
