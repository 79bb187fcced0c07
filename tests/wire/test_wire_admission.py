"""Who gets a connection slot: limits per IP and per /24 or /48, and eviction of the oldest
handshake, then the longest idle session, when the server is full (issue 12, item 3)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2p.address import from_sockaddr
from p2p.identity import Identity
from p2p.testing import FakeClock
from p2p.wire.errors import ConnectionLost
from p2p.wire.messages import Data, GetManifest, Ping, Request
from p2p.wire.server import PeerDisconnected, ServerLimits
from p2p.wire.serving import (
    EVICTED,
    Admission,
    ServedPeer,
    address_prefix,
    choose_eviction,
)
from p2p.wire.transport import Connection, connect

from .recorder import Recorder
from .recorder import serving as shared_serving

CID = blake3.blake3(b"admission").digest()
CHUNKS: list[bytes] = [bytes([i]) * 1000 for i in range(4)]
BIG_CHUNKS: list[bytes] = [bytes([i]) * (1 << 20) for i in range(4)]
T = 30  # generous deadline for any single awaited event on a loaded machine
GRACE = ServerLimits().eviction_grace


# -- prefix counting -------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "prefix"), [
    ("192.0.2.7", "192.0.2.0/24"),
    ("192.0.2.255", "192.0.2.0/24"),
    ("192.0.3.1", "192.0.3.0/24"),
    ("2001:db8:1:2::5", "2001:db8:1::/48"),
    ("2001:db8:1:ffff:ffff::1", "2001:db8:1::/48"),
    ("2001:db8:2::1", "2001:db8:2::/48"),
    ("fe80::1%eth0", "fe80::/48"),
])
def test_address_prefix_is_the_24_or_48(host: str, prefix: str) -> None:
    assert address_prefix(host) == prefix


def test_a_mapped_address_counts_in_its_ipv4_24() -> None:
    mapped = from_sockaddr(("::ffff:192.0.2.7", 4001, 0, 0))[0]
    assert mapped == "192.0.2.7"
    admission = Admission(ServerLimits(max_connections_per_ip=1, max_connections_per_prefix=2))
    admission.add(mapped)
    assert admission.count("192.0.2.7") == (1, 1)
    assert admission.refusal(from_sockaddr(("::ffff:192.0.2.7", 1))[0], 0.0) is not None
    admission.add(from_sockaddr(("::ffff:192.0.2.8", 1))[0])
    assert admission.refusal("192.0.2.9", 0.0) is not None  # the /24 holds its two
    assert admission.refusal("192.0.3.9", 0.0) is None


def test_admission_counts_per_ip_per_prefix_and_in_total() -> None:
    admission = Admission(ServerLimits(max_connections=6, max_connections_per_ip=2,
                                       max_connections_per_prefix=3))
    admission.add("192.0.2.1")
    assert admission.refusal("192.0.2.1", 0.0) is None
    admission.add("192.0.2.1")
    assert admission.refusal("192.0.2.1", 0.0) == "connection limit reached"  # per IP
    assert admission.refusal("192.0.2.2", 0.0) is None
    admission.add("192.0.2.2")
    assert admission.refusal("192.0.2.3", 0.0) == "connection limit reached"  # per /24
    assert admission.refusal("192.0.3.3", 0.0) is None  # another /24
    for host in ("2001:db8:1::1", "2001:db8:1:ffff::2", "2001:db8:1:1::3"):
        assert admission.refusal(host, 0.0) is None
        admission.add(host)
    assert admission.refusal("2001:db8:1:77::9", 0.0) == "connection limit reached"  # per /48
    assert admission.refusal("2001:db8:2::9", 0.0) is None
    assert admission.total == 6 and admission.full
    admission.remove("192.0.2.1")
    assert admission.refusal("192.0.2.3", 0.0) is None and admission.refusal("192.0.2.1", 0.0) is None
    assert admission.total == 5 and not admission.full
    assert admission.count("192.0.2.1") == (1, 2)


def test_a_newcomer_may_evict_only_from_a_network_two_heavier_than_its_own() -> None:
    admission = Admission(ServerLimits(max_connections=8))
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.1"):
        admission.add(host)
    assert admission.may_evict("203.0.113.1", "192.0.2.1")  # 3 >= 0 + 2
    assert admission.may_evict("198.51.100.9", "192.0.2.1")  # 3 >= 1 + 2
    assert not admission.may_evict("203.0.113.1", "198.51.100.1")  # 1 < 0 + 2
    assert not admission.may_evict("192.0.2.9", "192.0.2.1")  # within one network: never
    # An even split of 8 over two networks is 4: the /24 with 3 is not over it, with 5 it
    # is; over three (a newcomer's own network counts) the split is 2.67, and 3 is over it.
    assert not admission.over_share("192.0.2.1", "198.51.100.7")
    assert admission.over_share("192.0.2.1", "203.0.113.1")
    admission.add("192.0.2.4")
    admission.add("192.0.2.5")
    assert admission.over_share("192.0.2.1", "198.51.100.7")
    assert not admission.over_share("198.51.100.1", "198.51.100.7")


# -- the eviction choice ---------------------------------------------------------------------------


LIMITS = ServerLimits()


def handshaking(at: float) -> ServedPeer:
    return ServedPeer(LIMITS, at)


def idle(accepted: float, active: float) -> ServedPeer:
    """A session whose last useful message (a first GetManifest) came at ``active``."""
    peer = ServedPeer(LIMITS, accepted)
    peer.handshake_done(accepted)
    peer.receive(GetManifest(CID), active)
    return peer


def busy(at: float) -> ServedPeer:
    peer = idle(at, at)
    peer.receive(Request(CID, 0), at)
    return peer


def test_the_oldest_handshake_goes_first_even_before_an_older_idle_session() -> None:
    peers = [("idle", idle(100.0, 101.0)), ("young hs", handshaking(150.0)),
             ("old hs", handshaking(120.0)), ("busy", busy(90.0))]
    assert choose_eviction(peers, 200.0, GRACE) == "old hs"


def test_then_the_session_idle_the_longest() -> None:
    peers = [("recent", idle(100.0, 180.0)), ("idlest", idle(150.0, 151.0)),
             ("middle", idle(90.0, 160.0)), ("busy", busy(10.0))]
    assert choose_eviction(peers, 200.0, GRACE) == "idlest"


def test_chatter_that_changes_nothing_does_not_keep_a_session_from_eviction() -> None:
    chatty = idle(100.0, 100.0)
    for t in range(101, 200):
        chatty.receive(Ping(t), float(t))  # a Ping a second, within its budget
        chatty.receive(GetManifest(CID), float(t) + 0.5)  # asked again: changes nothing
    quiet = idle(100.0, 150.0)
    assert choose_eviction([("quiet", quiet), ("chatty", chatty)], 200.0, GRACE) == "chatty"


def test_a_session_is_idle_from_its_last_answer_not_its_last_request() -> None:
    served = idle(100.0, 100.0)
    served.receive(Request(CID, 0), 110.0)
    request = served.next_request()
    assert request is not None
    assert choose_eviction([("served", served)], 200.0, GRACE) is None  # being answered
    served.request_done(190.0)
    other = idle(100.0, 150.0)
    assert choose_eviction([("served", served), ("other", other)], 200.0, GRACE) == "other"


def test_busy_young_and_closed_connections_are_kept() -> None:
    closed = handshaking(0.0)
    closed.close()
    peers = [("busy", busy(0.0)), ("young hs", handshaking(199.0)),
             ("recent", idle(0.0, 199.0)), ("closed", closed)]
    assert choose_eviction(peers, 200.0, GRACE) is None
    assert choose_eviction(peers, 199.0 + GRACE, GRACE) == "young hs"
    assert choose_eviction(peers[:1] + peers[2:], 199.0 + GRACE, GRACE) == "recent"


def test_ties_go_to_the_first_listed() -> None:
    assert choose_eviction([("a", handshaking(5.0)), ("b", handshaking(5.0))], 100.0, GRACE) == "a"
    assert choose_eviction([("a", idle(1.0, 5.0)), ("b", idle(0.0, 5.0))], 100.0, GRACE) == "a"


# -- real sockets ----------------------------------------------------------------------------------


class HalfOpen:
    """A raw TCP client that sends the handshake's first message (``len:u16 || e``, from
    PROTOCOL.md) and never the third; it reads the server's second message to know it was
    admitted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, source: str = "127.0.0.1") -> HalfOpen:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def start_handshake(self) -> bool:
        """Send message 1; True if message 2 came back (admitted), False if closed (refused)."""
        e = X25519PrivateKey.generate().public_key().public_bytes_raw()
        self.writer.write(len(e).to_bytes(2, "big") + e)
        try:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
            await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return False
        return True

    async def closed_by_server(self) -> bool:
        try:
            return await self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def evicted(recorder: Recorder) -> list[PeerDisconnected]:
    return [e for e in recorder.disconnects() if e.reason == EVICTED]


