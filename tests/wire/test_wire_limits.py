"""The chunk server's memory limits: the inbound frame cap, the send timeout for peers that stop
reading (on a fake clock), and the receive queue's accounting of Bitfield messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import blake3
import pytest

from p2p.identity import Identity
from p2p.testing import FakeClock, MemorySource
from p2p.wire.errors import ConnectionLost
from p2p.wire.messages import (
    DATA_HEADER,
    MAX_CHUNK,
    MAX_CHUNK_COUNT,
    PROTOCOL_VERSION,
    Bitfield,
    Data,
    Hello,
    Manifest,
    MessageType,
    Ping,
    Pong,
    Request,
)
from p2p.wire.server import PeerDisconnected, Server, ServerEvent, ServerLimits
from p2p.wire.serving import STOPPED_READING
from p2p.wire.session import Session, State
from p2p.wire.transport import WireProtocol, connect

from .recorder import Recorder
from .recorder import serving as shared_serving

CID = blake3.blake3(b"limits").digest()
BIG = 1 << 20
CHUNKS: list[bytes | None] = [bytes([i]) * BIG for i in range(4)]
T = 30  # generous deadline for any single awaited event on a loaded machine


def serving(limits: ServerLimits, clock: FakeClock | None = None,
            ) -> AbstractAsyncContextManager[tuple[Server, tuple[str, int], Recorder]]:
    return shared_serving(limits, CID, CHUNKS, clock=clock)


def disconnected(peer: object) -> Callable[[ServerEvent], bool]:
    return lambda e: isinstance(e, PeerDisconnected) and e.peer == peer


# -- inbound frame cap ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "dropped"), [(60 * 1024, False), (BIG, True)])
async def test_server_drops_a_client_whose_frame_exceeds_64_kib(size: int, dropped: bool) -> None:
    # A Manifest is a message the server ignores: only the frame's size can get the client dropped.
    async with asyncio.timeout(T), serving(ServerLimits()) as (server, (host, port), recorder):
        me = Identity.generate()
        conn = await connect(host, port, me, expected_peer=server.identity.peer_id, timeout=T)
        try:
            await conn.send(Manifest(CID, b"m" * size))
            await conn.send(Ping(7))
            if dropped:
                with pytest.raises(ConnectionLost):
                    await conn.receive()
                event = await recorder.wait_for(disconnected(me.peer_id))
                assert isinstance(event, PeerDisconnected)
                assert event.reason.startswith("protocol violation"), event.reason
            else:
                assert await conn.receive() == Pong(7)
        finally:
            await conn.aclose()


async def test_server_drops_a_client_at_the_header_of_a_16_mib_frame() -> None:
    async with asyncio.timeout(T), serving(ServerLimits()) as (server, (host, port), recorder):
        me = Identity.generate()
        conn = await connect(host, port, me, expected_peer=server.identity.peer_id, timeout=T)
        try:
            # Only the head of a Data frame announcing a 16 MiB payload; the payload never
            # comes. A server that waited for the rest would keep the connection (and its
            # 16 MiB frame buffer) until its idle timeout.
            head = (DATA_HEADER + MAX_CHUNK).to_bytes(4, "big") + bytes((MessageType.DATA,)) \
                + CID + (0).to_bytes(4, "big")
            proto = conn._p
            proto.session._out.append(proto.session._seal(head, b""))
            proto._flush()
            with pytest.raises(ConnectionLost):
                await conn.receive()
            event = await recorder.wait_for(disconnected(me.peer_id))
            assert isinstance(event, PeerDisconnected)
            assert "exceeds" in event.reason, event.reason
            assert server.connections() == []
        finally:
            await conn.aclose()


# -- peers that stop reading -----------------------------------------------------------------------


async def test_client_that_never_reads_is_dropped_after_send_timeout_while_another_is_served() -> None:
    clock = FakeClock()
    limits = ServerLimits(send_timeout=30.0, max_send_buffer=64 * 1024)
    async with asyncio.timeout(T), serving(limits, clock) as (server, (host, port), recorder):
        honest_id = Identity.generate()
        honest = await connect(host, port, honest_id,
                               expected_peer=server.identity.peer_id, timeout=T)
        staller_id = Identity.generate()
        # Its receive queue is small, so it soon stops reading the socket altogether.
        staller = await connect(host, port, staller_id, expected_peer=server.identity.peer_id,
                                timeout=T, max_receive_queue=64 * 1024)
        try:
            # 32 MiB asked for, more than loopback socket buffers hold; never read.
            for i in range(limits.max_inflight_requests):
                await staller.send(Request(CID, i % len(CHUNKS)))
            await recorder.wait_until(lambda: recorder.write_paused(staller_id.peer_id))
            # The other client is served chunk by chunk while the staller is stuck.
            for i in range(len(CHUNKS)):
                await honest.send(Request(CID, i))
                assert await honest.receive() == Data(CID, i, CHUNKS[i])

            # The clock runs only from here, with the staller's sending paused: at first
            # it is not due, then it is, exactly send_timeout after its sending paused.
            await recorder.wait_until(lambda: recorder.write_paused(staller_id.peer_id))
            clock.advance(limits.send_timeout - 0.5)
            assert server.handle_timers() == 0
            assert staller_id.peer_id in [c.peer for c in server.connections()]
            clock.advance(0.5)
            assert server.handle_timers() == 1
            event = await recorder.wait_for(disconnected(staller_id.peer_id))
            assert isinstance(event, PeerDisconnected) and event.reason == STOPPED_READING
            assert staller_id.peer_id not in [c.peer for c in server.connections()]

            # The other client is still served.
            for i in range(len(CHUNKS)):
                await honest.send(Request(CID, i))
                assert await honest.receive() == Data(CID, i, CHUNKS[i])
            assert [c.peer for c in server.connections()] == [honest_id.peer_id]
            assert len(recorder.disconnects()) == 1
        finally:
            await staller.aclose()
            await honest.aclose()


@pytest.mark.parametrize("clock", [FakeClock(), None], ids=["fake clock", "loop clock"])
async def test_the_servers_own_timer_drops_a_stalled_reader_when_due(clock: FakeClock | None) -> None:
    # With no stall allowed, the first pause is due at once: the timer, armed for an idle
    # deadline an hour away, has to be re-armed for it.
    limits = ServerLimits(send_timeout=0.0, idle_timeout=3600.0, max_send_buffer=64 * 1024)
    recorder = Recorder()
    server = Server(Identity.generate(), MemorySource({CID: list(CHUNKS)}), limits,
                    on_event=recorder, clock=clock)
    host, port = await server.start("127.0.0.1", 0)
    try:
        me = Identity.generate()
        conn = await connect(host, port, me, timeout=T, max_receive_queue=64 * 1024)
        try:
            async with asyncio.timeout(T):
                for i in range(limits.max_inflight_requests):
                    await conn.send(Request(CID, i % len(CHUNKS)))
                event = await recorder.wait_for(disconnected(me.peer_id))
            assert isinstance(event, PeerDisconnected) and event.reason == STOPPED_READING
        finally:
            await conn.aclose()
    finally:
        await server.aclose()


async def test_a_reader_that_catches_up_in_time_is_kept() -> None:
    clock = FakeClock()
    limits = ServerLimits(send_timeout=30.0, max_send_buffer=64 * 1024)
    async with asyncio.timeout(T), serving(limits, clock) as (server, (host, port), recorder):
        me = Identity.generate()
        conn = await connect(host, port, me, expected_peer=server.identity.peer_id,
                             timeout=T, max_receive_queue=64 * 1024)
        try:
            for i in range(limits.max_inflight_requests):
                await conn.send(Request(CID, i % len(CHUNKS)))
            await recorder.wait_until(lambda: recorder.write_paused(me.peer_id))
            clock.advance(limits.send_timeout - 0.5)
            assert server.handle_timers() == 0
            # It reads everything before the deadline: the stall is over.
            for i in range(limits.max_inflight_requests):
                assert await conn.receive() == Data(CID, i % len(CHUNKS), CHUNKS[i % len(CHUNKS)])
            await recorder.wait_until(lambda: not recorder.write_paused(me.peer_id))
            clock.advance(limits.send_timeout)
            assert server.handle_timers() == 0
            await conn.send(Ping(3))
            assert await conn.receive() == Pong(3)
            assert recorder.disconnects() == []
        finally:
            await conn.aclose()


# -- receive-queue accounting --------------------------------------------------------------------


class StubTransport(asyncio.Transport):
    """Records what the protocol asks of its transport; nothing is sent anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def open_pair() -> tuple[Session, Session]:
    """Two sessions that finished the handshake and the Hello exchange, joined in memory."""
    ids = Identity.generate(), Identity.generate()
    a = Session(ids[0], Hello(PROTOCOL_VERSION, ids[0].peer_id, (), "a"), initiator=True)
    b = Session(ids[1], Hello(PROTOCOL_VERSION, ids[1].peer_id, (), "b"), initiator=False)
    for _ in range(4):
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())
    assert a.state is State.OPEN and b.state is State.OPEN
    assert a.remote_hello is not None and b.remote_hello is not None
    return a, b


def feed(proto: WireProtocol, data: bytes | bytearray) -> None:
    """Deliver ``data`` the way asyncio does: into the protocol's own buffer."""
    view = memoryview(data)
    while len(view):
        buf = proto.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]


async def test_queued_bitfield_counts_at_its_size_and_pauses_reading() -> None:
    a, b = open_pair()
    transport = StubTransport()
    proto = WireProtocol(b, max_receive_queue=8 * 1024)
    proto.connection_made(transport)
    count = MAX_CHUNK_COUNT
    bits = b"\xff" * (count // 8)  # 2 MiB of bits, the largest Bitfield there is
    a.send(Bitfield(CID, count, bits))
    feed(proto, a.data_to_send())
    assert list(proto.queue) == [Bitfield(CID, count, bits)]
    assert proto.queued_bytes >= len(bits)
    assert transport.paused and proto.reading_paused  # one Bitfield is over the 8 KiB bound
    assert await proto.next_message() == Bitfield(CID, count, bits)
    assert proto.queued_bytes == 0
    assert not transport.paused and not proto.reading_paused
