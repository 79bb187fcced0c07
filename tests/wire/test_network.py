"""Real peers over 127.0.0.1 and ::1, port 0: transfer, limits, backpressure, garbage, and a
dual-stack server.

The servers run on a :class:`~p2p.testing.FakeClock`, so none of their timeouts can fire while
a slow machine runs these tests."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
import pytest

from p2p.errors import LocalProtocolError, NetworkError
from p2p.identity import Identity
from p2p.testing import FakeClock, FileSource, MemorySource
from p2p.wire.errors import ClosedByUs, ConnectionLost, WrongPeer
from p2p.wire.messages import (
    MAX_FRAME,
    Bitfield,
    Data,
    GetBitfield,
    GetManifest,
    Have,
    Manifest,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
)
from p2p.wire.server import (
    Backpressure,
    PeerConnected,
    PeerDisconnected,
    Server,
    ServerEvent,
    ServerLimits,
    Uploaded,
)
from p2p.wire.transport import WireProtocol, connect

from .recorder import Recorder
from .test_session import opened

CID = blake3.blake3(b"content").digest()
T = 30  # generous deadline for any single awaited event on a loaded machine


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, tuple[str, int], MemorySource, list[ServerEvent]]]:
    source = MemorySource({CID: [b"a" * 1000, None, b"c" * 10]}, {CID: b"manifest bytes"})
    events: list[ServerEvent] = []
    server = Server(Identity.generate(), source, ServerLimits(max_connections_per_ip=64),
                    on_event=events.append, clock=FakeClock())
    addr = await server.start("127.0.0.1", 0)
    yield server, addr, source, events
    await server.aclose()
    await server.aclose()  # idempotent


async def test_conversation(served: tuple[Server, tuple[str, int], MemorySource, list[ServerEvent]]) -> None:
    server, (host, port), _, events = served
    conn = await connect(host, port, Identity.generate(), expected_peer=server.identity.peer_id,
                         listen_addrs=[("192.0.2.7", 4001)])
    try:
        async with asyncio.timeout(T):
            await conn.send(GetManifest(CID))
            assert await conn.receive() == Manifest(CID, b"manifest bytes")
            await conn.send(GetManifest(bytes(32)))
            assert await conn.receive() == Manifest(bytes(32), None)
            await conn.send(GetBitfield(CID))
            assert await conn.receive() == Bitfield(CID, 3, b"\xa0")
            await conn.send(Request(CID, 0))
            await conn.send(Request(CID, 1))
            await conn.send(Request(CID, 3))  # past the last of 3 chunks
            await conn.send(Request(bytes(32), 0))  # content the server does not know
            await conn.send(Ping(42))
            got = [await conn.receive() for _ in range(5)]
            assert Data(CID, 0, b"a" * 1000) in got
            assert Reject(CID, 1, RejectReason.NOT_HELD) in got
            assert Reject(CID, 3, RejectReason.BAD_INDEX) in got
            assert Reject(bytes(32), 0, RejectReason.NOT_HELD) in got
            assert Pong(42) in got
            server.announce_have(CID, 1)
            assert await conn.receive() == Have(CID, 1)
            (info,) = server.connections()
            assert info.bytes_sent > 1000 and info.bytes_received > 0
            assert conn.remote_hello.agent == "p2p/0.1"
    finally:
        await conn.aclose("done")
        await conn.aclose()
    assert any(isinstance(e, Uploaded) and e.index == 0 and e.nbytes == 1000 for e in events)


async def test_first_messages_are_answered_without_another_send(
        served: tuple[Server, tuple[str, int], MemorySource, list[ServerEvent]]) -> None:
    """``connect(first=...)`` sends them with the handshake: their answers come with (or
    right after) the server's Hello, and nothing more is written once connect returns."""
    server, (host, port), _, _ = served
    conn = await connect(host, port, Identity.generate(), expected_peer=server.identity.peer_id,
                         first=(GetManifest(CID), GetBitfield(CID), Request(CID, 0), Request(CID, 7)))
    try:
        sent = conn.bytes_sent
        async with asyncio.timeout(T):
            got = [await conn.receive() for _ in range(4)]
        assert got == [Manifest(CID, b"manifest bytes"), Bitfield(CID, 3, b"\xa0"),
                       Data(CID, 0, b"a" * 1000), Reject(CID, 7, RejectReason.BAD_INDEX)]
        assert conn.bytes_sent == sent
    finally:
        await conn.aclose()


