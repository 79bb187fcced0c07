"""The control socket's snapshot (what an attached terminal app reads every second) keeps
each peer's path: a pure round trip of encode_snapshot and decode_snapshot."""

from __future__ import annotations

from p2p.attach import NodeState, decode_snapshot, encode_snapshot
from p2p.identity import PeerId
from p2p.results import DHTSummary, PeerInfo

A, B, C, RELAY = (PeerId(bytes([i]) * 32) for i in (1, 2, 3, 9))


def test_a_snapshot_keeps_how_each_peer_is_reached() -> None:
    peers = [PeerInfo(A, ("203.0.113.5", 7473), "out", 10, 20),
             PeerInfo(B, ("198.51.100.7", 7473), "in", 1, 2, punched=True),
             PeerInfo(C, ("203.0.113.10", 7473), "out", 3, 4, via=RELAY),
             PeerInfo(A, ("10.0.0.5", 7473), "in", 5, 6, lan=True)]
    state = NodeState(A, ("0.0.0.0:7473",), [], [], peers, [],
                      DHTSummary("00" * 32, (), (), None, ()), set(), {})
    back = decode_snapshot(encode_snapshot(state))
    assert [(p.peer, p.path, p.via, p.lan) for p in back.peers] == [
        (A, "direct", None, False), (B, "punched", None, False), (C, "relayed", RELAY, False),
        (A, "direct", None, True)]
