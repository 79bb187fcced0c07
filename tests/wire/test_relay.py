"""Relays on 127.0.0.1, port 0: reservations, circuits, the splice, every limit's refusal,
hostile relay clients, and that the relay sees ciphertext only.

Three real chunk servers: the relay (a :class:`Server` with a :class:`RelayService`), the
target (holding a reservation through :class:`HeldReservation`, serving chunks from
memory) and the dialler's side (plain :func:`open_circuit`). The relay's deadlines run on a
:class:`FakeClock`, moved by hand."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import blake3
import pytest

from p2p.errors import NetworkError
from p2p.identity import Identity, PeerId
from p2p.testing import FakeClock, MemorySource
from p2p.wire.circuits import (
    ACCEPT_TIMEOUT,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT,
    MIN_REFRESH,
    RESERVATION_IDLE_TIMEOUT,
    Circuit,
    KeepaliveRules,
    RelayLimits,
    RelayTable,
    host_of,
)
from p2p.wire.errors import ConnectionLost, WrongPeer
from p2p.wire.messages import (
    TOKEN_LEN,
    Accept,
    Bitfield,
    Connect,
    Data,
    GetBitfield,
    GetManifest,
    Manifest,
    Ping,
    Pong,
    RelayCode,
    RelayStatus,
    Request,
    Reserve,
    Stop,
    decode,
    encode,
)
from p2p.wire.relay import RelayService
from p2p.wire.reservation import HeldReservation, RelayRefused, open_circuit
from p2p.wire.server import PeerConnected, Server, ServerEvent, ServerLimits
from p2p.wire.transport import Connection, connect

T = 30  # generous deadline for any single awaited event on a loaded machine
CHUNK = os.urandom(256 * 1024)
CID = blake3.blake3(b"relayed content").digest()


@dataclass
class Lab:
    relay: Server
    service: RelayService
    relay_addr: tuple[str, int]
    clock: FakeClock
    target: Server
    target_id: Identity
    target_events: list[ServerEvent]
    spliced: bytearray = field(default_factory=bytearray)
    holders: list[tuple[HeldReservation, asyncio.Task[None]]] = field(default_factory=list)

    async def reserve(self, identity: Identity | None = None,
                      server: Server | None = None) -> HeldReservation:
        """A reservation held for ``identity`` (default: the target's), circuits served by
        ``server`` (default: the target's)."""
        identity = identity or self.target_id
        serving = server or self.target
        held = HeldReservation(identity, self.relay_addr,
                               lambda t, unread, relay, _src: serving.adopt(t, unread, relay))
        task = asyncio.get_running_loop().create_task(held.run())
        self.holders.append((held, task))
        async with asyncio.timeout(T):
            await held.reserved.wait()
        return held

    async def dial(self, identity: Identity | None = None, target: PeerId | None = None,
                   **kw: object) -> Connection:
        return await open_circuit(self.relay_addr, self.relay.identity.peer_id,
                                  target or self.target_id.peer_id,
                                  identity or Identity.generate(), **kw)  # type: ignore[arg-type]


async def make_lab(limits: RelayLimits | None = None) -> AsyncIterator[Lab]:
    clock = FakeClock()
    spliced = bytearray()
    service = RelayService(limits or RelayLimits(), clock=clock,
                           tap=lambda _c, data: spliced.extend(data))
    relay = Server(Identity.generate(), MemorySource({}, {}),
                   ServerLimits(max_connections_per_ip=256), clock=FakeClock(), relay=service)
    relay_addr = await relay.start("127.0.0.1", 0)
    service.start()
    target_id = Identity.generate()
    events: list[ServerEvent] = []
    source = MemorySource({CID: [CHUNK, CHUNK[::-1]]}, {CID: b"the manifest"})
    target = Server(target_id, source, ServerLimits(max_connections_per_ip=256),
                    clock=FakeClock(), on_event=events.append)
    await target.start("127.0.0.1", 0)
    lab = Lab(relay, service, relay_addr, clock, target, target_id, events, spliced)
    try:
        yield lab
    finally:
        for _held, task in lab.holders:
            task.cancel()
        for _held, task in lab.holders:
            with pytest.raises(asyncio.CancelledError):
                await task
        await service.aclose()
        await relay.aclose()
        await target.aclose()


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async for made in make_lab():
        yield made


async def fetch_chunks(conn: Connection) -> tuple[bytes, bytes]:
    async with asyncio.timeout(T):
        await conn.send(GetManifest(CID))
        assert await conn.receive() == Manifest(CID, b"the manifest")
        await conn.send(GetBitfield(CID))
        assert await conn.receive() == Bitfield(CID, 2, b"\xc0")
        await conn.send(Request(CID, 0))
        await conn.send(Request(CID, 1))
        first, second = await conn.receive(), await conn.receive()
    assert isinstance(first, Data) and isinstance(second, Data)
    return bytes(first.payload), bytes(second.payload)


# -- reservation and circuit -------------------------------------------------------------------


async def test_reservation_status_names_the_relay_and_where_it_sees_us(lab: Lab) -> None:
    held = await lab.reserve()
    assert held.status is not None and held.status.code == RelayCode.OK
    assert held.status.ttl == RelayLimits().reservation_ttl
    assert held.status.observed is not None and held.status.observed[0] == "127.0.0.1"
    assert held.relay_peer == lab.relay.identity.peer_id
    assert held.hint is not None and held.hint.address == lab.relay_addr
    assert lab.service.reserved() == [lab.target_id.peer_id]


async def test_a_circuit_carries_the_normal_session_and_the_relay_sees_only_ciphertext(lab: Lab) -> None:
    await lab.reserve()
    conn = await lab.dial()
    try:
        assert conn.remote_peer == lab.target_id.peer_id
        assert conn.via == lab.relay.identity.peer_id and conn.path == "relayed"
        assert await fetch_chunks(conn) == (CHUNK, CHUNK[::-1])
        (info,) = lab.target.connections()  # it served the chunks: connected
        assert info.via == lab.relay.identity.peer_id
    finally:
        await conn.aclose()
    connected = [e for e in lab.target_events if isinstance(e, PeerConnected)]
    assert connected and connected[0].via == lab.relay.identity.peer_id
    # Both chunks crossed the relay (with their records' overhead) ...
    assert len(lab.spliced) > 2 * len(CHUNK)
    # ... and no 64-byte window of them is visible to it.
    for data in (CHUNK, CHUNK[::-1], b"the manifest"):
        for start in range(0, len(data) - 64, 4096):
            assert data[start:start + 64] not in lab.spliced


async def test_circuits_leave_from_the_listen_port_and_the_relay_says_where_it_sees_them(
        lab: Lab) -> None:
    await lab.reserve()
    me = Identity.generate()
    listener = Server(me, MemorySource({}, {}))
    port = (await listener.start("127.0.0.1", 0))[1]
    try:
        first = await lab.dial(me, local_port=port)
        # A second circuit through the same relay cannot use that four-tuple again: it
        # leaves from an ephemeral port, whose mapping is no use to a punch.
        second = await lab.dial(me, local_port=port)
        try:
            assert first.observed == ("127.0.0.1", port)
            assert second.observed is None
            assert await fetch_chunks(first) == (CHUNK, CHUNK[::-1])
            assert await fetch_chunks(second) == (CHUNK, CHUNK[::-1])
        finally:
            await first.aclose()
            await second.aclose()
    finally:
        await listener.aclose()


async def test_the_dialler_checks_the_targets_peer_id_inside_the_circuit(lab: Lab) -> None:
    # A reservation held under one id whose circuits end at a server of another identity
    # (what a relay splicing to the wrong peer amounts to): the dialler's handshake inside
    # the circuit proves the far end's key, and it is not the one asked for.
    other = Identity.generate()
    await lab.reserve(other)
    with pytest.raises(WrongPeer):
        await open_circuit(lab.relay_addr, None, other.peer_id, Identity.generate())


async def test_no_reservation_is_refused_with_its_reason(lab: Lab) -> None:
    with pytest.raises(RelayRefused, match="NO_RESERVATION") as info:
        await lab.dial()
    assert info.value.code == RelayCode.NO_RESERVATION
    assert lab.service.stats()["refused"] == {"NO_RESERVATION": 1}


async def test_a_node_that_does_not_relay_refuses_permission(lab: Lab) -> None:
    with pytest.raises(RelayRefused, match="PERMISSION_DENIED"):
        await open_circuit(lab.target.addresses[0], None, lab.relay.identity.peer_id,
                           Identity.generate())


async def test_reservations_refresh_and_ping_on_one_connection(lab: Lab) -> None:
    conn = await connect(*lab.relay_addr, Identity.generate(), first=(Reserve(),))
    try:
        async with asyncio.timeout(T):
            status = await conn.receive()
            assert isinstance(status, RelayStatus) and status.code == RelayCode.OK
            await conn.send(Ping(7))
            assert await conn.receive() == Pong(7)
            lab.clock.advance(RESERVATION_IDLE_TIMEOUT - 1)
            await conn.send(Reserve())
            again = await conn.receive()
            assert isinstance(again, RelayStatus) and again.code == RelayCode.OK
            lab.clock.advance(RESERVATION_IDLE_TIMEOUT - 1)
            lab.service.handle_timers()  # seen at the Reserve: still held
            assert len(lab.service.reserved()) == 1
            lab.clock.advance(2)
            lab.service.handle_timers()  # silent for the idle timeout: dropped
            assert lab.service.reserved() == []
            with pytest.raises(ConnectionLost):
                while True:
                    await conn.receive()
    finally:
        await conn.aclose()


async def test_a_target_that_never_accepts_fails_the_dialler(lab: Lab) -> None:
    # A raw reservation that ignores its Stop messages.
    holder = Identity.generate()
    conn = await connect(*lab.relay_addr, holder, first=(Reserve(),))
    try:
        async with asyncio.timeout(T):
            assert isinstance(await conn.receive(), RelayStatus)
            dial = asyncio.create_task(lab.dial(target=holder.peer_id))
            stop = await conn.receive()
            assert isinstance(stop, Stop) and len(stop.token) == TOKEN_LEN
            lab.clock.advance(ACCEPT_TIMEOUT)
            lab.service.handle_timers()
            with pytest.raises(RelayRefused, match="CONNECTION_FAILED"):
                await dial
    finally:
        await conn.aclose()


async def test_a_token_is_not_a_capability_for_another_peer(lab: Lab) -> None:
    holder = Identity.generate()
    conn = await connect(*lab.relay_addr, holder, first=(Reserve(),))
    try:
        async with asyncio.timeout(T):
            assert isinstance(await conn.receive(), RelayStatus)
            dial = asyncio.create_task(lab.dial(target=holder.peer_id))
            stop = await conn.receive()
            assert isinstance(stop, Stop)
            thief = await connect(*lab.relay_addr, Identity.generate(),
                                  first=(Accept(stop.token),), stop_on=(RelayStatus,))
            refused = await thief.receive()
            assert isinstance(refused, RelayStatus) and refused.code == RelayCode.PERMISSION_DENIED
            await thief.aclose()
            lab.clock.advance(ACCEPT_TIMEOUT)
            lab.service.handle_timers()
            with pytest.raises(RelayRefused, match="CONNECTION_FAILED"):
                await dial
    finally:
        await conn.aclose()


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("limits", "what"), [
    (RelayLimits(max_reservations=1), "reservations held"),
    (RelayLimits(max_reservations_per_ip=1), "reservations from 127.0.0.1"),
])
async def test_reservation_limits_refuse_with_a_reason(limits: RelayLimits, what: str) -> None:
    async for lab in make_lab(limits):
        await lab.reserve()
        conn = await connect(*lab.relay_addr, Identity.generate(), first=(Reserve(),))
        async with asyncio.timeout(T):
            status = await conn.receive()
        assert isinstance(status, RelayStatus)
        assert status.code == RelayCode.RESOURCE_LIMIT_EXCEEDED and what in status.reason
        await conn.aclose()
        assert lab.service.stats()["refused"] == {"RESOURCE_LIMIT_EXCEEDED": 1}


@pytest.mark.parametrize(("limits", "what"), [
    (RelayLimits(max_circuits=1), "circuits open"),
    (RelayLimits(max_circuits_per_peer=1), "takes part in 1 circuits"),
    (RelayLimits(max_circuits_per_ip=1), "circuits from 127.0.0.1"),
])
async def test_circuit_limits_refuse_new_circuits_and_keep_serving_the_open_one(
        limits: RelayLimits, what: str) -> None:
    async for lab in make_lab(limits):
        await lab.reserve()
        conn = await lab.dial()
        with pytest.raises(RelayRefused, match="RESOURCE_LIMIT_EXCEEDED") as info:
            await lab.dial()
        assert what in str(info.value)
        assert await fetch_chunks(conn) == (CHUNK, CHUNK[::-1])  # the open one still works
        await conn.aclose()


async def test_a_circuit_is_cut_at_its_byte_limit() -> None:
    async for lab in make_lab(RelayLimits(circuit_bytes=64 * 1024)):
        await lab.reserve()
        conn = await lab.dial()
        with pytest.raises((ConnectionLost, AssertionError)):
            await fetch_chunks(conn)
        assert lab.service.stats()["circuits_closed"] == {"bytes": 1}
        await conn.aclose()


async def test_a_circuit_is_cut_at_its_duration_limit() -> None:
    async for lab in make_lab(RelayLimits(circuit_seconds=60)):
        await lab.reserve()
        conn = await lab.dial()
        assert await fetch_chunks(conn) == (CHUNK, CHUNK[::-1])
        lab.clock.advance(59)
        lab.service.handle_timers()
        await conn.send(Ping(1))
        async with asyncio.timeout(T):
            assert await conn.receive() == Pong(1)
        lab.clock.advance(1)
        lab.service.handle_timers()
        with pytest.raises(ConnectionLost):
            async with asyncio.timeout(T):
                while True:
                    await conn.receive()
        assert lab.service.stats()["circuits_closed"] == {"duration": 1}


async def test_the_global_rate_limit_slows_the_splice_but_the_transfer_completes() -> None:
    rate = 128 * 1024  # a second's burst, then the rest at this rate
    async for lab in make_lab(RelayLimits(rate=rate)):
        await lab.reserve()
        conn = await lab.dial()
        started = time.monotonic()
        assert await fetch_chunks(conn) == (CHUNK, CHUNK[::-1])
        elapsed = time.monotonic() - started
        await conn.aclose()
        assert lab.service.stats()["rate"] == rate
        moved = lab.service.throttle.to_json()["bytes"]
        assert moved > 2 * len(CHUNK)
        # It cannot have been faster than the bucket allows: a second's burst, the rate over
        # the time taken, and the one read (at most 256 KiB) that overdraws it.
        assert elapsed >= (moved - rate - 256 * 1024) / rate > 1.0


# -- hostile clients ------------------------------------------------------------------------


async def test_garbage_and_wrong_messages_drop_that_peer_not_the_relay(lab: Lab) -> None:
    await lab.reserve()
    # Raw garbage instead of a handshake.
    reader, writer = await asyncio.open_connection(*lab.relay_addr)
    writer.write(b"\x00\x05hello" + os.urandom(300))
    async with asyncio.timeout(T):
        assert await reader.read() == b""
    writer.close()
    # A chunk request on a reservation connection.
    conn = await connect(*lab.relay_addr, Identity.generate(), first=(Reserve(),))
    async with asyncio.timeout(T):
        assert isinstance(await conn.receive(), RelayStatus)
        await conn.send(Request(CID, 0))
        with pytest.raises(ConnectionLost):
            while True:
                await conn.receive()
    # Accept for a token nobody issued.
    conn = await connect(*lab.relay_addr, Identity.generate(), first=(Accept(bytes(16)),),
                         stop_on=(RelayStatus,))
    async with asyncio.timeout(T):
        status = await conn.receive()
    assert isinstance(status, RelayStatus) and status.code == RelayCode.PERMISSION_DENIED
    await conn.aclose()
    # A Connect to itself.
    me = Identity.generate()
    with pytest.raises(RelayRefused, match="PERMISSION_DENIED"):
        await open_circuit(lab.relay_addr, None, me.peer_id, me)
    # The relay still serves honest peers.
    conn2 = await lab.dial()
    assert await fetch_chunks(conn2) == (CHUNK, CHUNK[::-1])
    await conn2.aclose()


async def test_a_dialler_that_sends_early_bytes_only_breaks_its_own_circuit(lab: Lab) -> None:
    await lab.reserve()
    # Connect followed at once by junk (no wait for the relay's OK): the junk is spliced to
    # the target as the start of the inner handshake, which refuses it.
    outer = await connect(*lab.relay_addr, Identity.generate(),
                          first=(Connect(lab.target_id.peer_id),), stop_on=(RelayStatus,))
    assert outer.protocol.transport is not None
    outer.protocol.transport.write(b"\xff\xff" + os.urandom(64))
    async with asyncio.timeout(T):
        status = await outer.receive()
    assert isinstance(status, RelayStatus) and status.code == RelayCode.OK
    transport, _ = outer.protocol.detach()
    transport.close()
    conn = await lab.dial()
    assert await fetch_chunks(conn) == (CHUNK, CHUNK[::-1])
    await conn.aclose()


async def test_a_relay_that_is_gone_is_a_network_error() -> None:
    with pytest.raises(NetworkError):
        await open_circuit(("127.0.0.1", 9), None, Identity.generate().peer_id,
                           Identity.generate(), timeout=T)


# -- the pure rules -------------------------------------------------------------------------


def test_relay_messages_round_trip() -> None:
    peer = Identity.generate().peer_id
    for msg in (Reserve(), Connect(peer), Stop(peer, bytes(range(16))), Accept(bytes(16)),
                RelayStatus(0, "reserved", 3600, (("203.0.113.10", 7473), ("2001:db8::1", 1)),
                            ("198.51.100.2", 40000), 0, 0),
                RelayStatus(2, "full", limit_seconds=7200, limit_bytes=4 << 30)):
        assert decode(encode(msg)[4:]) == msg


def test_table_expires_pending_circuits_and_idle_reservations() -> None:
    table = RelayTable(RelayLimits())
    a, b = Identity.generate().peer_id, Identity.generate().peer_id
    assert not isinstance(table.reserve(b, "192.0.2.1", 0.0), type(None))
    circuit = table.connect(a, "192.0.2.2", b, 0.0)
    assert isinstance(circuit, Circuit)
    assert table.next_deadline() == ACCEPT_TIMEOUT
    out = table.expire(ACCEPT_TIMEOUT)
    assert out.pending == [circuit] and not table.circuits
    table.seen(b, 30.0)
    assert table.expire(30.0 + RESERVATION_IDLE_TIMEOUT - 0.1).reservations == []
    assert [r.peer for r in table.expire(30.0 + RESERVATION_IDLE_TIMEOUT).reservations] == [b]


def test_per_ip_limits_count_an_ipv6_64_as_one_host() -> None:
    assert host_of("2001:db8:1:2::5") == host_of("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert host_of("::ffff:192.0.2.1") == "192.0.2.1"


def test_keepalive_rules_ping_refresh_and_give_up() -> None:
    assert KeepaliveRules(0.0, ttl=0.0).refresh_at == MIN_REFRESH  # a hostile relay's TTL
    rules = KeepaliveRules(0.0, ttl=100.0)
    assert rules.next_deadline() == KEEPALIVE_INTERVAL
    assert rules.due(KEEPALIVE_INTERVAL - 0.1) is None
    assert rules.due(KEEPALIVE_INTERVAL) == "ping"
    rules.heard(70.0)  # the Pongs came
    assert rules.due(75.0) == "refresh"  # 75% of the 100 s lifetime
    rules.reserved(75.5, 100.0)
    assert rules.refresh_at == 75.5 + 75.0
    rules.reserved(75.5, 1.0)  # a lifetime too short to honour
    assert rules.refresh_at == 75.5 + MIN_REFRESH
    assert rules.due(75.5 + KEEPALIVE_TIMEOUT) == "dead"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_circuits"):
        RelayLimits(max_circuits=0)
    with pytest.raises(ValueError, match="rate"):
        RelayLimits(rate=-1)
    assert RelayLimits().circuit_bytes >= 2 << 30  # a 1 GiB relayed fetch fits by default


# -- the end of a circuit, and the session that hands its socket over --------------------------


async def test_a_circuit_ends_when_either_side_closes(lab: Lab) -> None:
    await lab.reserve()
    conn = await lab.dial()
    assert await fetch_chunks(conn) == (CHUNK, CHUNK[::-1])
    assert lab.service.stats()["circuits"] == 1
    await conn.aclose()
    async with asyncio.timeout(T):
        await lab.service.wait_no_circuits()
    assert lab.service.stats()["circuits"] == 0
    assert lab.service.stats()["circuits_closed"] == {"closed": 1}


def test_a_session_stops_after_its_last_record_and_hands_over_the_rest() -> None:
    from .test_session import opened

    a, b, _, _ = opened()
    b.stop_on = (Connect,)
    target = Identity.generate().peer_id
    a.send(Connect(target))
    tail = b"\x00\x30" + b"spliced bytes, not ours" * 2
    data = bytes(a.data_to_send()) + tail
    # Fed in two pieces split inside the record: the stop still falls after it.
    msgs = b.receive_data(data[:7]) + b.receive_data(data[7:])
    assert msgs == [Connect(target)] and b.stopped
    assert b.take_unread() == tail


def test_malformed_relay_frames_are_the_peers_fault() -> None:
    from p2p.encoding import pack
    from p2p.wire.errors import RemoteProtocolError
    from p2p.wire.messages import MessageType

    def frame(mtype: int, body: object) -> bytes:
        return bytes((mtype,)) + pack(body)

    bad = [
        frame(MessageType.CONNECT, [b"short"]),
        frame(MessageType.CONNECT, [bytes(32), 1]),
        frame(MessageType.STOP, [bytes(32), bytes(15)]),
        frame(MessageType.ACCEPT, ["text, not bytes"]),
        frame(MessageType.RESERVE, [1]),
        frame(MessageType.RELAY_STATUS, [0, "ok", 1, [["h", 0]], None, 0, 0]),
        frame(MessageType.RELAY_STATUS, [0, "ok", 1, [["h", 1]] * 5, None, 0, 0]),
        frame(MessageType.RELAY_STATUS, [256, "ok", 1, [], None, 0, 0]),
    ]
    for raw in bad:
        with pytest.raises(RemoteProtocolError):
            decode(raw)


async def test_a_reservation_the_relay_dropped_is_taken_again(lab: Lab) -> None:
    changes: asyncio.Queue[bool] = asyncio.Queue()
    held = HeldReservation(lab.target_id, lab.relay_addr,
                           lambda t, unread, relay, _src: lab.target.adopt(t, unread, relay),
                           on_change=lambda: changes.put_nowait(held.reserved.is_set()))
    task = asyncio.get_running_loop().create_task(held.run())
    lab.holders.append((held, task))
    async with asyncio.timeout(T):
        assert await changes.get() is True
        # Silent past the relay's idle timeout (its clock moved; ours did not ping yet).
        lab.clock.advance(RESERVATION_IDLE_TIMEOUT)
        lab.service.handle_timers()
        assert await changes.get() is False
        assert held.hint is None
        while not await changes.get():  # reconnects after RETRY_MIN
            pass
    assert held.hint is not None and lab.service.reserved() == [lab.target_id.peer_id]
    conn = await lab.dial()
    assert await fetch_chunks(conn) == (CHUNK, CHUNK[::-1])
    await conn.aclose()
