"""The chunk server's limits over real sockets on 127.0.0.1: handshake and idle timeouts,
connection caps and the in-flight request cap.

Every server here runs on a :class:`~p2p.testing.FakeClock`: a timeout fires when the test
moves the clock and calls ``server.handle_timers()``, never because real time passed, so no
test waits for a deadline or measures one. (The rules themselves are tested with hand-set
times in ``test_serving.py``; here the shell's wiring is.)
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

import blake3
import pytest

from p2p.identity import Identity
from p2p.testing import FakeClock, MemorySource
from p2p.wire.errors import ConnectionLost
from p2p.wire.messages import (
    PROTOCOL_VERSION,
    Data,
    Hello,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
)
from p2p.wire.server import PeerDisconnected, Server, ServerLimits
from p2p.wire.serving import TIMED_OUT
from p2p.wire.session import Session
from p2p.wire.transport import Connection, connect

from .recorder import Recorder
from .recorder import serving as shared_serving

CID = blake3.blake3(b"timeouts").digest()
CHUNKS: list[bytes | None] = [bytes([i]) * (100 + i) for i in range(16)]
T = 30  # generous deadline for any single awaited event on a loaded machine


def serving(limits: ServerLimits, clock: FakeClock | None = None,
            ) -> AbstractAsyncContextManager[tuple[Server, tuple[str, int], Recorder]]:
    return shared_serving(limits, CID, CHUNKS, clock=clock)


async def fetch_one(conn: Connection, index: int) -> None:
    """Ask for one chunk and check it arrives intact."""
    await conn.send(Request(CID, index))
    assert await conn.receive() == Data(CID, index, CHUNKS[index])


async def ping(conn: Connection, nonce: int) -> None:
    """One round trip: the server has handled everything sent before once the Pong is here."""
    await conn.send(Ping(nonce))
    assert await conn.receive() == Pong(nonce)


def first_handshake_message() -> bytes:
    """What an honest initiator writes first (Noise XX message 1, length-prefixed)."""
    identity = Identity.generate()
    session = Session(identity, Hello(PROTOCOL_VERSION, identity.peer_id, (), "raw"), initiator=True)
    data = session.data_to_send()
    assert len(data) > 2
    return data


async def read_until_closed(reader: asyncio.StreamReader) -> None:
    """Read until the server closes the socket (EOF or reset both count as closed)."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionResetError:
        pass