def evictions_reach(recorder: Recorder, count: int) -> Callable[[], bool]:
    return lambda: len(evicted(recorder)) >= count


async def fetch_one(conn: Connection, index: int, chunks: list[bytes] = CHUNKS) -> None:
    await conn.send(Request(CID, index))
    assert await conn.receive() == Data(CID, index, chunks[index])


async def test_half_open_handshakes_fill_the_server_and_an_honest_client_still_gets_in() -> None:
    clock = FakeClock()
    limits = ServerLimits(max_connections=4)
    async with asyncio.timeout(T), shared_serving(limits, CID, list(CHUNKS), clock=clock) as (
            server, (host, port), recorder):
        raws: list[HalfOpen] = []
        honests: list[Connection] = []
        try:
            for _ in range(4):
                raw = await HalfOpen.open(host, port)
                raws.append(raw)
                assert await raw.start_handshake()
                clock.advance(1.0)
            assert server.connection_count == 4
            # Handshaking for 4, 3, 2 and 1 s: each honest client (kept open, so the server
            # stays full), from a network of its own, evicts the oldest half-open one and is
            # served.
            for n, index in enumerate((1, 2)):
                honest = await connect(host, port, Identity.generate(),
                                       expected_peer=server.identity.peer_id, timeout=T,
                                       source=f"127.{n + 1}.0.1")
                honests.append(honest)
                assert await raws[n].closed_by_server()
                await fetch_one(honest, index)
                assert server.connection_count == 4
                await recorder.wait_until(evictions_reach(recorder, n + 1))
                assert len(evicted(recorder)) == n + 1
                assert all(e.peer is None for e in evicted(recorder))
            # The honest clients are still served; the two newest half-open ones still
            # hold their slots, and nothing else was dropped.
            for honest in honests:
                await fetch_one(honest, 3)
            assert server.connection_count == 4
            assert len(server.connections()) == 2
            assert len(recorder.disconnects()) == 2
        finally:
            for honest in honests:
                await honest.aclose()
            for raw in raws:
                await raw.aclose()


