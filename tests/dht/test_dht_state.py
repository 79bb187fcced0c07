"""Routing table persistence: JSON round trip with re-verification; tampered files rejected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dhtnet import config, network

from p2p.dht import DHT, StateFileError
from p2p.dht.state import load_routing_table, save_routing_table
from p2p.identity import Identity


async def test_round_trip_reverifies_every_contact(tmp_path: Path) -> None:
    path = tmp_path / "dht.json"
    me = Identity.generate()
    async with network(15) as nodes:
        boot = (("127.0.0.1", nodes[0].port),)
        async with DHT.open_ctx(me, config(state_path=path, bootstrap=boot)) as first:
            before = {c for bucket in first.routing_table() for c in bucket}
            port = first.port
        node_id, saved = load_routing_table(path)
        assert node_id == me.node_id and before <= set(saved) and len(saved) >= 10
        before = set(saved)
        # tamper: one contact gets another id, one points at a dead port
        doc = json.loads(path.read_text())
        doc["contacts"][0][0] = os.urandom(20).hex()
        doc["contacts"][1][2] = port
        path.write_text(json.dumps(doc))
        # Every contact of the network as it really is: (node id, host, port).
        genuine = {(n.node_id, "127.0.0.1", n.port) for n in nodes}
        async with DHT.open_ctx(me, config(state_path=path)) as again:
            after = {c for bucket in again.routing_table() for c in bucket}
            # Re-verification may also learn nodes the file did not list (it looks itself
            # up), but only genuine ones: a tampered file injects nothing.
            assert after <= genuine
            assert len(after & before) >= len(before) // 2  # a loaded machine may time a few out
            assert (bytes.fromhex(doc["contacts"][0][0]), *doc["contacts"][0][1:]) not in after
            assert await again.find_providers(os.urandom(32)) == []


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"format": 2, "node_id": "00", "contacts": []}',
    json.dumps({"format": 1, "node_id": "00" * 20, "contacts": [["00" * 20, "example.com", 1]]}).encode(),
    json.dumps({"format": 1, "node_id": "00" * 20, "contacts": [["00" * 20, "10.0.0.1", 0]]}).encode(),
    json.dumps({"format": 1, "node_id": "00" * 20, "contacts": [["zz" * 20, "10.0.0.1", 5]]}).encode(),
    json.dumps({"format": 1, "node_id": "00" * 20, "contacts": [], "extra": 1}).encode(),
    b"\xff\xfe",
])
async def test_tampered_file_is_rejected_cleanly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "dht.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError):
        load_routing_table(path)
    async with DHT.open_ctx(Identity.generate(), config(state_path=path)) as d:
        assert d.summary().state_load_error
        assert d.routing_table() == [[]]
    assert load_routing_table(path)[1] == []


def test_save_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dht.json"
    save_routing_table(path, b"\1" * 20, [(b"\2" * 20, "10.0.0.1", 5)])
    assert load_routing_table(path) == (b"\1" * 20, [(b"\2" * 20, "10.0.0.1", 5)])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["dht.json"]


async def test_a_restart_with_nobody_answering_keeps_the_saved_table(tmp_path: Path) -> None:
    path = tmp_path / "dht.json"
    me = Identity.generate()
    async with network(6) as nodes:
        boot = (("127.0.0.1", nodes[0].port),)
        async with DHT.open_ctx(me, config(state_path=path, bootstrap=boot)) as first:
            assert sum(len(b) for b in first.routing_table()) >= 3
    # The whole network is gone now (an outage): re-verification fails for every contact.
    _, saved = load_routing_table(path)
    async with DHT.open_ctx(me, config(state_path=path)) as again:
        assert again.summary().restored_contacts == 0
        assert sum(len(b) for b in again.routing_table()) == 0
    _, kept = load_routing_table(path)
    assert set(kept) == set(saved)
