"""The first flight of a download: what goes out with the handshake, and what it saves.

GetManifest, GetBitfield and (to a peer named as holding the content) speculative Requests
travel with our Hello; chunks answering those requests before the scheduler exists are held
and checked like any other; a named peer counts as a seeder until its Bitfield. Real chunk
servers on 127.0.0.1 (port 0), the download on a fake clock; no sleeps.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path

from p2p.content import ContentId
from p2p.events import ChunkFailed, ChunkVerified, DownloadCompleted
from p2p.identity import PeerId
from p2p.swarm.download import REDISCOVER_INTERVAL, SPECULATIVE_CHUNKS
from p2p.wire.messages import (
    Bitfield,
    Data,
    GetBitfield,
    GetManifest,
    Manifest,
    Message,
    Reject,
    Request,
)

from .conftest import drain, wait_for
from .doubles import (
    Address,
    Dialer,
    FakeClock,
    Holder,
    Watched,
    make_content,
    running_download,
    seeders,
)

T = 30


def requests(conn: Watched) -> collections.Counter[int]:
    """How often each chunk was asked on ``conn``."""
    return collections.Counter(m.index for m in conn.sent if isinstance(m, Request))


def named_holders(addresses: list[Address]):  # type: ignore[no-untyped-def]
    """A provider source naming, each round, the addresses listed then as holding the content."""
    async def providers(content_id: ContentId) -> AsyncIterator[tuple[PeerId | None, list[Address], bool]]:
        for addr in list(addresses):
            yield None, [addr], True
    return providers


class DataBeforeManifest(Watched):
    """Hands the download the speculative chunks before the Manifest (and the Bitfield):
    they then arrive while no scheduler exists."""

    async def __anext__(self) -> Message:
        if not hasattr(self, "_held"):
            self._held: list[Message] = []
            self._ready: list[Message] = []
        while not self._ready:
            message = await super().__anext__()
            if isinstance(message, (Manifest, Bitfield)):
                self._held.append(message)
                continue
            self._ready.append(message)
            if isinstance(message, Data) and message.index == SPECULATIVE_CHUNKS - 1:
                self._ready += self._held
        return self._ready.pop(0)


class BitfieldSwallowed(Watched):
    """The peer's Bitfield never reaches the download."""

    async def __anext__(self) -> Message:
        while isinstance(message := await super().__anext__(), Bitfield):
            pass
        return message


async def test_manifest_bitfield_and_speculative_requests_go_with_the_hello_and_are_asked_once(
        tmp_path: Path) -> None:
    content = make_content(10)
    clock = FakeClock()
    async with asyncio.timeout(T), seeders(Holder(content)) as [seed]:
        dialer = Dialer()
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[seed.address]) as rig:
            await rig.run
            events = drain(rig.events)
    [conn] = dialer.connections[seed.address]
    cid = content.content_id.digest
    assert conn.sent[:2 + SPECULATIVE_CHUNKS] == [
        GetManifest(cid), GetBitfield(cid), *(Request(cid, i) for i in range(SPECULATIVE_CHUNKS))]
    assert sum(isinstance(m, (GetManifest, GetBitfield)) for m in conn.sent) == 2  # not sent again
    assert requests(conn) == dict.fromkeys(range(10), 1)
    [done] = [e for e in events if isinstance(e, DownloadCompleted)]
    assert done.chunks_by_peer == {str(seed.peer): 10}
    assert (tmp_path / "dl" / "downloads" / "movie.bin").read_bytes() == content.data


async def test_chunks_before_the_scheduler_are_held_then_checked_and_cost_nothing(
        tmp_path: Path) -> None:
    content = make_content(10)
    clock = FakeClock()

    class Reordering(Dialer):
        watched = DataBeforeManifest

    async with asyncio.timeout(T), seeders(Holder(content)) as [seed]:
        # Deaf to the chunks after the speculative ones: the download stays open to look at.
        dialer = Reordering(deaf_to={seed.address: range(SPECULATIVE_CHUNKS, 10)})
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[seed.address]) as rig:
            verified = set()
            while len(verified) < SPECULATIVE_CHUNKS:
                event = await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
                verified.add(event.index)
            assert verified == set(range(SPECULATIVE_CHUNKS))
            [conn] = dialer.connections[seed.address]
            assert all(requests(conn)[i] == 1 for i in range(SPECULATIVE_CHUNKS))
            assert rig.download._peers[seed.peer].budget.spent == 0
            assert rig.download._early_bytes == 0
            assert rig.download.partial is not None and rig.download.partial.done == SPECULATIVE_CHUNKS


async def test_speculative_requests_past_the_end_of_a_small_file_cost_the_peer_nothing(
        tmp_path: Path) -> None:
    content = make_content(2)
    clock = FakeClock()
    rejected = asyncio.Event()

    class CountsRejects(Watched):
        rejects = 0

        async def __anext__(self) -> Message:
            # Asked for the next message only once the download handled the last one.
            if CountsRejects.rejects == SPECULATIVE_CHUNKS - 2:
                rejected.set()
            message = await super().__anext__()
            if isinstance(message, Reject):
                CountsRejects.rejects += 1
            return message

    class Counting(Dialer):
        watched = CountsRejects

    async with asyncio.timeout(T), seeders(Holder(content)) as [seed]:
        dialer = Counting(deaf_to={seed.address: {1}})  # chunk 1 unanswered: the download waits
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[seed.address]) as rig:
            await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified) and e.index == 0)
            await rejected.wait()  # BAD_INDEX for chunks 2 and 3, handled
            state = rig.download._peers[seed.peer]
            assert state.budget.spent == 0
            assert not rig.store.is_banned(seed.peer)