async def test_wrong_expected_peer(served: tuple[Server, tuple[str, int], MemorySource, list[ServerEvent]]) -> None:
    _, (host, port), _, _ = served
    with pytest.raises(WrongPeer):
        await connect(host, port, Identity.generate(), expected_peer=Identity.generate().peer_id)


async def test_garbage_peer_is_dropped_others_go_on(
        served: tuple[Server, tuple[str, int], MemorySource, list[ServerEvent]]) -> None:
    _, (host, port), _, events = served
    good = await connect(host, port, Identity.generate())
    bad = await connect(host, port, Identity.generate())
    try:
        async with asyncio.timeout(T):
            # Raw garbage after the handshake: a record that fails authentication.
            transport = bad._p.transport
            assert transport is not None
            transport.write(b"\x00\x20" + os.urandom(32))
            with pytest.raises(ConnectionLost):
                while True:
                    await bad.receive()
            while not any(isinstance(e, PeerDisconnected) and "protocol" in e.reason for e in events):
                await good.send(Ping(1))
                assert await good.receive() == Pong(1)
            await good.send(Request(CID, 2))
            assert await good.receive() == Data(CID, 2, b"c" * 10)
            # Garbage before any handshake is dropped too.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"\xff\xff" + b"\x00" * 70000)
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            await good.send(Ping(2))
            assert await good.receive() == Pong(2)
    finally:
        await good.aclose()
        await bad.aclose()


async def test_per_ip_limit() -> None:
    server = Server(Identity.generate(), MemorySource(), ServerLimits(max_connections_per_ip=1),
                    clock=FakeClock())
    host, port = await server.start("127.0.0.1", 0)
    first = await connect(host, port, Identity.generate())
    try:
        with pytest.raises(ConnectionLost):
            await connect(host, port, Identity.generate(), timeout=T)
    finally:
        await first.aclose()
        await server.aclose()


async def test_transfer_64_mib(tmp_path: Path) -> None:
    chunk_size, size = 1 << 20, 64 << 20
    path = tmp_path / "file.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    hashes = [blake3.blake3(data[i:i + chunk_size]).digest() for i in range(0, size, chunk_size)]
    del data
    source = FileSource(path, CID, chunk_size)
    server = Server(Identity.generate(), source, clock=FakeClock())
    host, port = await server.start("127.0.0.1", 0)
    conn = await connect(host, port, Identity.generate(), expected_peer=server.identity.peer_id)
    out = bytearray(size)
    try:
        async with asyncio.timeout(60):
            await conn.send(GetBitfield(CID))
            bf = await conn.receive()
            assert isinstance(bf, Bitfield) and bf.chunk_count == 64
            next_index, received, window = 0, 0, 8
            while received < 64:
                while next_index < 64 and next_index - received < window:
                    await conn.send(Request(CID, next_index))
                    next_index += 1
                msg = await conn.receive()
                assert isinstance(msg, Data)
                assert blake3.blake3(msg.payload).digest() == hashes[msg.index]
                out[msg.index * chunk_size:(msg.index + 1) * chunk_size] = msg.payload
                received += 1
    finally:
        await conn.aclose()
        await server.aclose()
        source.close()
    assert bytes(out) == path.read_bytes()


async def test_reader_that_never_reads_does_not_grow_server_memory() -> None:
    chunk = os.urandom(1 << 20)
    limits = ServerLimits(max_send_buffer=1 << 20, max_receive_queue=64 << 10)
    paused = asyncio.Event()

    def on_event(event: ServerEvent) -> None:
        if isinstance(event, Backpressure) and event.paused:
            paused.set()

    server = Server(Identity.generate(), MemorySource({CID: [chunk]}), limits, on_event=on_event,
                    clock=FakeClock())
    host, port = await server.start("127.0.0.1", 0)
    conn = await connect(host, port, Identity.generate(), max_receive_queue=1 << 20)
    sender_blocked = asyncio.Event()

    async def flood() -> None:
        for _ in range(20000):
            if not conn.send_nowait(Request(CID, 0)):  # our write side is paused
                sender_blocked.set()
                await conn.send(Request(CID, 0))

    # The client stops reading: nothing takes its messages off the socket.
    transport = conn._p.transport
    assert transport is not None
    transport.pause_reading()
    loop = asyncio.get_running_loop()
    task = loop.create_task(flood())
    blocked = loop.create_task(sender_blocked.wait())
    try:
        async with asyncio.timeout(T):
            await paused.wait()
            # Either every request went out, or the client itself is now blocked
            # because the server stopped reading: in both cases the server is stable.
            await asyncio.wait([task, blocked], return_when=asyncio.FIRST_COMPLETED)
        (info,) = server.connections()
        bound = limits.max_send_buffer + 2 * MAX_FRAME + limits.max_receive_queue + limits.receive_buffer
        assert info.write_buffer + info.receive_buffered <= bound
        assert info.pending_requests <= limits.max_inflight_requests
    finally:
        task.cancel()
        blocked.cancel()
        await asyncio.gather(task, blocked, return_exceptions=True)
        await conn.aclose()
        await server.aclose()