async def test_a_full_server_evicts_the_session_idle_the_longest() -> None:
    clock = FakeClock()
    limits = ServerLimits(max_connections=4)
    async with asyncio.timeout(T), shared_serving(limits, CID, list(CHUNKS), clock=clock) as (
            server, (host, port), recorder):
        ids = [Identity.generate() for _ in range(4)]
        conns: list[Connection] = []
        try:
            for n, me in enumerate(ids):
                conn = await connect(host, port, me, timeout=T)
                conns.append(conn)
                await fetch_one(conn, n)  # a finished download, left open
                clock.advance(1.0)
            # The first comes back (a Ping would not count: it asks for nothing): the
            # second is now the one idle the longest.
            await fetch_one(conns[0], 0)
            clock.advance(GRACE)
            newcomer = await connect(host, port, Identity.generate(), timeout=T, source="127.1.0.1")
            try:
                await fetch_one(newcomer, 3)
                event = await recorder.wait_for(lambda e: isinstance(e, PeerDisconnected))
                assert isinstance(event, PeerDisconnected)
                assert (event.peer, event.reason) == (ids[1].peer_id, EVICTED)
                with pytest.raises(ConnectionLost):
                    await conns[1].receive()
                assert server.connection_count == 4
                for n in (0, 2, 3):
                    await fetch_one(conns[n], n)
                assert len(recorder.disconnects()) == 1
            finally:
                await newcomer.aclose()
        finally:
            for conn in conns:
                await conn.aclose()