# -- handshake timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["nothing", "half of message 1", "message 1 only"])
async def test_stalled_handshake_is_dropped_at_its_deadline_while_honest_peer_is_served(
        sent: str) -> None:
    clock = FakeClock()
    limits = ServerLimits(handshake_timeout=10.0)
    async with serving(limits, clock) as (server, (host, port), recorder):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            msg1 = first_handshake_message()
            if sent == "half of message 1":
                writer.write(msg1[:len(msg1) // 2])
            elif sent == "message 1 only":
                writer.write(msg1)
            await writer.drain()

            # Meanwhile an honest peer completes its handshake and is served (the raw
            # socket was accepted before it, so its deadline is already running).
            honest = await connect(host, port, Identity.generate(),
                                   expected_peer=server.identity.peer_id, timeout=T)
            try:
                async with asyncio.timeout(T):
                    await fetch_one(honest, 3)

                clock.advance(9.5)
                assert server.handle_timers() == 0  # not yet due
                async with asyncio.timeout(T):
                    await ping(honest, 1)
                assert recorder.disconnects() == []

                clock.advance(0.5)
                assert server.handle_timers() == 1  # the stalled one, exactly at its deadline
                async with asyncio.timeout(T):
                    await read_until_closed(reader)
                    dropped = await recorder.wait_for(
                        lambda e: isinstance(e, PeerDisconnected) and e.peer is None)
                assert isinstance(dropped, PeerDisconnected) and dropped.reason == TIMED_OUT

                # The honest peer outlives the stalled one.
                async with asyncio.timeout(T):
                    await ping(honest, 7)
                    await fetch_one(honest, 4)
                assert len(server.connections()) == 1
                assert len(recorder.disconnects()) == 1
            finally:
                await honest.aclose()
        finally:
            writer.close()
            await writer.wait_closed()


async def test_the_servers_own_timer_drops_a_handshake_that_is_due() -> None:
    # A zero timeout is due the moment the socket is accepted: the connection's armed
    # timer, not handle_timers(), has to drop it (without any clock moving).
    limits = ServerLimits(handshake_timeout=0.0)
    async with serving(limits) as (_, (host, port), recorder):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            async with asyncio.timeout(T):
                await read_until_closed(reader)
                dropped = await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected))
            assert isinstance(dropped, PeerDisconnected) and dropped.reason == TIMED_OUT
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize("clock", [FakeClock(), None], ids=["fake clock", "loop clock"])
async def test_the_servers_own_timer_drops_a_peer_whose_idle_deadline_is_due(
        clock: FakeClock | None) -> None:
    # The idle deadline is armed once the Hello is in; at zero it is due at once. (The
    # handshake's deadline, armed before it, is an hour away: only a re-armed timer fires.)
    source = MemorySource({CID: list(CHUNKS)})
    recorder = Recorder()
    limits = ServerLimits(idle_timeout=0.0, handshake_timeout=3600.0)
    server = Server(Identity.generate(), source, limits, on_event=recorder, clock=clock)
    host, port = await server.start("127.0.0.1", 0)
    try:
        conn = await connect(host, port, Identity.generate(), timeout=T)
        try:
            async with asyncio.timeout(T):
                with pytest.raises(ConnectionLost) as lost:
                    await conn.receive()
                await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected))
            assert lost.value.reason == TIMED_OUT  # told so in a Goodbye
            assert [e.reason for e in recorder.disconnects()] == [TIMED_OUT]
        finally:
            await conn.aclose()
    finally:
        await server.aclose()


# -- idle timeout --------------------------------------------------------------------------------


async def test_every_message_moves_the_idle_deadline_and_a_silent_peer_is_dropped() -> None:
    clock = FakeClock()
    idle = 120.0
    async with serving(ServerLimits(idle_timeout=idle), clock) as (server, (host, port), recorder):
        conn = await connect(host, port, Identity.generate(), timeout=T)
        try:
            async with asyncio.timeout(T):
                await fetch_one(conn, 0)
                # A peer that pings just within the timeout stays, ten timeouts long.
                for nonce in range(10):
                    clock.advance(idle - 1)
                    assert server.handle_timers() == 0
                    await ping(conn, nonce)
                await fetch_one(conn, 5)
            assert len(server.connections()) == 1

            # Then it falls silent: dropped once a whole timeout has passed, not before.
            clock.advance(idle - 0.5)
            assert server.handle_timers() == 0
            assert len(server.connections()) == 1
            clock.advance(0.5)
            assert server.handle_timers() == 1
            assert server.connections() == []
            async with asyncio.timeout(T):
                with pytest.raises(ConnectionLost) as lost:
                    await conn.receive()
                await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected))
            assert lost.value.reason == TIMED_OUT  # the Goodbye says why
            assert [e.reason for e in recorder.disconnects()] == [TIMED_OUT]
        finally:
            await conn.aclose()


async def test_idle_peers_are_dropped_independently() -> None:
    clock = FakeClock()
    idle = 60.0
    async with serving(ServerLimits(idle_timeout=idle), clock) as (server, (host, port), recorder):
        quiet_id, chatty_id = Identity.generate(), Identity.generate()
        quiet = await connect(host, port, quiet_id, timeout=T)
        chatty = await connect(host, port, chatty_id, timeout=T)
        try:
            async with asyncio.timeout(T):
                await ping(quiet, 1)
                await ping(chatty, 1)
                clock.advance(idle / 2)
                await ping(chatty, 2)
            clock.advance(idle / 2)
            assert server.handle_timers() == 1
            async with asyncio.timeout(T):
                event = await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected))
                await ping(chatty, 3)
            assert isinstance(event, PeerDisconnected) and event.peer == quiet_id.peer_id
            assert [c.peer for c in server.connections()] == [chatty_id.peer_id]
        finally:
            await quiet.aclose()
            await chatty.aclose()


