"""One regression test per critical/high row (1-10) of research/kademlia-lib.md.

Each scenario breaks the stock kademlia 2.2.3 / rpcudp 5.0.1; here it must not.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import time
from pathlib import Path
from typing import Any

import pytest
from dhtnet import (
    RawPeer,
    config,
    network,
    parse_request,
    raw_peer,
    record_loop_errors,
    request,
    response,
)
from kademlia.node import Node

from p2p.dht import DHT, IdentityMismatch, StateFileError
from p2p.dht.protocol import IDENTIFY_TAG, MAX_DATAGRAM, MAX_FAILURES
from p2p.dht.records import discovery_key, sign_channel, sign_provider
from p2p.dht.routing import ExactRoutingTable
from p2p.dht.state import load_routing_table
from p2p.dht.store import PutStatus
from p2p.encoding import pack
from p2p.identity import Identity


class Liar(RawPeer):
    """A node with a real key that answers identify honestly and find_node/get with poison."""

    def __init__(self, contacts: list[Any]) -> None:
        super().__init__()
        self.identity = Identity.generate()
        self.contacts = contacts

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg_id, name, args = parse_request(data)
        if name == "identify":
            observed = [addr[0], addr[1]]
            sig = self.identity.sign(IDENTIFY_TAG + args[1] + self.identity.node_id + args[0]
                                     + pack(observed))
            self.send(response(msg_id, [self.identity.public_key, sig, *observed]), addr)
        elif name == "find_node":
            self.send(response(msg_id, self.tokened(args, 3, self.contacts)), addr)
        elif name == "get":
            self.send(response(msg_id, self.tokened(args, 4, [[], self.contacts])), addr)
        elif name == "ping":
            self.send(response(msg_id, self.identity.node_id), addr)

    @staticmethod
    def tokened(args: list[Any], tokened_arity: int, reply: Any) -> Any:
        """A request with the token argument is answered ``[reply, token, complete]``."""
        return [reply, b"", True] if len(args) == tokened_arity else reply


@pytest.mark.parametrize("bad", [
    [b"\x01" * 20, "127.0.0.1", 70000],
    [b"\x01" * 20, "127.0.0.1", None],
    [b"\x01" * 20, "127.0.0.1", "80"],
    [b"\x01" * 20, "localhost", 80],
    [b"\x01" * 20, "0.0.0.0", 80],
    [b"\x01", "127.0.0.1", 80],
    [b"\x01" * 20, "127.0.0.1"],
    "garbage",
])
async def test_row1_poisoned_contacts_leave_the_transport_open(bad: Any) -> None:
    errors: list[dict[str, Any]] = []
    record_loop_errors(errors)
    async with network(4) as nodes, raw_peer(Liar, contacts=[bad]) as liar:
        victim = nodes[1]
        assert await victim.bootstrap([liar.addr]) == 1  # lookups now go through the liar
        async with asyncio.timeout(5):
            await victim.find_providers(os.urandom(32))
        assert not victim.protocol.transport.is_closing()
        assert victim.summary().rejected.get("invalid_contact", 0) >= 1
        # still serving: an honest node's lookup through the victim works
        assert await nodes[2].announce(os.urandom(32)) >= 1
    assert errors == []


async def test_row2_short_node_ids_do_not_break_find_neighbors() -> None:
    me = Node(b"\x80" * 20)
    table = ExactRoutingTable(None, 20, me, None)  # type: ignore[arg-type]
    table.buckets[0].add_node(Node(b"\0" * 20, "127.0.0.1", 1))
    table.buckets[0].add_node(Node(b"\0", "127.0.0.1", 2))  # long_id 0 too: stock heap compares Nodes
    assert len(table.find_neighbors(Node(b"\x01" * 20))) == 2
    async with network(3) as nodes, raw_peer() as raw:
        for nodeid in (b"\0", b"\0" * 21, b""):
            raw.send(request("ping", [nodeid]), ("127.0.0.1", nodes[0].port))
        raw.send(request("find_node", [b"\0" * 20, b"\2" * 20]), ("127.0.0.1", nodes[0].port))
        async with asyncio.timeout(5):
            data, _ = await raw.received.get()  # only the valid request is answered
        assert len(nodes[0].routing_table()[0]) >= 1
        assert nodes[0].summary().rejected["bad_arguments"] == 3
        assert len(await nodes[1].protocol.call_find_node(Node(nodes[0].node_id, "127.0.0.1", nodes[0].port), Node(os.urandom(20)))) >= 1
        assert data[0] == 0x11


async def test_row3_unauthenticated_and_oversize_stores_do_nothing() -> None:
    import umsgpack  # the library's own encoding, as a stock peer would send it

    async with network(2) as nodes, raw_peer() as raw:
        target = ("127.0.0.1", nodes[0].port)
        key = os.urandom(20)
        raw.send(b"\x00" + os.urandom(20) + umsgpack.packb(["store", [os.urandom(20), key, b"v"]]), target)
        raw.send(request("store", [os.urandom(20), key, b"v"]), target)
        raw.send(request("put", [os.urandom(20), key, b"\x01" * 300]), target)
        raw.send(b"\x10" + os.urandom(20) + b"\x00" * 65_000, target)
        async with asyncio.timeout(5):
            data, _ = await raw.received.get()
        assert data[21:] == pack(int(PutStatus.INVALID))  # the only answer
        stats = nodes[0].summary().to_json()
        assert stats["records"] == {"provider": 0, "peer": 0, "channel": 0}
        assert stats["rejected"]["unknown_type"] == 1
        assert stats["rejected"]["unknown_rpc"] == 1
        assert stats["rejected"]["too_large"] == 1
        assert stats["rejected"]["invalid_record"] == 1


async def test_row4_reads_take_the_highest_valid_sequence_not_a_majority() -> None:
    async with network(10) as nodes:
        publisher = Identity.generate()
        cid1, cid2 = os.urandom(32), os.urandom(32)
        await nodes[1].put_channel(publisher, "n", cid1, seq=1)
        # one holder only gets seq 2: a majority vote would return seq 1
        signed = sign_channel(publisher, "n", cid2, 2, time.time())
        holder = nodes[1].protocol.router.find_neighbors(Node(signed.key))[0]
        assert await nodes[1].protocol.call_put(holder, signed.key, signed.raw) == PutStatus.OK
        got = await nodes[5].get_channel(publisher.peer_id, "n")
        assert (got.seq, got.content_id) == (2, cid2)


async def test_row5_ids_are_bound_to_keys_and_proven_before_entering_the_table() -> None:
    async with network(3) as nodes, raw_peer() as raw:
        victim = nodes[0]
        fake_ids = [os.urandom(20) for _ in range(20)]
        for fid in fake_ids:  # a stock node would add all 20 from one socket, no round trip
            raw.send(request("ping", [fid]), ("127.0.0.1", victim.port))
        # the victim sends an identify challenge per claim; nobody at raw answers them
        async with asyncio.timeout(5):
            for _ in fake_ids:
                await raw.received.get()
        known = {c[0] for bucket in victim.routing_table() for c in bucket}
        assert not known & set(fake_ids)
        # an honest node's address with another id: the key there does not hash to it
        with pytest.raises(IdentityMismatch):
            await victim.protocol.call_identify(("127.0.0.1", nodes[1].port), os.urandom(20))
        assert nodes[1].node_id == nodes[1]._identity.peer_id.node_id


async def test_row6_state_is_json_and_a_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    path = tmp_path / "table.json"
    path.write_bytes(pickle.dumps({"neighbors": Evil()}))
    with pytest.raises(StateFileError):
        load_routing_table(path)
    async with DHT.open_ctx(Identity.generate(), config(state_path=path)) as d:
        assert d.state_load_error is not None
    assert not marker.exists()
    node_id, contacts = load_routing_table(path)  # rewritten as JSON on close
    assert node_id == d.node_id and contacts == []


async def test_rows7_8_newcomers_cost_nothing_per_stored_key_and_get_no_handover() -> None:
    async with network(2) as nodes, raw_peer() as raw:
        victim = nodes[0]
        now = time.time()
        for _ in range(10_000):  # stock: a neighbour search per stored key for each new id
            victim._records.put(sign_provider(nodes[1]._identity,
                                              discovery_key(os.urandom(32)), (("127.0.0.1", 9),), now), now)
        assert victim._records.counts()["provider"] == 10_000
        searches = 0
        find_neighbors = victim.protocol.router.find_neighbors

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal searches
            searches += 1
            return find_neighbors(*args, **kwargs)

        victim.protocol.router.find_neighbors = counting  # type: ignore[method-assign]
        for _ in range(50):
            victim.protocol.datagram_received(request("ping", [os.urandom(20)]), raw.addr)
        assert victim.summary().rpcs_received["ping"] == 50
        assert searches == 0  # stock: 50 x 10,000 (226 ms per ping)
        assert victim.summary().rpcs_sent.get("put", 0) == 0  # nothing handed over


async def test_row9_find_neighbors_is_exact() -> None:
    rng = random.Random(9)
    me = Node(rng.randbytes(20))
    table = ExactRoutingTable(type("P", (), {"check_head": lambda self, n: None})(), 20, me, None)
    nodes = [Node(rng.randbytes(20), "127.0.0.1", 1000 + i) for i in range(500)]
    for n in nodes:
        table.add_contact(n)
    members = table.contacts()
    assert len(table.buckets) > 5
    for _ in range(200):
        target = Node(rng.randbytes(20))
        want = sorted(members, key=lambda n: n.long_id ^ target.long_id)[:20]
        assert table.find_neighbors(target) == want  # stock: short for 32%, empty for 2.6%


async def test_row10_dead_peers_neither_stall_lookups_nor_get_evicted_at_once() -> None:
    assert config().rpc_timeout == 1.0
    # Requests to dead nodes would time out after 20 s: the lookups must end long before,
    # because a request unanswered for the stall no longer holds the walk.
    async with network(30, rpc_timeout=20.0) as nodes:
        asker = nodes[1]
        dead = nodes[2:8]
        for d in dead:
            await d.aclose()
        cid = os.urandom(32)
        assert await nodes[20].announce(cid) >= 1
        asked: set[int] = set()
        send = asker.protocol._request

        async def spy(addr: tuple[str, int], name: str, *args: Any) -> Any:
            asked.add(addr[1])
            return await send(addr, name, *args)

        asker.protocol._request = spy  # type: ignore[method-assign]
        async with asyncio.timeout(15):
            found = await asker.find_providers(cid)
            await asker.find_providers(os.urandom(32))
        assert [r.peer_id for r in found] == [nodes[20]._identity.peer_id]
        assert asked & {d.port for d in dead}  # the walks did ask dead nodes...
        # ...and returned before any of those requests timed out (stock: every round with a
        # dead peer waits out its timeout)
        assert asker.summary().events.get("rpc_timeout", 0) == 0
        # eviction needs MAX_FAILURES consecutive failures
        proto = nodes[0].protocol
        victim = proto.router.contacts()[0]
        for _ in range(MAX_FAILURES - 1):
            proto._note_failure(victim)
        assert proto.router.get(victim.id) is not None
        proto._note_failure(victim)
        assert proto.router.get(victim.id) is None


async def test_row13_cancelled_requests_do_not_leak() -> None:
    errors: list[dict[str, Any]] = []
    record_loop_errors(errors)
    async with network(1, rpc_timeout=0.05, lookup_stall=0.05) as nodes, raw_peer() as silent:
        proto = nodes[0].protocol
        tasks = [asyncio.ensure_future(proto._request(silent.addr, "ping")) for _ in range(100)]
        async with asyncio.timeout(5):
            for _ in tasks:
                await silent.received.get()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert proto._outstanding == {}
        assert MAX_DATAGRAM == 8192
    assert errors == []


def test_row16_known_contact_that_answers_moves_to_the_tail() -> None:
    me = Node(b"\xff" * 20)
    table = ExactRoutingTable(None, 20, me, None)  # type: ignore[arg-type]
    a, b = Node(b"\x01" * 20, "127.0.0.1", 1), Node(b"\x02" * 20, "127.0.0.1", 2)
    table.add_contact(a)
    table.add_contact(b)
    assert table.buckets[0].head() is a
    table.add_contact(a)  # what welcome_if_new does for a known contact
    assert table.buckets[0].head() is b


def test_per_ip_cap() -> None:
    table = ExactRoutingTable(None, 20, Node(b"\xff" * 20), 2)  # type: ignore[arg-type]
    for i in range(5):
        table.add_contact(Node(bytes([i]) * 20, "198.51.100.1", 1000 + i))
    assert len(table) == 2 and table.refused_ip_cap == 3