# -- both address families -----------------------------------------------------------------------


class PeernameTransport(asyncio.Transport):
    """Just enough of a transport to hand a protocol the peer address a socket would."""

    def __init__(self, peername: tuple[object, ...]) -> None:
        super().__init__()
        self.peername = peername
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peername if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


@pytest.mark.parametrize(("peername", "address"), [
    (("::ffff:192.0.2.7", 4001, 0, 0), ("192.0.2.7", 4001)),
    (("192.0.2.7", 4001), ("192.0.2.7", 4001)),
    (("2001:db8:0:0::1", 4001, 0, 0), ("2001:db8::1", 4001)),
])
async def test_peer_address_off_the_socket_is_normalised(
        peername: tuple[object, ...], address: tuple[str, int]) -> None:
    # What a dual-stack (not IPv6-only) socket reports for an IPv4 peer is that IPv4 peer.
    seen: list[tuple[str, int]] = []

    def refuse(proto: WireProtocol) -> None:
        seen.append(proto.address)
        proto.abort(ClosedByUs("refused by the test"))

    proto = WireProtocol(on_made=refuse)
    transport = PeernameTransport(peername)
    proto.connection_made(transport)
    assert seen == [address] and proto.address == address
    assert transport.closing
    with pytest.raises(ClosedByUs):
        await proto.ready


async def test_an_accepted_connection_nobody_gave_a_session_is_aborted() -> None:
    proto = WireProtocol(on_made=lambda _proto: None)
    transport = PeernameTransport(("127.0.0.1", 1))
    proto.connection_made(transport)
    assert transport.closing
    with pytest.raises(LocalProtocolError):
        await proto.ready


@pytest.mark.parametrize("hosts", [("127.0.0.1", "::1"), ("0.0.0.0", "::")],
                         ids=["loopbacks", "wildcards"])
async def test_dual_stack_server_serves_both_families_on_one_port(hosts: tuple[str, str]) -> None:
    recorder = Recorder()
    source = MemorySource({CID: [b"a" * 1000, b"b" * 10]})
    server = Server(Identity.generate(), source, on_event=recorder, clock=FakeClock())
    port = await server.start(hosts, 0)
    try:
        assert isinstance(port, int) and port > 0
        assert server.addresses == tuple((host, port) for host in hosts)
        v4_id, v6_id = Identity.generate(), Identity.generate()
        v4 = await connect("127.0.0.1", port, v4_id, expected_peer=server.identity.peer_id,
                           timeout=T)
        v6 = await connect("::1", port, v6_id, expected_peer=server.identity.peer_id, timeout=T)
        try:
            assert v4.remote_address == ("127.0.0.1", port)
            assert v6.remote_address == ("::1", port)
            async with asyncio.timeout(T):
                for conn in (v4, v6):
                    await conn.send(Request(CID, 0))
                    assert await conn.receive() == Data(CID, 0, b"a" * 1000)
                    await conn.send(GetBitfield(CID))
                    assert await conn.receive() == Bitfield(CID, 2, b"\xc0")
            hosts_seen = {c.peer: c.address[0] for c in server.connections()}
            assert hosts_seen == {v4_id.peer_id: "127.0.0.1", v6_id.peer_id: "::1"}
            connected = {e.peer: e.address[0] for e in recorder.events
                         if isinstance(e, PeerConnected)}
            assert connected == hosts_seen
        finally:
            await v4.aclose()
            await v6.aclose()
    finally:
        await server.aclose()
    assert server.addresses == ()
    # Closed means closed: both families refuse connections now.
    for host in ("127.0.0.1", "::1"):
        with pytest.raises(NetworkError):
            await connect(host, port, Identity.generate(), timeout=T)


