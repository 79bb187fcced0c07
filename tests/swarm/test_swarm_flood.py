"""A provider that floods its downloader with messages that change nothing, on 127.0.0.1.

The flooder completes a real handshake, answers the download's GetManifest and
GetBitfield like a peer that holds nothing, then sends as fast as it can what the issue
measured freezing downloads: Haves past the last chunk and for chunks already claimed,
Rejects of requests never made, and repeated Bitfields. The download must finish from the
honest seeder and ban the flooder once past its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from p2p.events import DownloadCompleted, PeerBanned
from p2p.identity import Identity
from p2p.node import Node
from p2p.tasks import TaskOwner
from p2p.wire.budget import NOOP_BURST
from p2p.wire.errors import ClosedByUs, ConnectionLost
from p2p.wire.messages import (
    PROTOCOL_VERSION,
    Bitfield,
    Data,
    GetBitfield,
    GetManifest,
    Have,
    Hello,
    Manifest,
    Message,
    Reject,
    RejectReason,
)
from p2p.wire.session import Session
from p2p.wire.transport import READ_BATCH, Connection, WireProtocol

from .conftest import MiB, drain, make_file, node_config, running_nodes, wait_for
from .doubles import FakeClock, make_content, running_download

T = 60


class Flooder:
    """A listener whose every connection turns into a flood once it learns the content id."""

    def __init__(self, flood: Callable[[bytes], list[Message]], manifest: bytes | None = None) -> None:
        self.flood = flood
        """The messages to repeat, given the content id."""
        self.manifest = manifest
        """What it answers GetManifest with."""
        self.identity = Identity.generate()
        self.sent = 0
        self.closed = asyncio.Event()
        """Set when a flooded connection was closed by the other side."""
        self._tasks = TaskOwner("flooder", None)

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: WireProtocol(on_made=self._made), "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[:2]
        finally:
            server.close()
            await self._tasks.aclose()

    def _made(self, proto: WireProtocol) -> None:
        hello = Hello(PROTOCOL_VERSION, self.identity.peer_id, (), "flooder")
        proto.attach(Session(self.identity, hello, initiator=False))
        self._tasks.spawn(self._serve(proto), "flood")

    async def _serve(self, proto: WireProtocol) -> None:
        await proto.ready
        conn = Connection(proto)
        try:
            cid = await self._answer_until_content_id(conn)
            await self._flood(conn, cid)
        except (ConnectionLost, ClosedByUs):
            self.closed.set()

    async def _answer_until_content_id(self, conn: Connection) -> bytes:
        while True:
            message = await conn.receive()
            match message:
                case GetManifest(content_id=cid):
                    await conn.send(Manifest(cid, self.manifest))
                case GetBitfield(content_id=cid):
                    await conn.send(Bitfield(cid, 0, b""))  # holds nothing (yet)
                    return cid

    async def _flood(self, conn: Connection, cid: bytes) -> None:
        cheap = self.flood(cid)
        while True:
            await conn.send(cheap[self.sent % len(cheap)])
            self.sent += 1
            if self.sent % READ_BATCH == 0:
                await asyncio.sleep(0)  # one process: let the victim run


def cheap(cid: bytes) -> list[Message]:
    """Haves past the last chunk, Rejects of requests never made, Bitfields again."""
    return [Have(cid, 1 << 30), Reject(cid, 5, RejectReason.NOT_HELD), Bitfield(cid, 0, b""),
            Have(cid, 1 << 31)]


def unrequested_data(cid: bytes) -> list[Message]:
    """Chunks nobody asked for: each costs a decryption."""
    return [Data(cid, 0, bytes(1 << 20))]


async def test_a_flooding_provider_is_banned_and_the_download_completes(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "movie.bin", 8 * MiB)
    flooder = Flooder(cheap)
    async with asyncio.timeout(T), flooder.listening() as flood_addr, \
            running_nodes(tmp_path, ["seeder"]) as [seeder]:
        shared = await seeder.share(source)
        async with Node(node_config(tmp_path, "dl", [seeder.listen_address()])) as dl:
            with dl.events.subscribed() as sub:
                result = await dl.fetch(str(shared.content_id), tmp_path / "out.bin",
                                        peers=[flood_addr, seeder.listen_address()], timeout=20)
                events = drain(sub)
            await flooder.closed.wait()
            bans = {str(ban.peer): ban.reason for ban in dl.library.bans()}
    assert result.path.read_bytes() == source.read_bytes()
    banned = [e for e in events if isinstance(e, PeerBanned)]
    assert [(e.peer, e.reason.split(":")[0]) for e in banned] == [(flooder.identity.peer_id, "flooding")]
    assert bans[str(flooder.identity.peer_id)].startswith("flooding")
    [done] = [e for e in events if isinstance(e, DownloadCompleted)]
    assert set(done.chunks_by_peer) == {str(seeder.peer_id)}


async def test_unrequested_data_is_charged_by_its_size(tmp_path: Path) -> None:
    """1 MiB chunks nobody asked for cost 16 tokens each: the budget (on a clock that does not
    move, so it never refills) is gone after about 125 of them, not 2,000."""
    content = make_content(4)
    flooder = Flooder(unrequested_data, manifest=content.manifest.encode())
    clock = FakeClock()
    async with asyncio.timeout(T), flooder.listening() as flood_addr, running_download(
            tmp_path, content.content_id, clock, peers=[flood_addr], timeout=10_000) as rig:
        banned = await wait_for(rig.events, lambda e: isinstance(e, PeerBanned))
        await flooder.closed.wait()
    assert isinstance(banned, PeerBanned) and banned.peer == flooder.identity.peer_id
    spent = int(banned.reason.split()[1])
    assert NOOP_BURST / 16 < spent <= NOOP_BURST / 16 + 2, banned.reason