# -- connection caps -----------------------------------------------------------------------------


async def test_total_connection_cap_refuses_the_extra_one_and_frees_its_slot() -> None:
    limits = ServerLimits(max_connections=2, max_connections_per_ip=64)
    async with serving(limits) as (server, (host, port), recorder):
        first = await connect(host, port, Identity.generate(), timeout=T)
        second = await connect(host, port, Identity.generate(), timeout=T)
        try:
            with pytest.raises(ConnectionLost):
                await connect(host, port, Identity.generate(), timeout=T)
            # The first two still work.
            async with asyncio.timeout(T):
                await fetch_one(first, 1)
                await fetch_one(second, 2)
            assert len(server.connections()) == 2

            # Once one leaves, its slot is free again.
            await first.aclose()
            async with asyncio.timeout(T):
                await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected))
            third = await connect(host, port, Identity.generate(), timeout=T)
            try:
                async with asyncio.timeout(T):
                    await fetch_one(third, 6)
                    await fetch_one(second, 7)
            finally:
                await third.aclose()
        finally:
            await first.aclose()
            await second.aclose()


async def test_handshaking_connection_counts_against_total_cap() -> None:
    limits = ServerLimits(max_connections=1, max_connections_per_ip=64)
    async with serving(limits) as (_, (host, port), recorder):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            # The raw socket holds the only slot while it (never) handshakes.
            with pytest.raises(ConnectionLost):
                await connect(host, port, Identity.generate(), timeout=T)
        finally:
            writer.close()
            await writer.wait_closed()
        async with asyncio.timeout(T):
            await read_until_closed(reader)
            await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected) and e.peer is None)
        conn = await connect(host, port, Identity.generate(), timeout=T)
        try:
            async with asyncio.timeout(T):
                await fetch_one(conn, 8)
        finally:
            await conn.aclose()


async def test_a_refused_connection_gets_no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    # The limit check comes before the X25519 key and the receive buffer are made.
    import p2p.wire.server as server_module

    made: list[Session] = []

    def counting_session(*args: object, **kwargs: object) -> Session:
        session = Session(*args, **kwargs)  # type: ignore[arg-type]
        made.append(session)
        return session

    monkeypatch.setattr(server_module, "Session", counting_session)
    limits = ServerLimits(max_connections_per_ip=1)
    async with serving(limits) as (_, (host, port), _recorder):
        first = await connect(host, port, Identity.generate(), timeout=T)
        try:
            assert len(made) == 1
            for _ in range(3):
                with pytest.raises(ConnectionLost):
                    await connect(host, port, Identity.generate(), timeout=T)
            assert len(made) == 1
        finally:
            await first.aclose()


# -- in-flight cap -------------------------------------------------------------------------------


async def test_requests_beyond_inflight_cap_are_rejected() -> None:
    cap, extra = 4, 5
    async with serving(ServerLimits(max_inflight_requests=cap)) as (server, (host, port), recorder):
        conn = await connect(host, port, Identity.generate(), timeout=T)
        try:
            # Every request leaves in this one turn of the event loop, before the server
            # reads any of them or sends a single chunk back.
            for index in range(cap + extra):
                assert conn.send_nowait(Request(CID, index))
            async with asyncio.timeout(T):
                replies = [await conn.receive() for _ in range(cap + extra)]
            data = sorted(m.index for m in replies if isinstance(m, Data))
            rejects = sorted(m.index for m in replies if isinstance(m, Reject))
            assert data == list(range(cap))
            assert rejects == list(range(cap, cap + extra))
            assert all(m.reason == RejectReason.TOO_MANY_IN_FLIGHT
                       for m in replies if isinstance(m, Reject))
            for m in replies:
                if isinstance(m, Data):
                    assert m.payload == CHUNKS[m.index]

            # Once answered, the slots are free again: the connection is not penalised.
            async with asyncio.timeout(T):
                for index in range(cap + extra):
                    await fetch_one(conn, index)
            assert recorder.disconnects() == []
            (info,) = server.connections()
            assert info.pending_requests == 0
        finally:
            await conn.aclose()
