"""The chunk server's per-connection rules, as a pure object: every time is set by hand."""

from __future__ import annotations

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.wire.errors import LocalProtocolError, RemoteProtocolError
from p2p.wire.messages import (
    Bitfield,
    Cancel,
    Data,
    GetBitfield,
    GetManifest,
    Have,
    Manifest,
    Message,
    Ping,
    Pong,
    Reject,
    RejectReason,
    Request,
)
from p2p.wire.serving import (
    STOPPED_READING,
    TIMED_OUT,
    Drop,
    Reply,
    SendBitfield,
    SendManifest,
    ServedPeer,
    ServerLimits,
    State,
)

CID = blake3.blake3(b"serving").digest()
OTHER = blake3.blake3(b"other").digest()
LIMITS = ServerLimits(handshake_timeout=10.0, idle_timeout=120.0, send_timeout=30.0,
                      max_inflight_requests=4, max_interested=2)
T0 = 1000.0


def opened(limits: ServerLimits = LIMITS, now: float = T0) -> ServedPeer:
    """A peer accepted and past its handshake at ``now``."""
    peer = ServedPeer(limits, now)
    peer.handshake_done(now)
    return peer


# -- the handshake deadline ----------------------------------------------------------------------


def test_a_peer_that_never_finishes_its_handshake_is_dropped_at_the_deadline() -> None:
    peer = ServedPeer(LIMITS, T0)
    assert peer.state is State.HANDSHAKE
    assert peer.next_deadline() == T0 + 10
    assert peer.handle_timer(T0 + 9.999) is None
    assert peer.state is State.HANDSHAKE
    assert peer.handle_timer(T0 + 10) == Drop(TIMED_OUT, goodbye=False)
    assert peer.state is State.CLOSED
    assert peer.next_deadline() is None
    assert peer.handle_timer(T0 + 1e6) is None  # dropped once only


def test_a_handshake_in_time_trades_its_deadline_for_the_idle_one() -> None:
    peer = ServedPeer(LIMITS, T0)
    peer.handshake_done(T0 + 9)
    assert peer.state is State.OPEN
    assert peer.next_deadline() == T0 + 9 + 120
    assert peer.handle_timer(T0 + 10) is None  # the handshake deadline no longer applies
    peer.handshake_done(T0 + 50)  # a second call changes nothing
    assert peer.next_deadline() == T0 + 9 + 120
    assert peer.handle_timer(T0 + 129) == Drop(TIMED_OUT, goodbye=True)


def test_messages_before_the_handshake_are_a_bug_of_the_shell() -> None:
    peer = ServedPeer(LIMITS, T0)
    with pytest.raises(LocalProtocolError):
        peer.receive(Ping(1), T0)


# -- the idle deadline ---------------------------------------------------------------------------

ANY_MESSAGE: list[Message] = [
    Request(CID, 0), Cancel(CID, 0), GetManifest(CID), GetBitfield(CID), Ping(1), Pong(1),
    Have(CID, 1), Bitfield(CID, 1, b"\x80"), Manifest(CID, None), Reject(CID, 0, RejectReason.NOT_HELD),
]


@pytest.mark.parametrize("msg", ANY_MESSAGE, ids=lambda m: type(m).__name__)
def test_any_message_moves_the_idle_deadline(msg: Message) -> None:
    peer = opened()
    peer.receive(msg, T0 + 100)
    assert peer.next_deadline() == T0 + 100 + 120
    assert peer.handle_timer(T0 + 120) is None
    assert peer.handle_timer(T0 + 219.5) is None
    assert peer.handle_timer(T0 + 220) == Drop(TIMED_OUT, goodbye=True)


def test_what_we_send_does_not_count_as_activity() -> None:
    peer = opened()
    peer.receive(Request(CID, 0), T0)
    assert peer.next_request() == Request(CID, 0)
    peer.request_done()
    peer.write_paused(T0 + 50)
    peer.write_resumed(T0 + 60)
    assert peer.handle_timer(T0 + 120) == Drop(TIMED_OUT, goodbye=True)


# -- the stalled reader --------------------------------------------------------------------------


def test_a_peer_that_stops_reading_is_dropped_send_timeout_after_the_pause() -> None:
    peer = opened()
    peer.write_paused(T0 + 10)
    assert peer.next_deadline() == T0 + 40
    peer.write_paused(T0 + 20)  # still the same stall: the clock is not restarted
    peer.receive(Ping(1), T0 + 30)  # a peer that talks but does not read is still stuck
    assert peer.next_deadline() == T0 + 40
    assert peer.handle_timer(T0 + 39.5) is None
    assert peer.handle_timer(T0 + 40) == Drop(STOPPED_READING, goodbye=False)
    assert peer.state is State.CLOSED


def test_a_reader_that_catches_up_stops_the_stall_clock() -> None:
    peer = opened()
    peer.write_paused(T0 + 10)
    peer.write_resumed(T0 + 39)
    assert peer.next_deadline() == T0 + 120
    assert peer.handle_timer(T0 + 45) is None
    peer.write_paused(T0 + 50)  # a new stall has its own whole timeout
    assert peer.next_deadline() == T0 + 80
    assert peer.handle_timer(T0 + 79) is None
    assert peer.handle_timer(T0 + 80) == Drop(STOPPED_READING, goodbye=False)


