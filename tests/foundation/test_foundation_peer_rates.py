"""The node's per-peer rates: byte deltas between samples, connections to one peer added up."""

from __future__ import annotations

from p2p import PeerId, PeerInfo
from p2p.node import _merge_connections, _PeerRates

A = PeerId(bytes([1]) * 32)
B = PeerId(bytes([2]) * 32)


def test_rates_are_byte_deltas_over_the_sample_interval() -> None:
    rates = _PeerRates()
    rates.sample(10.0, [PeerInfo(A, ("10.0.0.1", 1), "out", 1000, 100)])
    first = rates.apply([PeerInfo(A, ("10.0.0.1", 1), "out", 1000, 100)])
    assert first[0].rate_in == 0.0  # one sample: nothing to compare with yet
    rates.sample(12.0, [PeerInfo(A, ("10.0.0.1", 1), "out", 5000, 300)])
    [row] = rates.apply([PeerInfo(A, ("10.0.0.1", 1), "out", 5200, 300)])
    assert (row.rate_in, row.rate_out) == (2000.0, 100.0)
    assert row.bytes_in == 5200  # counts are live, rates are from the last sample
    rates.sample(13.0, [])  # the peer left: its rate is forgotten
    rates.sample(14.0, [PeerInfo(A, ("10.0.0.1", 1), "out", 0, 0)])
    assert rates.apply([PeerInfo(A, ("10.0.0.1", 1), "out", 0, 0)])[0].rate_in == 0.0


def test_a_reconnect_with_smaller_counts_never_gives_a_negative_rate() -> None:
    rates = _PeerRates()
    rates.sample(1.0, [PeerInfo(A, ("10.0.0.1", 1), "in", 9000, 9000)])
    rates.sample(2.0, [PeerInfo(A, ("10.0.0.1", 1), "in", 10, 10)])
    [row] = rates.apply([PeerInfo(A, ("10.0.0.1", 1), "in", 10, 10)])
    assert row.rate_in == 0.0 and row.rate_out == 0.0


def test_connections_to_one_peer_and_direction_are_one_row() -> None:
    rows = _merge_connections([
        PeerInfo(A, ("10.0.0.1", 1), "out", 100, 10, strikes=1),
        PeerInfo(A, ("10.0.0.1", 2), "out", 50, 5, strikes=3),
        PeerInfo(A, ("10.0.0.1", 3), "in", 7, 7),
        PeerInfo(B, ("10.0.0.2", 1), "out", 1, 1),
    ])
    by_key = {(r.peer, r.direction): r for r in rows}
    assert len(rows) == 3
    assert (by_key[(A, "out")].bytes_in, by_key[(A, "out")].strikes) == (150, 3)
    assert by_key[(A, "in")].bytes_in == 7


def test_an_inbound_hello_cannot_steer_our_dialling() -> None:
    """Only the host a connection came from is dialled, at most a couple of its ports;
    third-party addresses and host names in a Hello are ignored."""
    from p2p.node import MAX_HELLO_DIALS, hello_dial_targets

    seen = ("198.51.100.7", 40123)
    claimed = [("203.0.113.1", 7473), ("victim.example.org", 80), ("198.51.100.7", 7473),
               ("::ffff:198.51.100.7", 7473), ("198.51.100.7", 7474), ("198.51.100.7", 7475),
               *[(f"203.0.113.{i}", 7473) for i in range(2, 16)]]
    assert hello_dial_targets(seen, claimed) == [("198.51.100.7", 7473), ("198.51.100.7", 7474)]
    assert MAX_HELLO_DIALS == 2
    assert hello_dial_targets(("::1", 5), [("::1", 7473), ("127.0.0.1", 7473)]) == [("::1", 7473)]
    assert hello_dial_targets(seen, []) == []