async def test_accepted_connections_of_both_families_send_without_nagle_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Small replies (Pong, Reject, Bitfield) must leave at once, not wait for the ACK of the
    # previous segment: asyncio turns Nagle's algorithm off only on IPPROTO_TCP sockets.
    nodelay: dict[str, int] = {}
    made = WireProtocol.connection_made

    def record(proto: WireProtocol, transport: asyncio.BaseTransport) -> None:
        made(proto, transport)
        sock = transport.get_extra_info("socket")
        if proto.session.initiator is False:
            nodelay[proto.address[0]] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    monkeypatch.setattr(WireProtocol, "connection_made", record)
    server = Server(Identity.generate(), MemorySource(), clock=FakeClock())
    port = await server.start(("127.0.0.1", "::1"), 0)
    try:
        for host in ("127.0.0.1", "::1"):
            conn = await connect(host, port, Identity.generate(), timeout=T)
            await conn.aclose()
        assert set(nodelay) == {"127.0.0.1", "::1"}
        assert all(nodelay.values()), nodelay
    finally:
        await server.aclose()


async def test_single_host_form_still_returns_the_bound_address() -> None:
    server = Server(Identity.generate(), MemorySource(), clock=FakeClock())
    try:
        host, port = await server.start("::1", 0)
        assert host == "::1" and port > 0
        conn = await connect("::1", port, Identity.generate(), timeout=T)
        try:
            async with asyncio.timeout(T):
                await conn.send(Ping(5))
                assert await conn.receive() == Pong(5)
            (info,) = server.connections()
            assert info.address[0] == "::1"
        finally:
            await conn.aclose()
    finally:
        await server.aclose()


async def test_a_host_that_cannot_be_bound_leaves_nothing_listening() -> None:
    # The port is taken on ::1 (by this test), free on 127.0.0.1.
    taken = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(Identity.generate(), MemorySource(), clock=FakeClock())
        with pytest.raises(NetworkError, match=r"\[::1\]"):
            await server.start(("127.0.0.1", "::1"), port)
        assert server.addresses == ()
        # Nothing was left listening on the IPv4 address: we can bind it ourselves.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        finally:
            probe.close()
        await server.aclose()
    finally:
        taken.close()


async def test_aclose_ends_every_connection_and_task_it_owns() -> None:
    recorder = Recorder()
    source = MemorySource({CID: [os.urandom(1 << 20)]})
    limits = ServerLimits(max_send_buffer=64 << 10)
    server = Server(Identity.generate(), source, limits, on_event=recorder, clock=FakeClock())
    host, port = await server.start("127.0.0.1", 0)
    served = await connect(host, port, Identity.generate(), timeout=T)
    staller_id = Identity.generate()
    staller = await connect(host, port, staller_id, timeout=T, max_receive_queue=64 << 10)
    reader, writer = await asyncio.open_connection(host, port)  # never handshakes
    try:
        async with asyncio.timeout(T):
            await served.send(Ping(1))
            assert await served.receive() == Pong(1)
            for _ in range(limits.max_inflight_requests):
                await staller.send(Request(CID, 0))
            await recorder.wait_until(lambda: recorder.write_paused(staller_id.peer_id))

            def owned() -> list[asyncio.Task[object]]:
                return [t for t in asyncio.all_tasks() if t.get_name().startswith("chunk server:")]

            assert len(owned()) == 3
            await server.aclose()
            assert owned() == []
            assert server.connections() == []
            assert sorted(e.reason for e in recorder.disconnects()) == ["server closed"] * 3
            with pytest.raises(ConnectionLost):
                await served.receive()
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                pass  # closed either way
            await server.aclose()  # idempotent
    finally:
        writer.close()
        await writer.wait_closed()
        await served.aclose()
        await staller.aclose()


class RecordingTransport(PeernameTransport):
    """Records each write (as bytes) and signals it."""

    def __init__(self) -> None:
        super().__init__(("192.0.2.7", 4001))
        self.writes: list[bytes] = []
        self.written = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.written.set()

    def get_write_buffer_size(self) -> int:
        return 0


async def test_small_messages_of_one_loop_turn_go_out_in_one_write_in_order() -> None:
    a, b, _, _ = opened()  # two sessions joined in memory, handshake done
    proto = WireProtocol(a)
    transport = RecordingTransport()
    proto.connection_made(transport)
    requests = [Request(CID, i) for i in range(10)]
    for msg in requests:
        proto.write_message(msg)
    assert transport.writes == []  # gathered until the end of this loop turn
    async with asyncio.timeout(T):
        await transport.written.wait()
    assert len(transport.writes) == 1
    assert b.receive_data(transport.writes[0]) == requests
    # A large message flushes what was gathered first, then goes at once: order is kept.
    transport.writes.clear()
    proto.write_message(Ping(1))
    proto.write_message(Data(CID, 0, b"x" * 100_000))
    got = b.receive_data(b"".join(transport.writes))
    assert [type(m) for m in got] == [Ping, Data]