def test_a_stall_during_the_handshake_counts_too() -> None:
    limits = ServerLimits(handshake_timeout=10.0, send_timeout=5.0)
    peer = ServedPeer(limits, T0)
    peer.write_paused(T0 + 1)
    assert peer.next_deadline() == T0 + 6
    assert peer.handle_timer(T0 + 6) == Drop(STOPPED_READING, goodbye=False)


def test_when_both_are_due_the_stall_wins_and_no_goodbye_is_sent() -> None:
    peer = opened()
    peer.write_paused(T0)
    assert peer.handle_timer(T0 + 500) == Drop(STOPPED_READING, goodbye=False)


# -- requests ------------------------------------------------------------------------------------


def test_requests_beyond_the_inflight_cap_are_rejected_with_too_many_in_flight() -> None:
    peer = opened()
    for index in range(4):
        assert peer.receive(Request(CID, index), T0) is None
    assert peer.inflight == 4 and peer.queued == 4
    assert peer.receive(Request(CID, 4), T0) == Reply(Reject(CID, 4, RejectReason.TOO_MANY_IN_FLIGHT))
    assert peer.next_request() == Request(CID, 0)
    # Being sent still counts: the cap is on requests not yet answered.
    assert peer.inflight == 4 and peer.queued == 3
    assert peer.receive(Request(CID, 5), T0) == Reply(Reject(CID, 5, RejectReason.TOO_MANY_IN_FLIGHT))
    peer.request_done()
    assert peer.inflight == 3
    assert peer.receive(Request(CID, 6), T0) is None
    assert [peer.next_request() for _ in range(5)] == [
        Request(CID, 1), Request(CID, 2), Request(CID, 3), Request(CID, 6), None]


def test_cancel_takes_a_queued_request_back() -> None:
    peer = opened()
    for index in range(3):
        peer.receive(Request(CID, index), T0)
    assert peer.receive(Cancel(CID, 1), T0) is None
    assert peer.inflight == 2
    assert peer.next_request() == Request(CID, 0)
    assert peer.next_request() == Request(CID, 2)
    assert peer.next_request() is None


def test_cancel_of_a_request_being_sent_or_never_made_changes_nothing() -> None:
    peer = opened()
    peer.receive(Request(CID, 0), T0)
    assert peer.next_request() == Request(CID, 0)
    peer.receive(Cancel(CID, 0), T0)  # already being sent
    peer.receive(Cancel(CID, 9), T0)  # never asked
    peer.receive(Cancel(OTHER, 0), T0)  # another content
    assert peer.inflight == 1
    peer.request_done()
    assert peer.inflight == 0


def test_a_repeated_request_is_queued_twice_and_cancelled_once_per_cancel() -> None:
    peer = opened()
    peer.receive(Request(CID, 7), T0)
    peer.receive(Request(CID, 7), T0)
    peer.receive(Cancel(CID, 7), T0)
    assert peer.queued == 1
    assert peer.next_request() == Request(CID, 7)
    assert peer.next_request() is None


@pytest.mark.parametrize(("index", "chunk_count", "reason"), [
    (3, 4, RejectReason.NOT_HELD),   # the last chunk, not held here
    (4, 4, RejectReason.BAD_INDEX),  # one past the last chunk
    (2**32 - 1, 4, RejectReason.BAD_INDEX),
    (0, 0, RejectReason.BAD_INDEX),  # content known to have no chunks at all
    (4, None, RejectReason.NOT_HELD),  # content we do not know: no chunk count to judge by
])
def test_a_request_past_the_last_chunk_is_rejected_bad_index(
        index: int, chunk_count: int | None, reason: RejectReason) -> None:
    peer = opened()
    peer.receive(Request(CID, index), T0)
    request = peer.next_request()
    assert request == Request(CID, index)
    assert peer.unavailable(request, chunk_count) == Reject(CID, index, reason)


def test_request_done_without_a_request_is_a_bug_of_the_shell() -> None:
    peer = opened()
    with pytest.raises(LocalProtocolError):
        peer.request_done()


def test_no_request_is_served_once_closed() -> None:
    peer = opened()
    peer.receive(Request(CID, 0), T0)
    peer.close()
    assert peer.next_request() is None
    assert peer.receive(Request(CID, 1), T0) is None  # still queued in the shell: ignored
    assert peer.next_deadline() is None


# -- the other messages --------------------------------------------------------------------------


def test_ping_manifest_and_bitfield_requests_are_answered() -> None:
    peer = opened()
    assert peer.receive(Ping(42), T0) == Reply(Pong(42))
    assert peer.receive(GetManifest(CID), T0) == SendManifest(CID)
    assert peer.receive(GetBitfield(CID), T0) == SendBitfield(CID)
    for msg in (Pong(1), Have(CID, 1), Bitfield(CID, 1, b"\x80"), Manifest(CID, None),
                Reject(CID, 0, RejectReason.NOT_HELD)):
        assert peer.receive(msg, T0) is None
    assert peer.inflight == 0