async def test_a_full_server_with_nothing_evictable_refuses_the_newcomer() -> None:
    clock = FakeClock()
    limits = ServerLimits(max_connections=2, max_send_buffer=64 * 1024)
    async with asyncio.timeout(T), shared_serving(limits, CID, list(BIG_CHUNKS), clock=clock) as (
            server, (host, port), recorder):
        ids = [Identity.generate() for _ in range(2)]
        # Each asks for 32 MiB and never reads: its requests stay in flight.
        stallers = [await connect(host, port, me, timeout=T, max_receive_queue=64 * 1024)
                    for me in ids]
        try:
            for staller, me in zip(stallers, ids, strict=True):
                for i in range(limits.max_inflight_requests):
                    await staller.send(Request(CID, i % len(BIG_CHUNKS)))
                await recorder.wait_until(lambda me=me: recorder.write_paused(me.peer_id))
            clock.advance(GRACE * 2)  # well past the grace, short of the send timeout
            # From another network (so their /24 is heavy enough to give up a slot), but
            # both are busy.
            with pytest.raises(ConnectionLost):
                await connect(host, port, Identity.generate(), timeout=T, source="127.1.0.1")
            assert server.connection_count == 2
            assert {c.peer for c in server.connections()} == {me.peer_id for me in ids}
            assert recorder.disconnects() == []
        finally:
            for staller in stallers:
                await staller.aclose()


async def test_a_crowd_that_just_took_every_slot_still_gives_one_to_a_lighter_network() -> None:
    clock = FakeClock()  # never moved: every handshake stays inside the grace
    limits = ServerLimits(max_connections=4)
    async with asyncio.timeout(T), shared_serving(limits, CID, list(CHUNKS), clock=clock) as (
            _server, (host, port), recorder):
        raws: list[HalfOpen] = []
        try:
            for _ in range(4):
                raws.append(raw := await HalfOpen.open(host, port))
                assert await raw.start_handshake()
            # 127.0.0.0/24 holds all four, more than an even split: its oldest handshake
            # goes for a newcomer from another network, young as it is.
            honest = await connect(host, port, Identity.generate(), timeout=T, source="127.1.0.1")
            try:
                assert await raws[0].closed_by_server()
                await fetch_one(honest, 1)
                # The crowd re-opening what it lost is refused: evicting for it would only
                # move slots within the crowd, or take the honest one's.
                again = await HalfOpen.open(host, port, "127.0.0.9")
                raws.append(again)
                assert not await again.start_handshake()
                clock.advance(GRACE * 2)
                later = await HalfOpen.open(host, port, "127.0.0.10")
                raws.append(later)
                assert not await later.start_handshake()
                assert len(evicted(recorder)) == 1
                await fetch_one(honest, 2)
            finally:
                await honest.aclose()
        finally:
            for raw in raws:
                await raw.aclose()


async def test_one_24_cannot_take_more_than_its_share_from_other_loopback_addresses() -> None:
    clock = FakeClock()
    limits = ServerLimits(max_connections=8, max_connections_per_ip=1,
                          max_connections_per_prefix=2)
    async with asyncio.timeout(T), shared_serving(limits, CID, list(CHUNKS), clock=clock) as (
            server, (host, port), _recorder):
        raws: list[HalfOpen] = []
        try:
            outcomes = []
            for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.5"):
                raw = await HalfOpen.open(host, port, source)
                raws.append(raw)
                outcomes.append(await raw.start_handshake())
            # Per IP: the second from .2 is refused; per /24: .4 is the third of 127.0.0.0/24.
            assert outcomes == [True, False, True, False, True]
            assert server.connection_count == 3
        finally:
            for raw in raws:
                await raw.aclose()
