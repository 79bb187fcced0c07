"""The token bucket alone (sans-IO): simulated time, no sockets, no clock."""

from __future__ import annotations

from p2p.wire.bandwidth import RateLimit

RATE = 1024 * 1024


def run(limit: RateLimit, parties: list[str], seconds: float, step: float = 0.001) -> dict[str, int]:
    """Each party moves one quantum whenever it is not waiting; returns bytes per party."""
    moved = dict.fromkeys(parties, 0)
    waiting: set[str] = set()
    now = 0.0
    while now < seconds:
        for party in limit.due(now):  # a woken party moves one turn (as the transport does)
            waiting.discard(party)
            limit.spend(now, limit.quantum)
            moved[party] += limit.quantum
        for party in parties:
            if party in waiting:
                continue
            if not limit.allows(now):
                limit.wait(party)
                waiting.add(party)
                continue
            limit.spend(now, limit.quantum)
            moved[party] += limit.quantum
        now += step
    return moved


def test_bytes_granted_over_time_follow_the_rate() -> None:
    limit = RateLimit(0.0, RATE)
    moved = sum(run(limit, ["a"], 10.0).values())
    expected = RATE * 10  # the bucket starts empty
    assert abs(moved - expected) <= 0.02 * expected + limit.quantum, (moved, expected)


def test_the_burst_is_one_second_whatever_the_idle_time() -> None:
    limit = RateLimit(0.0, RATE)
    assert limit.balance(3600.0) == limit.burst == RATE
    assert limit.spend(3600.0, RATE)
    assert not limit.spend(3600.0, 1)  # overdrawn: the next byte waits


def test_two_waiters_share_one_limit_fairly() -> None:
    limit = RateLimit(0.0, RATE)
    moved = run(limit, ["first", "second"], 10.0)
    assert min(moved.values()) / max(moved.values()) > 0.95, moved


def test_no_limit_never_waits_and_a_new_rate_keeps_the_debt() -> None:
    limit = RateLimit(0.0, 0)
    assert limit.spend(0.0, 10**9) and limit.allows(0.0) and limit.next_deadline(0.0) is None
    limit.set_rate(0.0, RATE)
    assert limit.spend(0.0, 2 * RATE) is False
    limit.wait("w")
    deadline = limit.next_deadline(0.0)
    assert deadline is not None and abs(deadline - 2.0) < 1e-9  # 2 MiB owed at 1 MiB/s
    assert limit.due(1.0) == [] and limit.due(2.0) == ["w"]
