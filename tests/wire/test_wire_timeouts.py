"""The chunk server's limits over real sockets on 127.0.0.1: handshake and idle timeouts,
connection caps and the in-flight request cap."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager

import blake3
import pytest

from p2p.identity import Identity
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
from p2p.wire.session import Session
from p2p.wire.transport import Connection, connect

from .recorder import Recorder
from .recorder import serving as shared_serving

CID = blake3.blake3(b"timeouts").digest()
CHUNKS: list[bytes | None] = [bytes([i]) * (100 + i) for i in range(16)]
T = 30  # generous deadline for any single awaited event on a loaded machine


def serving(limits: ServerLimits) -> AbstractAsyncContextManager[tuple[Server, tuple[str, int], Recorder]]:
    return shared_serving(limits, CID, CHUNKS)


async def fetch_one(conn: Connection, index: int) -> None:
    """Ask for one chunk and check it arrives intact."""
    await conn.send(Request(CID, index))
    assert await conn.receive() == Data(CID, index, CHUNKS[index])


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
async def test_stalled_handshake_is_dropped_while_honest_peer_is_served(sent: str) -> None:
    timeout = 0.3
    async with serving(ServerLimits(handshake_timeout=timeout)) as (server, (host, port), recorder):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            msg1 = first_handshake_message()
            if sent == "half of message 1":
                writer.write(msg1[:len(msg1) // 2])
            elif sent == "message 1 only":
                writer.write(msg1)
            await writer.drain()

            # Meanwhile an honest peer completes its handshake and is served.
            honest = await connect(host, port, Identity.generate(),
                                   expected_peer=server.identity.peer_id, timeout=T)
            try:
                async with asyncio.timeout(T):
                    await fetch_one(honest, 3)

                async with asyncio.timeout(5):
                    await read_until_closed(reader)
                elapsed = time.monotonic() - started
                assert elapsed >= timeout * 0.9, f"dropped after {elapsed:.3f} s, before the timeout"

                async with asyncio.timeout(T):
                    dropped = await recorder.wait_for(
                        lambda e: isinstance(e, PeerDisconnected) and e.peer is None)
                assert isinstance(dropped, PeerDisconnected) and dropped.reason == "timed out"

                # The honest peer outlives the stalled one.
                async with asyncio.timeout(T):
                    await honest.send(Ping(7))
                    assert await honest.receive() == Pong(7)
                    await fetch_one(honest, 4)
                assert len(server.connections()) == 1
            finally:
                await honest.aclose()
        finally:
            writer.close()
            await writer.wait_closed()


# -- idle timeout --------------------------------------------------------------------------------


async def test_silent_peer_is_dropped_after_idle_timeout() -> None:
    idle = 0.3
    async with serving(ServerLimits(idle_timeout=idle)) as (server, (host, port), recorder):
        conn = await connect(host, port, Identity.generate(), timeout=T)
        try:
            async with asyncio.timeout(T):
                await fetch_one(conn, 0)
            last_sent = time.monotonic()
            async with asyncio.timeout(5):
                with pytest.raises(ConnectionLost):
                    await conn.receive()
            silent_for = time.monotonic() - last_sent
            assert silent_for >= idle * 0.9, f"dropped after {silent_for:.3f} s of silence"
            async with asyncio.timeout(T):
                await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected))
            assert [e.reason for e in recorder.disconnects()] == ["timed out"]
            assert server.connections() == []
        finally:
            await conn.aclose()


async def test_peer_that_keeps_pinging_outlives_idle_timeout() -> None:
    idle = 0.5
    async with serving(ServerLimits(idle_timeout=idle)) as (server, (host, port), recorder):
        conn = await connect(host, port, Identity.generate(), timeout=T)
        try:
            started = time.monotonic()
            nonce = 0
            async with asyncio.timeout(T):
                while time.monotonic() - started < 3 * idle:
                    nonce += 1
                    await conn.send(Ping(nonce))
                    assert await conn.receive() == Pong(nonce)
                    # Pacing between pings (well under the idle timeout), not a wait for an event.
                    await asyncio.sleep(idle / 10)
                await fetch_one(conn, 5)
            assert nonce >= 10
            assert recorder.disconnects() == []
            assert len(server.connections()) == 1
        finally:
            await conn.aclose()


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
    limits = ServerLimits(max_connections=1, max_connections_per_ip=64, handshake_timeout=T)
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


# -- in-flight cap -------------------------------------------------------------------------------


async def test_requests_beyond_inflight_cap_are_rejected() -> None:
    cap, extra = 4, 5
    async with serving(ServerLimits(max_inflight_requests=cap)) as (server, (host, port), recorder):
        conn = await connect(host, port, Identity.generate(), timeout=T)
        try:
            # Every request leaves in this one turn of the event loop, before the server
            # reads any of them or sends a single chunk back.
            for index in range(cap + extra):
                conn._p.write_message(Request(CID, index))
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