def test_unsolicited_data_is_a_protocol_violation() -> None:
    peer = opened()
    with pytest.raises(RemoteProtocolError, match="unsolicited Data"):
        peer.receive(Data(CID, 0, b"x"), T0)
    assert peer.state is State.CLOSED
    assert peer.next_deadline() is None


def test_haves_go_to_peers_that_asked_about_content_we_hold_up_to_the_cap() -> None:
    peer = opened()
    peer.bitfield_sent(CID, held=False)
    assert not peer.is_interested(CID)
    peer.bitfield_sent(CID, held=True)
    assert peer.is_interested(CID)
    peer.bitfield_sent(CID, held=True)  # asking again takes no second slot
    third = blake3.blake3(b"third").digest()
    peer.bitfield_sent(OTHER, held=True)
    peer.bitfield_sent(third, held=True)  # over max_interested (2)
    assert peer.is_interested(OTHER) and not peer.is_interested(third)
    peer.close()
    assert not peer.is_interested(CID)


# -- properties ----------------------------------------------------------------------------------

# One step of a connection's life: ("request", i), ("cancel", i), ("serve",), ("done",).
STEPS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.integers(0, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("serve")),
    st.tuples(st.just("done")),
), max_size=60)


@given(STEPS, st.integers(1, 6))
def test_requests_follow_a_simple_model(steps: list[tuple[object, ...]], cap: int) -> None:
    """FIFO service, Cancel removes the oldest queued copy, and the cap counts queued + sending."""
    peer = opened(ServerLimits(max_inflight_requests=cap))
    queue: list[int] = []
    sending = 0
    for step in steps:
        match step:
            case ("request", int(index)):
                reply = peer.receive(Request(CID, index), T0)
                if len(queue) + sending >= cap:
                    assert reply == Reply(Reject(CID, index, RejectReason.TOO_MANY_IN_FLIGHT))
                else:
                    assert reply is None
                    queue.append(index)
            case ("cancel", int(index)):
                assert peer.receive(Cancel(CID, index), T0) is None
                if index in queue:
                    queue.remove(index)
            case ("serve",):
                got = peer.next_request()
                if queue:
                    assert got == Request(CID, queue.pop(0))
                    sending += 1
                else:
                    assert got is None
            case ("done",):
                if sending:
                    peer.request_done()
                    sending -= 1
                else:
                    with pytest.raises(LocalProtocolError):
                        peer.request_done()
        assert peer.inflight == len(queue) + sending <= cap
        assert peer.queued == len(queue)


# Events with the time since the previous one: a message, a pause or a resume of writing.
EVENTS = st.lists(st.tuples(st.sampled_from(["message", "pause", "resume"]),
                            st.floats(0, 200, allow_nan=False)), max_size=30)


@given(st.floats(0, 20, allow_nan=False), EVENTS)
def test_the_timer_fires_exactly_at_next_deadline(handshake_after: float,
                                                  events: list[tuple[str, float]]) -> None:
    """Driven as the shell drives it (the timer at every deadline that passes before the next
    event), the peer is dropped exactly when a reference computation says, for that reason."""
    peer = ServedPeer(LIMITS, T0)
    now = T0
    # Reference: the deadline and what it is for.
    open_at: float | None = None
    last = T0
    paused_since: float | None = None

    def expected() -> tuple[float, Drop]:
        candidates = []
        if paused_since is not None:
            candidates.append((paused_since + LIMITS.send_timeout, 0,
                               Drop(STOPPED_READING, goodbye=False)))
        if open_at is None:
            candidates.append((T0 + LIMITS.handshake_timeout, 1, Drop(TIMED_OUT, goodbye=False)))
        else:
            candidates.append((last + LIMITS.idle_timeout, 1, Drop(TIMED_OUT, goodbye=True)))
        at, _, drop = min(candidates, key=lambda c: (c[0], c[1]))
        return at, drop

    def run_timers_until(t: float) -> bool:
        """Fire every deadline up to ``t``; True if the peer was dropped (checked)."""
        at, drop = expected()
        assert peer.next_deadline() == at
        if at > t:
            return False
        if at > T0:
            assert peer.handle_timer(at - 1e-6) is None  # early: nothing happens
        assert peer.handle_timer(at) == drop
        assert peer.state is State.CLOSED and peer.next_deadline() is None
        return True

    steps = [("handshake", handshake_after), *events]
    for kind, delay in steps:
        if run_timers_until(now + delay):
            return
        now += delay
        match kind:
            case "handshake":
                peer.handshake_done(now)
                open_at = last = now
            case "message":
                if open_at is None:
                    continue
                peer.receive(Ping(1), now)
                last = now
            case "pause":
                peer.write_paused(now)
                if paused_since is None:
                    paused_since = now
            case "resume":
                peer.write_resumed(now)
                paused_since = None
    run_timers_until(now + 1e9)  # left alone, every connection is dropped in the end