async def test_a_bad_speculative_chunk_is_a_strike(tmp_path: Path) -> None:
    content = make_content(10)
    clock = FakeClock()

    class Corrupt(Holder):
        def read_chunk(self, content_id: bytes, index: int) -> bytes:
            chunk = super().read_chunk(content_id, index)
            return bytes([chunk[0] ^ 1]) + chunk[1:] if index == 0 else chunk

    async with asyncio.timeout(T), seeders(Corrupt(content)) as [seed], \
            running_download(tmp_path, content.content_id, clock, peers=[seed.address]) as rig:
        failed = await wait_for(rig.events, lambda e: isinstance(e, ChunkFailed))
        assert (failed.index, failed.peer) == (0, seed.peer)
        scheduler = rig.download.scheduler
        assert scheduler is not None and scheduler.peers[seed.peer].strikes == 1
        assert rig.download.partial is not None and not rig.download.partial.has(0)


async def test_a_named_peer_is_asked_before_its_bitfield_and_its_bitfield_then_counts(
        tmp_path: Path) -> None:
    content = make_content(12)
    clock = FakeClock()

    class Swallowing(Dialer):
        watched = BitfieldSwallowed

    async with asyncio.timeout(T), seeders(Holder(content), Holder(content)) as [first, late]:
        # The first peer gives the manifest and its speculative chunks, then nothing more.
        dialer = Dialer(deaf_to={first.address: range(SPECULATIVE_CHUNKS, 12)})
        found: list[Address] = []
        swallowing = Swallowing()
        swallowing.identity = dialer.identity

        async def dial(addr: Address, peer: PeerId | None, first_messages: list[Message]) -> Watched:
            chosen = swallowing if addr == late.address else dialer
            return await chosen(addr, peer, first_messages)

        dial.identity = dialer.identity  # type: ignore[attr-defined]
        async with running_download(tmp_path, content.content_id, clock, dialer=dial,
                                    peers=[first.address], providers=named_holders(found)) as rig:
            while (rig.download.partial is None or rig.download.partial.done < SPECULATIVE_CHUNKS):
                await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
            # The manifest is known: a peer from a provider record is asked at once, taken
            # for a seeder, though its Bitfield never comes.
            found.append(late.address)
            clock.advance(REDISCOVER_INTERVAL)
            rig.download.handle_timer()
            await rig.run
            events = drain(rig.events)
    [conn] = swallowing.connections[late.address]
    assert GetBitfield(content.content_id.digest) in conn.sent
    assert not any(isinstance(m, GetManifest) for m in conn.sent)
    [done] = [e for e in events if isinstance(e, DownloadCompleted)]
    assert done.chunks_by_peer == {str(first.peer): SPECULATIVE_CHUNKS,
                                   str(late.peer): 12 - SPECULATIVE_CHUNKS}


async def test_a_named_peers_real_bitfield_replaces_the_seeder_assumption(tmp_path: Path) -> None:
    content = make_content(12)
    clock = FakeClock()
    release, handled = asyncio.Event(), asyncio.Event()
    release.set()

    class BitfieldHeld(Watched):
        """Holds the peer's Bitfield until the test releases it; ``handled`` is set once the
        download took it (it asks for the next message only after handling one)."""

        async def __anext__(self) -> Message:
            if getattr(self, "gave_bitfield", False):
                handled.set()
            message = await super().__anext__()
            if isinstance(message, Bitfield):
                await release.wait()
                self.gave_bitfield = True
            return message

    class Holding(Dialer):
        watched = BitfieldHeld

    async with asyncio.timeout(T), seeders(Holder(content), Holder(content, range(6))) as [first, late]:
        dialer = Holding(deaf_to={first.address: range(SPECULATIVE_CHUNKS, 12),
                                  late.address: range(12)})
        found: list[Address] = []
        async with running_download(tmp_path, content.content_id, clock, dialer=dialer,
                                    peers=[first.address], providers=named_holders(found)) as rig:
            while (rig.download.partial is None or rig.download.partial.done < SPECULATIVE_CHUNKS):
                await wait_for(rig.events, lambda e: isinstance(e, ChunkVerified))
            # The first peer's Bitfield came before its chunks; the late one's is held.
            release.clear()
            found.append(late.address)
            clock.advance(REDISCOVER_INTERVAL)
            rig.download.handle_timer()
            conn = await dialer.connection(late.address)
            await conn.sent_one(Request).wait()  # asked before its Bitfield came
            scheduler = rig.download.scheduler
            assert scheduler is not None and scheduler.peers[late.peer].seeder
            assert any(m.index >= 6 for m in conn.sent if isinstance(m, Request))
            handled.clear()
            release.set()
            await handled.wait()
            assert not scheduler.peers[late.peer].seeder
            assert scheduler.peers[late.peer].bits == set(range(6))
