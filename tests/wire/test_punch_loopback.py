"""Hole punching between two real nodes on 127.0.0.1: the listen port shared by the listener
and every dial, the punch's asyncio shell over an in-memory relayed session, and the Noise
session it ends with. (The NAT cases are in test_punch_netns.py.)"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from p2p.errors import PortInUse
from p2p.identity import Identity
from p2p.testing import MemorySource
from p2p.wire.messages import HolePunchConnect, HolePunchSync, Ping, Pong
from p2p.wire.punch import PunchChannel, PunchConfig, PunchFailed, Role, punch
from p2p.wire.server import Server
from p2p.wire.transport import Connection, bound_socket, connect

LOOP = "127.0.0.1"
QUICK = PunchConfig(rounds=1, dial_window=1.0, signal_timeout=2.0, handshake_timeout=1.0)


@dataclass
class Node:
    identity: Identity
    server: Server
    port: int


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[Node, Node]]:
    made = []
    for _ in range(2):
        identity = Identity.generate()
        server = Server(identity, MemorySource())
        _host, port = await server.start(LOOP, 0)
        made.append(Node(identity, server, port))
    try:
        yield made[0], made[1]
    finally:
        for node in made:
            await node.server.aclose()


def punch_side(node: Node, peer: Node, role: Role, signal: PunchChannel, *,
               listener: bool = True, public: bool = False, config: PunchConfig = QUICK,
               expect: Identity | None = None) -> asyncio.Task[Connection]:
    return asyncio.create_task(punch(
        role, listen_port=node.port, identity=node.identity,
        expected_peer=(expect or peer.identity).peer_id, signal=signal,
        own_addrs=[(LOOP, node.port)], peer_observed=[(LOOP, peer.port)], public=public,
        listener=node.server if listener else None, config=config, source=LOOP))


async def both(a: asyncio.Task[Connection], b: asyncio.Task[Connection]) -> tuple[Connection, Connection]:
    async with asyncio.timeout(15):
        conn_a, conn_b = await asyncio.gather(a, b)
    return conn_a, conn_b


async def check_session(conn_a: Connection, conn_b: Connection, a: Node, b: Node) -> None:
    assert conn_a.punched and conn_b.punched
    assert conn_a.remote_peer == b.identity.peer_id
    assert conn_b.remote_peer == a.identity.peer_id
    # One TCP connection between the two listen ports, whichever SYN opened it.
    assert conn_a.local_address == (LOOP, a.port) == conn_b.remote_address
    assert conn_b.local_address == (LOOP, b.port) == conn_a.remote_address
    async with asyncio.timeout(5):
        await conn_a.send(Ping(7))
        assert await conn_b.receive() == Ping(7)
        await conn_b.send(Pong(7))
        assert await conn_a.receive() == Pong(7)
    await conn_a.aclose()
    await conn_b.aclose()


async def test_two_nodes_punch_a_noise_session_between_their_listen_ports(
        nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    to_b, to_a = PunchChannel.pair()
    conn_a, conn_b = await both(punch_side(a, b, Role.DIALLER, to_b),
                                punch_side(b, a, Role.TARGET, to_a))
    await check_session(conn_a, conn_b, a, b)


@pytest.mark.parametrize("public", ["dialler", "target"])
async def test_reversal_only_the_natted_side_dials_the_public_one(
        nodes: tuple[Node, Node], public: str) -> None:
    a, b = nodes
    to_b, to_a = PunchChannel.pair()
    # The NATed side has no listener at all here: only its own dial can open the connection.
    conn_a, conn_b = await both(
        punch_side(a, b, Role.DIALLER, to_b, public=public == "dialler",
                   listener=public == "dialler"),
        punch_side(b, a, Role.TARGET, to_a, public=public == "target",
                   listener=public == "target"))
    await check_session(conn_a, conn_b, a, b)


async def test_a_wrong_peer_at_the_address_is_not_taken(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    to_b, to_a = PunchChannel.pair()
    impostor = Identity.generate()
    task_a = punch_side(a, b, Role.DIALLER, to_b, expect=impostor)
    task_b = punch_side(b, a, Role.TARGET, to_a)
    async with asyncio.timeout(15):
        results = await asyncio.gather(task_a, task_b, return_exceptions=True)
    for result in results:
        assert isinstance(result, PunchFailed), result
    failed_a = results[0]
    assert isinstance(failed_a, PunchFailed)
    assert "no direct connection after 1 round of 1 s" in failed_a.reason
    assert "then expected peer" in failed_a.reason, failed_a.reason


async def test_the_relayed_session_ending_ends_the_punch(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    to_b, _to_a = PunchChannel.pair()
    to_b.close("the relay went away")
    task = punch_side(a, b, Role.DIALLER, to_b)
    async with asyncio.timeout(5):
        with pytest.raises(PunchFailed, match="the relayed session ended: the relay went away"):
            await task


async def test_a_silent_peer_fails_the_punch_after_the_signal_timeout(
        nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    to_b, _to_a = PunchChannel.pair()
    config = PunchConfig(signal_timeout=0.2)
    async with asyncio.timeout(5):
        with pytest.raises(PunchFailed, match=r"sent no Connect within 0.2 s"):
            await punch_side(a, b, Role.DIALLER, to_b, config=config)


async def test_cancelling_a_punch_closes_what_it_opened(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    to_a, to_b = PunchChannel.pair()
    task = punch_side(b, a, Role.TARGET, to_a)
    async with asyncio.timeout(5):
        await to_b.receive()  # its Connect: it is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing of the punch holds the port any more: a plain connection from it still works.
    async with asyncio.timeout(5):
        conn = await connect(LOOP, a.port, b.identity, expected_peer=a.identity.peer_id,
                             local_port=b.port, source=LOOP)
    assert conn.local_address == (LOOP, b.port)
    await conn.aclose()


# -- the listen port ---------------------------------------------------------------------------


async def test_the_listener_shares_its_port_with_outbound_sockets_and_no_other_listener(
        nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    listening = a.server._servers[0].sockets[0]
    assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    if hasattr(socket, "SO_REUSEPORT"):
        assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    sock = bound_socket(LOOP, a.port, source=LOOP)
    assert sock.getsockname() == (LOOP, a.port)
    sock.close()
    other = Server(Identity.generate(), MemorySource())
    with pytest.raises(PortInUse):
        await other.start(LOOP, a.port)
    await other.aclose()
    # A connection made from the listen port leaves from it.
    async with asyncio.timeout(5):
        conn = await connect(LOOP, b.port, a.identity, expected_peer=b.identity.peer_id,
                             local_port=a.port, source=LOOP)
    assert conn.local_address == (LOOP, a.port)
    await conn.aclose()


async def test_the_server_hands_a_peers_punch_messages_to_its_punch() -> None:
    identity, client = Identity.generate(), Identity.generate()
    got: asyncio.Queue[tuple[Connection, HolePunchConnect | HolePunchSync]] = asyncio.Queue()
    server = Server(identity, MemorySource(),
                    on_punch=lambda conn, msg: got.put_nowait((conn, msg)))
    _host, port = await server.start(LOOP, 0)
    try:
        async with asyncio.timeout(5):
            conn = await connect(LOOP, port, client, expected_peer=identity.peer_id)
            await conn.send(HolePunchConnect(1, ((LOOP, 1),), False))
            await conn.send(HolePunchSync(1))
            served, first = await got.get()
            assert served.remote_peer == client.peer_id
            assert first == HolePunchConnect(1, ((LOOP, 1),), False)
            assert (await got.get())[1] == HolePunchSync(1)
            await conn.send(Ping(3))  # and the session goes on
            assert await conn.receive() == Pong(3)
        await conn.aclose()
    finally:
        await server.aclose()
