"""The lookup's adaptive stall and its memory of unreachable nodes (pure objects)."""

from __future__ import annotations

from p2p.dht.lookup import MIN_RTT_SAMPLES, MIN_STALL, UNREACHABLE_FOR, RoundTrips, Unreachable


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
