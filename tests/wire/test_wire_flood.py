"""Message floods against the chunk server: the budget of messages that change nothing.

Pure tests of :class:`~p2p.wire.budget.Budget` and of :class:`ServedPeer`'s charging,
a test of the reader's yield, and real sockets on 127.0.0.1: a client that floods
Pings is dropped while an honest client on the same server keeps being served.
"""

from __future__ import annotations

import asyncio
import contextlib

import blake3
import pytest

from p2p.errors import NetworkError
from p2p.identity import Identity
from p2p.wire.budget import NOOP_BURST, Budget
from p2p.wire.errors import ConnectionLost
from p2p.wire.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Data,
    GetBitfield,
    GetManifest,
    Have,
    Hello,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
    encode,
)
from p2p.wire.server import PeerDisconnected, ServerLimits
from p2p.wire.serving import Admission, Drop, Reply, ServedPeer
from p2p.wire.session import DECODE_AHEAD, MAX_PLAINTEXT, Session
from p2p.wire.transport import READ_BATCH, WireProtocol, connect

from .recorder import serving

T = 20
CID = blake3.blake3(b"flood").digest()
CHUNKS = [bytes([i]) * 4096 for i in range(4)]


# -- the bucket ------------------------------------------------------------------------------


def test_a_budget_allows_its_burst_then_is_exhausted_for_good() -> None:
    budget = Budget(0.0, rate=10.0, burst=5.0)
    assert all(budget.spend(0.0) for _ in range(5))
    assert not budget.spend(0.0)
    assert budget.exhausted
    assert not budget.spend(100.0)  # a refill does not undo a drop
    assert "6 messages that changed nothing" in budget.reason()


def test_a_budget_refills_at_its_rate() -> None:
    budget = Budget(0.0, rate=10.0, burst=5.0)
    for _ in range(5):
        budget.spend(0.0)
    # 0.5 s later: five more tokens, and no more than the burst however long it waited.
    assert all(budget.spend(0.5) for _ in range(5))
    assert not budget.spend(0.5)
    slow = Budget(0.0, rate=10.0, burst=5.0)
    for second in range(1000):  # ten a second for ever is allowed
        for tenth in range(10):
            assert slow.spend(second + tenth / 10)


# -- what the server charges -----------------------------------------------------------------


def opened(limits: ServerLimits) -> ServedPeer:
    peer = ServedPeer(limits, 0.0)
    peer.handshake_done(0.0)
    return peer


@pytest.mark.parametrize("noop", [
    Ping(7), Cancel(CID, 3), Have(CID, 1), Reject(CID, 1, RejectReason.NOT_HELD), Pong(1),
    GetBitfield(CID), GetManifest(CID),
], ids=lambda m: type(m).__name__)
def test_messages_that_change_nothing_overdraw_the_budget_and_drop_the_peer(noop: object) -> None:
    peer = opened(ServerLimits(noop_burst=50, noop_rate=1.0))
    # A first GetBitfield or GetManifest for an id is useful: it is answered for free.
    peer.receive(GetBitfield(CID), 0.0)
    peer.receive(GetManifest(CID), 0.0)
    actions = [peer.receive(noop, 0.0) for _ in range(51)]  # type: ignore[arg-type]
    assert not any(isinstance(a, Drop) for a in actions[:50])
    drop = actions[50]
    assert isinstance(drop, Drop) and drop.reason.startswith("flooding") and not drop.goodbye
    assert peer.next_deadline() is None  # closed: nothing more is due
    assert peer.receive(Request(CID, 0), 0.0) is None


def test_requests_are_not_charged_but_those_over_the_cap_and_for_missing_chunks_are() -> None:
    peer = opened(ServerLimits(noop_burst=2, noop_rate=0.0, max_inflight_requests=2))
    for _ in range(100):  # requests that are served change something: never charged
        assert peer.receive(Request(CID, 0), 0.0) is None
        request = peer.next_request()
        assert request is not None
        peer.request_done(0.0)
    assert peer.budget.spent == 0
    peer.receive(Request(CID, 0), 0.0)
    peer.receive(Request(CID, 1), 0.0)
    over = peer.receive(Request(CID, 2), 0.0)
    assert over == Reply(Reject(CID, 2, RejectReason.TOO_MANY_IN_FLIGHT))
    assert peer.budget.spent == 1
    request = peer.next_request()
    assert request is not None
    assert peer.unavailable(request, 4).reason == RejectReason.NOT_HELD
    peer.request_done(0.0)
    assert peer.unavailable(Request(CID, 9), 4).reason == RejectReason.BAD_INDEX
    assert peer.budget.exhausted
    assert isinstance(peer.receive(Request(CID, 3), 0.0), Drop)  # the next message drops it


def test_a_cancel_of_a_queued_request_is_useful() -> None:
    peer = opened(ServerLimits(noop_burst=0, noop_rate=0.0))
    peer.receive(Request(CID, 1), 0.0)
    assert peer.receive(Cancel(CID, 1), 0.0) is None
    assert peer.queued == 0 and not peer.budget.exhausted
    assert isinstance(peer.receive(Cancel(CID, 1), 0.0), Drop)  # again: nothing to cancel


