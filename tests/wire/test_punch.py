"""The hole punch coordinator as a pure object, driven by a fake clock: two of them joined
by an in-memory relay with a chosen one-way delay; and the punch messages' codec."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.testing import FakeClock
from p2p.wire.errors import LocalProtocolError, RemoteProtocolError
from p2p.wire.messages import (
    FRAME_HEADER,
    MAX_PUNCH_ADDRS,
    HolePunchConnect,
    HolePunchSync,
    Ping,
    decode,
    encode,
)
from p2p.wire.punch import (
    DEFAULT_CONFIG,
    MAX_ATTEMPTS,
    MAX_CANDIDATES,
    Action,
    Coordinator,
    Dial,
    PunchConfig,
    Role,
    Send,
)

A_PUBLIC = ("203.0.113.1", 7473)
B_PUBLIC = ("203.0.113.2", 7473)
A_LAN = ("10.0.1.2", 7473)
B_LAN = ("10.0.2.2", 7473)


def dialler(**kw: object) -> Coordinator:
    kw.setdefault("own_addrs", [A_PUBLIC, A_LAN])
    kw.setdefault("peer_observed", [B_PUBLIC])
    return Coordinator(Role.DIALLER, **kw)  # type: ignore[arg-type]


def target(**kw: object) -> Coordinator:
    kw.setdefault("own_addrs", [B_PUBLIC, B_LAN])
    kw.setdefault("peer_observed", [A_PUBLIC])
    return Coordinator(Role.TARGET, **kw)  # type: ignore[arg-type]


def sends(actions: list[Action]) -> list[object]:
    return [a.message for a in actions if isinstance(a, Send)]


def dials(actions: list[Action]) -> list[Dial]:
    return [a for a in actions if isinstance(a, Dial)]


@dataclass
class Relay:
    """Two coordinators joined by a relay with ``delay`` seconds one way, on one fake clock.

    ``outcome(side, address, time)`` says how a dial made at ``time`` ends: None leaves it
    pending until its timeout, else the error text ("refused") or "open". Every dial made is
    recorded as (time, side name, address).
    """

    a: Coordinator
    b: Coordinator
    delay: float = 0.05
    outcome: Callable[[str, tuple[str, int], float], str | None] = lambda side, addr, t: "refused"
    clock: FakeClock = field(default_factory=FakeClock)
    dialled: list[tuple[float, str, tuple[str, int]]] = field(default_factory=list)
    _queue: list[tuple[float, int, Callable[[], list[Action]], str]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def name(self, coord: Coordinator) -> str:
        return "a" if coord is self.a else "b"

    def other(self, coord: Coordinator) -> Coordinator:
        return self.b if coord is self.a else self.a

    def at(self, when: float, side: Coordinator, call: Callable[[], list[Action]]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), call, self.name(side)))

    def carry_out(self, side: Coordinator, actions: list[Action]) -> None:
        now = self.clock.now
        for action in actions:
            match action:
                case Send(message=message):
                    peer = self.other(side)
                    self.at(now + self.delay, peer,
                            lambda peer=peer, m=message: peer.receive(m, self.clock.now))
                case Dial(address=address, timeout=timeout):
                    self.dialled.append((now, self.name(side), address))
                    result = self.outcome(self.name(side), address, now)
                    if result is None:
                        self.at(now + timeout, side, lambda s=side, a=address: s.dial_failed(
                            a, "timed out", self.clock.now))
                    elif result == "open":
                        self.at(now + 0.001, side, lambda s=side, a=address: self._opened(s, a))
                    else:
                        self.at(now + 0.001, side, lambda s=side, a=address, e=result:
                                s.dial_failed(a, e, self.clock.now))

    def _opened(self, side: Coordinator, address: tuple[str, int]) -> list[Action]:
        actions = side.dial_succeeded(address, self.clock.now)
        side.connected()
        self.other(side).connected()
        return actions

    def run(self, until: float = 120.0) -> None:
        """Start both and run every event and timer in time order until both are done."""
        self.carry_out(self.a, self.a.start(self.clock.now))
        self.carry_out(self.b, self.b.start(self.clock.now))
        end = self.clock.now + until
        while not (self.a.done and self.b.done):
            times = [t for t in (self.a.next_deadline(), self.b.next_deadline()) if t is not None]
            if self._queue:
                times.append(self._queue[0][0])
            assert times, "stuck: nothing scheduled and not done"
            when = min(times)
            assert when <= end, "ran past the time limit"
            self.clock.advance(max(0.0, when - self.clock.now))
            if self._queue and self._queue[0][0] <= self.clock.now:
                _when, _seq, call, name = heapq.heappop(self._queue)
                self.carry_out(self.a if name == "a" else self.b, call())
            for side in (self.a, self.b):
                deadline = side.next_deadline()
                if deadline is not None and deadline <= self.clock.now:
                    self.carry_out(side, side.handle_timer(self.clock.now))


# -- the timing ------------------------------------------------------------------------------


def test_both_sides_dial_at_the_same_moment_half_a_round_trip_after_sync() -> None:
    relay = Relay(dialler(), target(), delay=0.08, outcome=lambda side, addr, t: None)
    relay.run()
    first: dict[str, float] = {}
    for when, side, _addr in relay.dialled:
        first.setdefault(side, when)
    start = 1000.0
    # Connect out (t=0), answered (2 d: the round trip), Sync out; it arrives a delay later,
    # when the dialler dials; the target waited half the round trip: the same moment.
    assert relay.b.rtt == pytest.approx(0.16)
    assert first["a"] == pytest.approx(start + 3 * 0.08)
    assert first["b"] == pytest.approx(first["a"])


def test_the_exchange_is_connect_connect_sync() -> None:
    a, b = dialler(), target()
    clock = FakeClock()
    out = b.start(clock.now)
    assert sends(out) == [HolePunchConnect(1, (B_PUBLIC, B_LAN), False)]
    assert a.start(clock.now) == []
    answer = a.receive(out[0].message, clock.advance(0.1))  # type: ignore[union-attr]
    assert sends(answer) == [HolePunchConnect(1, (A_PUBLIC, A_LAN), False)]
    assert dials(answer) == []
    sync = b.receive(answer[0].message, clock.advance(0.1))  # type: ignore[union-attr]
    assert sends(sync) == [HolePunchSync(1)]
    assert b.next_deadline() == pytest.approx(clock.now + 0.1)  # half of the 0.2 s round trip
    assert b.handle_timer(clock.advance(0.05)) == []
    go = b.handle_timer(clock.advance(b.next_deadline() - clock.now))  # type: ignore[operator]
    assert dials(go) == [Dial(A_PUBLIC, 1.0), Dial(A_LAN, 1.0)]  # observed first
    assert dials(a.receive(HolePunchSync(1), clock.now)) == [Dial(B_PUBLIC, 1.0), Dial(B_LAN, 1.0)]


def test_a_refused_dial_is_retried_every_200_ms_and_never_faster() -> None:
    a = dialler(peer_observed=[B_PUBLIC], own_addrs=[A_PUBLIC])
    clock = FakeClock()
    a.start(clock.now)
    a.receive(HolePunchConnect(1, (), False), clock.now)
    first = dials(a.receive(HolePunchSync(1), clock.now))
    assert first == [Dial(B_PUBLIC, 1.0)]
    # Refused at once: the next attempt waits until 200 ms after the first began.
    assert a.dial_failed(B_PUBLIC, "refused", clock.advance(0.01)) == []
    assert a.next_deadline() == pytest.approx(clock.now - 0.01 + 0.2)
    assert a.handle_timer(clock.advance(0.18)) == []
    due = a.next_deadline()
    assert due is not None
    assert dials(a.handle_timer(clock.advance(due - clock.now))) == [Dial(B_PUBLIC, 1.0)]
    # A dial still in flight is not doubled, however late it is.
    assert a.handle_timer(clock.advance(0.5)) == []
    # One that timed out after its second is retried at once.
    assert dials(a.dial_failed(B_PUBLIC, "timed out", clock.now)) == [Dial(B_PUBLIC, 1.0)]


def test_a_round_dials_at_most_25_times_per_address_and_then_the_next_round_starts() -> None:
    relay = Relay(
        Coordinator(Role.DIALLER, own_addrs=[A_PUBLIC], peer_observed=[B_PUBLIC],
                    config=PunchConfig(rounds=1)),
        Coordinator(Role.TARGET, own_addrs=[B_PUBLIC], peer_observed=[A_PUBLIC],
                    config=PunchConfig(rounds=1)), delay=0.01)
    relay.run()
    per_side = {side: sum(1 for _t, s, _a in relay.dialled if s == side) for side in "ab"}
    assert per_side == {"a": 25, "b": 25}  # 5 s / 200 ms, each refused at once
    assert relay.a.failure is not None and relay.b.failure is not None
    assert "no direct connection after 1 round of 5 s" in relay.b.failure
    assert "203.0.113.1:7473 refused (25 attempts)" in relay.b.failure


def test_three_rounds_then_a_clear_failure_well_within_the_bound() -> None:
    relay = Relay(dialler(), target(), delay=0.05, outcome=lambda side, addr, t: None)
    start = relay.clock.now
    relay.run()
    assert relay.a.round == relay.b.round == 3
    for side in (relay.a, relay.b):
        assert side.failure is not None
        assert side.failure.startswith("no direct connection after 3 rounds of 5 s: ")
        assert "timed out" in side.failure
    assert relay.clock.now - start < DEFAULT_CONFIG.bound()
    assert relay.clock.now - start < 3 * (5 + 0.2) + 1  # three windows and their signals
    assert relay.b.peer_claimed == (A_PUBLIC, A_LAN)  # the dialler's claims, every round


def test_the_punch_succeeds_in_a_later_round() -> None:
    # The NATs open only from the third second of the second round (say a slow router).
    def outcome(side: str, addr: tuple[str, int], t: float) -> str | None:
        return "open" if t > 1000 + 5 + 2 and addr in (A_PUBLIC, B_PUBLIC) else None

    relay = Relay(dialler(), target(), outcome=outcome)
    relay.run()
    assert relay.a.done and relay.a.failure is None and relay.b.failure is None
    assert relay.b.round == 2
    assert relay.a.handle_timer(relay.clock.advance(60)) == []  # done: nothing more, ever


# -- reversal ---------------------------------------------------------------------------------


def test_reversal_the_natted_side_dials_at_once_the_public_side_only_accepts() -> None:
    a = dialler()
    b = target(public=True)
    clock = FakeClock()
    connect = sends(b.start(clock.now))[0]
    assert connect == HolePunchConnect(1, (B_PUBLIC, B_LAN), True)
    a.start(clock.now)
    out = a.receive(connect, clock.advance(0.1))  # type: ignore[arg-type]
    assert sends(out) == [HolePunchConnect(1, (A_PUBLIC, A_LAN), False)]
    assert dials(out) == [Dial(B_PUBLIC, 1.0), Dial(B_LAN, 1.0)]  # no Sync, no timing
    back = b.receive(sends(out)[0], clock.advance(0.1))  # type: ignore[arg-type]
    assert back == []  # no Sync, and the public side does not dial
    assert b.dialling and b.claims(("203.0.113.1", 40000))


def test_reversal_the_other_way_round() -> None:
    a = dialler(public=True)
    b = target()
    clock = FakeClock()
    a.start(clock.now)
    out = a.receive(sends(b.start(clock.now))[0], clock.advance(0.1))  # type: ignore[arg-type]
    assert dials(out) == [] and a.dialling
    back = b.receive(sends(out)[0], clock.advance(0.1))  # type: ignore[arg-type]
    assert sends(back) == [] and dials(back) == [Dial(A_PUBLIC, 1.0), Dial(A_LAN, 1.0)]


def test_a_public_side_that_nobody_reaches_says_so() -> None:
    relay = Relay(dialler(public=True, config=PunchConfig(rounds=1)),
                  target(config=PunchConfig(rounds=1)), outcome=lambda side, addr, t: None)
    relay.run()
    assert relay.a.failure is not None and "the peer did not reach us" in relay.a.failure
    assert all(side == "b" for _t, side, _a in relay.dialled)


# -- what a hostile peer can make us do -------------------------------------------------------


def test_candidates_are_bounded_observed_first_and_only_dialable_literals() -> None:
    a = dialler(peer_observed=[B_PUBLIC])
    clock = FakeClock()
    a.start(clock.now)
    claimed = tuple((f"198.51.100.{i}", 7473) for i in range(MAX_PUNCH_ADDRS - 3))
    junk = (("0.0.0.0", 7473), ("224.0.0.1", 7473), B_PUBLIC)
    a.receive(HolePunchConnect(1, junk + claimed, False), clock.now)
    out = dials(a.receive(HolePunchSync(1), clock.now))
    assert [d.address for d in out] == [B_PUBLIC, *claimed[:MAX_CANDIDATES - 1]]
    assert len(a.candidates()) == MAX_CANDIDATES


def test_a_later_round_cannot_bring_new_hosts_once_the_candidates_are_full() -> None:
    a = dialler(peer_observed=[B_PUBLIC])
    clock = FakeClock()
    a.start(clock.now)
    first = tuple((f"198.51.100.{i}", 7473) for i in range(3))
    a.receive(HolePunchConnect(1, first, False), clock.now)
    a.receive(HolePunchSync(1), clock.now)
    a.handle_timer(clock.advance(5))  # the window ends: round 2 next
    later = tuple((f"192.0.2.{i}", 7473) for i in range(3))
    a.receive(HolePunchConnect(2, later, False), clock.now)
    out = dials(a.receive(HolePunchSync(2), clock.advance(0.5)))
    assert [d.address for d in out] == [B_PUBLIC, *first]


def test_inbound_connections_are_claimed_only_from_the_peers_ips_while_it_runs() -> None:
    a = dialler(peer_observed=[B_PUBLIC])
    clock = FakeClock()
    a.start(clock.now)
    assert a.claims(("203.0.113.2", 51515))  # another port: a NAT may rewrite it
    assert not a.claims(("198.51.100.7", 7473))
    a.receive(HolePunchConnect(1, (("198.51.100.7", 7473),), False), clock.now)
    assert a.claims(("198.51.100.7", 1))
    a.connected()
    assert not a.claims(("203.0.113.2", 7473))


def test_attempts_are_capped_for_the_whole_punch() -> None:
    cfg = PunchConfig(rounds=3, max_attempts=30)
    relay = Relay(Coordinator(Role.DIALLER, peer_observed=[B_PUBLIC], config=cfg,
                              own_addrs=[A_PUBLIC]),
                  Coordinator(Role.TARGET, peer_observed=[A_PUBLIC], config=cfg,
                              own_addrs=[B_PUBLIC]))
    relay.run()
    assert sum(1 for _t, s, _a in relay.dialled if s == "a") == 30
    assert relay.a.attempts == 30
    assert relay.a.failure is not None and "attempt limit 30 reached" in relay.a.failure
    assert DEFAULT_CONFIG.max_attempts == MAX_ATTEMPTS


@pytest.mark.parametrize(("role", "messages", "why"), [
    (Role.DIALLER, [HolePunchSync(1)], "unexpected Sync for round 1"),
    (Role.DIALLER, [HolePunchConnect(2, (), False)], "Connect for round 2 in round 0"),
    (Role.DIALLER, [HolePunchConnect(1, (), False), HolePunchConnect(1, (), False)],
     "Connect for round 1 in round 1"),
    (Role.DIALLER, [HolePunchConnect(1, (), False), HolePunchSync(2)], "unexpected Sync for round 2"),
    (Role.TARGET, [HolePunchSync(1)], "a Sync sent to the target"),
    (Role.TARGET, [HolePunchConnect(2, (), False)], "unexpected Connect for round 2"),
    (Role.TARGET, [HolePunchConnect(1, (), False), HolePunchConnect(1, (), False)],
     "unexpected Connect for round 1"),
])
def test_a_message_out_of_turn_fails_the_punch(role: Role, messages: list[HolePunchConnect],
                                               why: str) -> None:
    coord = Coordinator(role, peer_observed=[B_PUBLIC])
    clock = FakeClock()
    coord.start(clock.now)
    for message in messages:
        coord.receive(message, clock.advance(0.01))
    assert coord.done and coord.failure == f"the peer broke the punch protocol: {why}"
    assert coord.receive(HolePunchSync(1), clock.now) == []


def test_a_dialler_refuses_more_rounds_than_it_allows() -> None:
    coord = Coordinator(Role.DIALLER, config=PunchConfig(rounds=1))
    clock = FakeClock()
    coord.start(clock.now)
    coord.receive(HolePunchConnect(1, (), False), clock.now)
    coord.receive(HolePunchSync(1), clock.now)
    coord.handle_timer(clock.advance(5))
    assert coord.failure is not None and coord.failure.startswith("no direct connection after 1 round")


@pytest.mark.parametrize("role", [Role.DIALLER, Role.TARGET])
def test_silence_from_the_peer_fails_after_the_signal_timeout(role: Role) -> None:
    coord = Coordinator(role)
    clock = FakeClock()
    coord.start(clock.now)
    assert coord.next_deadline() == pytest.approx(clock.now + 10)
    assert coord.handle_timer(clock.advance(9.99)) == [] and not coord.done
    coord.handle_timer(clock.advance(0.01))
    assert coord.failure == "the peer sent no Connect within 10 s (round 1)"


def test_no_sync_after_connect_fails_too() -> None:
    coord = Coordinator(Role.DIALLER)
    clock = FakeClock()
    coord.start(clock.now)
    coord.receive(HolePunchConnect(1, (), False), clock.now)
    coord.handle_timer(clock.advance(10))
    assert coord.failure == "the peer sent no Sync within 10 s (round 1)"


def test_misuse_is_our_bug() -> None:
    coord = Coordinator(Role.TARGET)
    coord.start(0.0)
    with pytest.raises(LocalProtocolError):
        coord.start(0.0)
    with pytest.raises(LocalProtocolError):
        coord.receive(Ping(1), 0.0)
    with pytest.raises(LocalProtocolError):
        PunchConfig(rounds=0)
    with pytest.raises(LocalProtocolError):
        PunchConfig(dial_window=0)


def test_names_in_our_own_addresses_are_never_sent() -> None:
    coord = Coordinator(Role.TARGET, own_addrs=[("example.com", 1), ("::ffff:192.0.2.1", 5), A_PUBLIC])
    assert sends(coord.start(0.0)) == [HolePunchConnect(1, (("192.0.2.1", 5), A_PUBLIC), False)]


# -- the messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [
    HolePunchConnect(1, (), False),
    HolePunchConnect(3, (("203.0.113.1", 7473), ("2001:db8::1", 1)), True),
    HolePunchConnect(255, tuple((f"192.0.2.{i}", 1000 + i) for i in range(MAX_PUNCH_ADDRS)), False),
    HolePunchSync(1),
    HolePunchSync(255),
])
def test_punch_messages_round_trip(msg: HolePunchConnect | HolePunchSync) -> None:
    assert decode(encode(msg)[FRAME_HEADER:]) == msg


@pytest.mark.parametrize("msg", [
    HolePunchConnect(0, (), False),
    HolePunchConnect(256, (), False),
    HolePunchConnect(1, (("example.com", 1),), False),
    HolePunchConnect(1, (("[::1]", 1),), False),
    HolePunchConnect(1, (("2001:DB8::1", 1),), False),  # not the one printed form
    HolePunchConnect(1, (("192.0.2.1", 0),), False),
    HolePunchConnect(1, tuple(("192.0.2.1", 1 + i) for i in range(MAX_PUNCH_ADDRS + 1)), False),
    HolePunchConnect(1, (), 1),  # type: ignore[arg-type]
    HolePunchSync(0),
])
def test_punch_messages_beyond_the_limits_are_not_encoded(msg: HolePunchConnect | HolePunchSync) -> None:
    with pytest.raises(LocalProtocolError):
        encode(msg)


def _body(kind: int, fields: object) -> bytes:
    from p2p import encoding
    return bytes([kind]) + encoding.pack(fields)


@pytest.mark.parametrize("fields", [
    [1, [["example.com", 1]], False],
    [1, [["::FFFF:192.0.2.1", 1]], False],
    [1, [["192.0.2.1", 0]], False],
    [1, [["192.0.2.1", 1]] * (MAX_PUNCH_ADDRS + 1), False],
    [1, [], 0],
    [0, [], False],
    [1, []],
])
def test_a_malformed_connect_is_the_peers_fault(fields: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(_body(20, fields))


def test_a_malformed_sync_is_the_peers_fault() -> None:
    for fields in ([0], [256], [], [True]):
        with pytest.raises(RemoteProtocolError):
            decode(_body(21, fields))


# -- a served relayed session hands punch messages on -------------------------------------------


def test_a_server_hands_punch_messages_on_and_charges_them_as_chatter() -> None:
    from p2p.wire.serving import Drop, PunchSignal, ServedPeer, ServerLimits

    limits = ServerLimits(noop_burst=3, noop_rate=0.001)
    peer = ServedPeer(limits, 1000.0)
    peer.handshake_done(1000.0)
    connect = HolePunchConnect(1, (A_PUBLIC,), False)
    assert peer.receive(connect, 1000.0) == PunchSignal(connect)
    assert peer.receive(HolePunchSync(1), 1000.0) == PunchSignal(HolePunchSync(1))
    assert peer.receive(HolePunchSync(1), 1000.0) == PunchSignal(HolePunchSync(1))
    assert isinstance(peer.receive(HolePunchSync(1), 1000.0), Drop)  # a flood is a flood


# -- whatever a hostile peer sends ---------------------------------------------------------------

_pool = st.sampled_from([B_PUBLIC, B_LAN, ("198.51.100.1", 80), ("198.51.100.2", 443),
                         ("198.51.100.3", 22), ("0.0.0.0", 1), ("2001:db8::1", 7473)])
_peer_messages = st.one_of(
    st.builds(HolePunchConnect, st.integers(1, 5),
              st.lists(_pool, max_size=MAX_PUNCH_ADDRS).map(tuple), st.booleans()),
    st.builds(HolePunchSync, st.integers(1, 5)))
_steps = st.lists(st.one_of(
    st.tuples(st.just("message"), _peer_messages),
    st.tuples(st.just("wait"), st.floats(0, 12)),
    st.tuples(st.just("fail"), st.sampled_from(["refused", "timed out"])),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Role.DIALLER, Role.TARGET]), st.booleans(), _steps)
def test_no_peer_can_make_a_punch_dial_more_or_last_longer_than_its_limits(
        role: Role, public: bool, steps: list[tuple[str, object]]) -> None:
    config = DEFAULT_CONFIG
    coord = Coordinator(role, own_addrs=[A_PUBLIC], public=public, peer_observed=[B_PUBLIC])
    clock = FakeClock()
    start = clock.now
    last: dict[tuple[str, int], float] = {}
    in_flight: list[tuple[str, int]] = []
    done_at: list[float] = []

    def check(actions: list[Action]) -> None:
        if coord.done and not done_at:
            done_at.append(clock.now)
        for dial in dials(actions):
            assert dial.address in coord.candidates()
            assert dial.timeout <= config.attempt_timeout
            if dial.address in last:
                assert clock.now - last[dial.address] >= config.retry_interval - 1e-9
            last[dial.address] = clock.now
            in_flight.append(dial.address)
        assert coord.attempts <= config.max_attempts
        assert len(coord.candidates()) <= config.max_candidates
        assert len(set(last)) <= config.max_candidates  # over the whole punch

    def run_timers(until: float) -> None:
        while (due := coord.next_deadline()) is not None and due <= until:
            clock.advance(max(0.0, due - clock.now))
            check(coord.handle_timer(clock.now))
        clock.advance(max(0.0, until - clock.now))
        check(coord.handle_timer(clock.now))

    check(coord.start(clock.now))
    for kind, value in steps:
        if kind == "message":
            check(coord.receive(value, clock.now))  # type: ignore[arg-type]
        elif kind == "wait":
            run_timers(clock.now + float(value))  # type: ignore[arg-type]
        elif in_flight:
            check(coord.dial_failed(in_flight.pop(0), str(value), clock.now))
    # Whatever came before, silence from here on ends it within the bound.
    run_timers(start + config.bound())
    assert coord.done and coord.failure is not None
    assert done_at[0] <= start + config.bound()
    assert coord.round <= config.rounds


def test_the_relayed_session_ending_mid_round_lets_the_round_finish() -> None:
    # The peer gave up a moment before us and closed the relayed session: our dials need it
    # no more, so the window runs out before the punch fails (a late SYN may still cross).
    a = dialler(own_addrs=[A_PUBLIC], config=PunchConfig(rounds=3))
    clock = FakeClock()
    a.start(clock.now)
    a.receive(HolePunchConnect(1, (), False), clock.now)
    assert dials(a.receive(HolePunchSync(1), clock.now)) == [Dial(B_PUBLIC, 1.0)]
    a.signal_lost("the relayed session ended: connection closed")
    assert not a.done
    a.dial_failed(B_PUBLIC, "refused", clock.advance(0.01))
    assert dials(a.handle_timer(clock.advance(0.19))) == [Dial(B_PUBLIC, 1.0)]
    a.handle_timer(clock.advance(4.8))
    assert a.failure is not None
    assert a.failure.startswith("the relayed session ended: connection closed (after round 1: ")
    assert a.round == 1  # no second round without the session


def test_the_relayed_session_ending_while_waiting_fails_at_once() -> None:
    coord = Coordinator(Role.TARGET)
    coord.start(0.0)
    coord.signal_lost("the relayed session ended: gone")
    assert coord.failure == "the relayed session ended: gone"
