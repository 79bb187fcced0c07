"""The lookup's walk, adaptive stall and memory of unreachable nodes, and the periodic schedule:
pure objects, driven with times passed in."""

from __future__ import annotations

from kademlia.node import Node

from p2p.dht.lookup import (
    MIN_RTT_SAMPLES,
    MIN_STALL,
    UNREACHABLE_FOR,
    RoundTrips,
    Unreachable,
    Walk,
)
from p2p.dht.schedule import Schedule


def test_stall_follows_round_trips_within_bounds() -> None:
    rt = RoundTrips()
    assert rt.stall(0.25) == 0.25  # nothing measured yet: the configured stall
    for _ in range(MIN_RTT_SAMPLES):
        rt.observe(0.001)  # a LAN
    assert rt.stall(0.25) == MIN_STALL
    for _ in range(100):
        rt.observe(0.030)  # a continent away
    assert 4 * 0.030 < rt.stall(0.25) < 0.25
    for _ in range(100):
        rt.observe(0.500)  # slower than the ceiling
    assert rt.stall(0.25) == 0.25


def test_unreachable_nodes_are_remembered_for_a_while_and_bounded() -> None:
    memory = Unreachable(limit=8)
    memory.note(b"a" * 20, now=100.0)
    assert memory.recent(b"a" * 20, now=100.0 + UNREACHABLE_FOR - 1)
    assert not memory.recent(b"a" * 20, now=100.0 + UNREACHABLE_FOR)
    assert not memory.recent(b"b" * 20, now=100.0)
    for i in range(100):
        memory.note(bytes([i]) * 20, now=200.0 + i)
    assert len(memory._until) <= 8
    assert memory.recent(bytes([99]) * 20, now=300.0)  # the newest are kept


def nodes_at(*distances: int) -> list[Node]:
    """Nodes at the given XOR distances from the target 0."""
    return [Node(d.to_bytes(20, "big"), "127.0.0.1", 1000 + d) for d in distances]


def test_walk_moves_on_from_a_stalled_node_and_ends_without_it() -> None:
    a, b, c, d = nodes_at(1, 2, 3, 4)
    walk = Walk(0, [a, b, c, d], ksize=2, alpha=2, stall=0.25)
    assert walk.step(now=10.0) == [a, b]  # the two closest, alpha at a time
    assert walk.next_deadline(10.0) == 10.25
    walk.answer(a.id, [], now=10.01)
    assert walk.step(10.01) == [] and not walk.finished  # b still counts: no third request
    assert walk.step(10.24) == [] and not walk.finished
    assert walk.step(10.25) == [c]  # b stalled: it no longer holds the walk or a slot
    walk.answer(c.id, [], now=10.26)
    assert walk.step(10.26) == [] and walk.finished  # a and c are the k closest that answered
    assert walk.closest() == [a, c] and d.id not in {n.id for n in walk.closest()}
    assert walk.next_deadline(10.26) is None
    walk.answer(b.id, [], now=10.9)  # a stalled node may still answer, and then counts
    assert walk.closest() == [a, b]
    assert (walk.rpcs, walk.answered, walk.failed) == (3, 3, 0)


def test_walk_follows_the_contacts_it_is_told_of_and_skips_the_unreachable() -> None:
    far, near, nearer = nodes_at(40, 8, 2)
    memory = Unreachable()
    memory.note(nearer.id, now=0.0)
    walk = Walk(0, [far], ksize=3, alpha=1, stall=1.0, unreachable=memory)
    assert walk.step(5.0) == [far]
    walk.answer(far.id, [near, nearer, far], now=5.1)
    assert walk.step(5.1) == [near]  # nearer timed out in an earlier walk: skipped
    assert walk.failed == 1
    walk.fail(near.id, now=6.5, timed_out=True)
    assert memory.recent(near.id, now=6.5 + UNREACHABLE_FOR - 1)
    assert walk.step(6.5) == [] and walk.finished and walk.closest() == [far]


def test_schedule_runs_each_job_on_its_own_period() -> None:
    schedule = Schedule(100.0, {"save": 60.0, "refresh": 90.0})
    assert schedule.next_deadline() == 160.0
    assert schedule.due(159.9) == []
    assert schedule.due(160.0) == ["save"]
    assert schedule.next_deadline() == 190.0
    assert schedule.due(400.0) == ["save", "refresh"]  # late: each runs once, not a burst
    assert schedule.next_deadline() == 460.0