def test_a_flooders_ip_is_refused_for_the_penalty_then_admitted_again() -> None:
    limits = ServerLimits(flood_penalty=60.0, max_penalised=2)
    admission = Admission(limits)
    admission.penalise("192.0.2.1", 100.0)
    assert admission.refusal("192.0.2.1", 159.9) == "refused: flooded lately"
    assert admission.refusal("192.0.2.2", 100.0) is None  # its neighbours are not
    assert admission.refusal("192.0.2.1", 160.0) is None
    # The table is bounded: the oldest flooder is forgotten first.
    for n, ip in enumerate(["198.51.100.1", "198.51.100.2", "198.51.100.3"]):
        admission.penalise(ip, 200.0 + n)
    assert admission.refusal("198.51.100.1", 203.0) is None
    assert admission.refusal("198.51.100.2", 203.0) is not None
    assert admission.refusal("198.51.100.3", 203.0) is not None


# -- the reader yields -----------------------------------------------------------------------


async def test_a_reader_with_thousands_of_messages_queued_lets_others_run() -> None:
    proto = WireProtocol()
    proto.queue.extend(Ping(i) for i in range(10 * READ_BATCH))
    other_ran_at: list[int] = []
    handled = 0

    async def other() -> None:
        other_ran_at.append(handled)

    async with asyncio.timeout(T):
        task = asyncio.get_running_loop().create_task(other())
        while proto.queue:
            await proto.next_message()
            handled += 1
        await task
    assert other_ran_at and other_ran_at[0] <= READ_BATCH


class Watching(WireProtocol):
    """A listener's protocol that remembers the most messages it ever held decoded."""

    most = 0

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)
        Watching.most = max(Watching.most, len(self.queue))


async def test_a_receiver_decodes_only_a_bounded_batch_ahead_of_its_reader() -> None:
    me = Identity.generate()
    accepted: asyncio.Queue[WireProtocol] = asyncio.Queue()

    def made(proto: WireProtocol) -> None:
        proto.attach(Session(me, Hello(PROTOCOL_VERSION, me.peer_id, (), "t"), initiator=False))
        accepted.put_nowait(proto)

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: Watching(on_made=made), "127.0.0.1", 0)
    Watching.most = 0
    count = 10 * DECODE_AHEAD
    try:
        async with asyncio.timeout(T):
            host, port = listener.sockets[0].getsockname()[:2]
            client = await connect(host, port, Identity.generate(), timeout=T)
            proto = await accepted.get()
            await proto.ready
            try:
                for i in range(count):  # all sent before the receiver takes one
                    await client.send(Have(CID, i))
                await client.send(Ping(1))
                received = [await proto.next_message() for _ in range(count + 1)]
            finally:
                await client.aclose()
    finally:
        listener.close()
    assert received == [*(Have(CID, i) for i in range(count)), Ping(1)]  # all, in order
    # The batch is checked between records, and one record (up to MAX_PLAINTEXT bytes) holds
    # up to ~1,450 of these 45-byte frames.
    assert 0 < Watching.most <= DECODE_AHEAD + MAX_PLAINTEXT // len(encode(Have(CID, 0))) < count


# -- real sockets ----------------------------------------------------------------------------


async def test_a_ping_flooder_is_dropped_and_an_honest_client_is_served_throughout() -> None:
    async with asyncio.timeout(T), serving(ServerLimits(), CID, list(CHUNKS)) as (
            _server, (host, port), recorder):
        flooder_id = Identity.generate()
        flooder = await connect(host, port, flooder_id, timeout=T)
        honest = await connect(host, port, Identity.generate(), timeout=T)
        try:
            sent = 0

            async def flood() -> None:
                nonlocal sent
                with contextlib.suppress(ConnectionLost):  # until the server drops it
                    while True:
                        await flooder.send(Ping(sent))
                        sent += 1
                        if sent % READ_BATCH == 0:
                            await asyncio.sleep(0)  # one process: let the server and the honest run

            async def fetch() -> None:
                for round_ in range(20):
                    index = round_ % len(CHUNKS)
                    await honest.send(Request(CID, index))
                    assert await honest.receive() == Data(CID, index, CHUNKS[index])

            async with asyncio.TaskGroup() as group:
                flooding = group.create_task(flood())
                group.create_task(fetch())
                event = await recorder.wait_for(
                    lambda e: isinstance(e, PeerDisconnected) and e.peer == flooder_id.peer_id)
                assert isinstance(event, PeerDisconnected)
                assert event.reason.startswith("flooding"), event.reason
                flooding.cancel()
            assert sent > NOOP_BURST
            # The honest client is still connected and served.
            await honest.send(Request(CID, 0))
            assert await honest.receive() == Data(CID, 0, CHUNKS[0])
            assert [e.peer for e in recorder.disconnects()] == [flooder_id.peer_id]
            # Back with a fresh key from the same address: refused before any handshake.
            with pytest.raises(NetworkError):
                await connect(host, port, Identity.generate(), timeout=T)
        finally:
            await flooder.aclose()
            await honest.aclose()


def test_cancel_and_ask_again_keeps_the_queue_bounded_and_answers_in_order() -> None:
    limits = ServerLimits(max_inflight_requests=8)
    peer = opened(limits)
    for round_ in range(1000):  # a peer that never reads, cancelling and asking again
        for i in range(8):
            peer.receive(Request(CID, i), float(round_))
        for i in range(8):
            peer.receive(Cancel(CID, i), float(round_))
        assert len(peer._queue) <= 2 * limits.max_inflight_requests + 1
    assert peer.queued == 0 and not peer.budget.exhausted  # each Cancel undid a request
    for i in (3, 1, 3):
        peer.receive(Request(CID, i), 2000.0)
    peer.receive(Cancel(CID, 3), 2000.0)  # the first of the two
    served = []
    while (request := peer.next_request()) is not None:
        served.append(request.index)
        peer.request_done(2000.0)
    assert served == [1, 3]
