"""Many real nodes on 127.0.0.1: providers, peers and channels end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os

import pytest
from dhtnet import config, network

from p2p.dht import DHT, DHTStats, StaleSequence
from p2p.dht.records import sign_peer
from p2p.dht.store import PutStatus
from p2p.errors import BadInput, NetworkError, NotFound
from p2p.identity import Identity


async def test_fifty_nodes_five_providers_found_by_a_late_joiner() -> None:
    async with network(50) as nodes:
        cid = os.urandom(32)
        providers = nodes[10:15]
        async with asyncio.timeout(10):
            acks = await asyncio.gather(*(d.announce(cid) for d in providers))
        assert all(a >= 1 for a in acks)
        boot = (("127.0.0.1", nodes[0].port),)
        async with DHT.open_ctx(Identity.generate(), config(bootstrap=boot)) as late:
            async with asyncio.timeout(10):
                found = await late.find_providers(cid)
            assert {r.peer_id for r in found} == {d._identity.peer_id for d in providers}
            assert all(r.addresses == (("127.0.0.1", d.port),) for r in found
                       for d in providers if d._identity.peer_id == r.peer_id)
            seen = [r.peer_id async for r in late.iter_providers(cid, limit=2)]
            assert len(seen) == 2 == len(set(seen))
            assert await late.find_providers(os.urandom(32)) == []
            stats = late.summary()
            assert stats.contacts > 0 and stats.rejected == {}


async def test_peer_and_channel_records() -> None:
    async with network(12) as nodes:
        a, b = nodes[3], nodes[8]
        assert await a.announce_peer() >= 1
        rec = await b.find_peer(a._identity.peer_id)
        assert rec.peer_id == a._identity.peer_id
        assert rec.addresses == a.reachable_addresses() == (("127.0.0.1", a.port),)
        with pytest.raises(NotFound):
            await b.find_peer(Identity.generate().peer_id)

        publisher = Identity.generate()
        v1, v2 = os.urandom(32), os.urandom(32)
        first = await a.put_channel(publisher, "releases", v1)
        second = await a.put_channel(publisher, "releases", v2)
        assert second.seq == first.seq + 1
        got = await b.get_channel(publisher.peer_id, "releases")
        assert (got.content_id, got.seq) == (v2, second.seq)
        with pytest.raises(StaleSequence):  # replaying a lower sequence number
            await b.put_channel(publisher, "releases", v1, seq=first.seq)
        assert (await a.get_channel(publisher.peer_id, "releases")).content_id == v2
        with pytest.raises(NotFound):
            await b.get_channel(publisher.peer_id, "nothing")


async def test_lone_node_errors_are_typed() -> None:
    async with DHT.open_ctx(Identity.generate(), config()) as lone:
        with pytest.raises(NetworkError):
            await lone.announce(os.urandom(32))
        with pytest.raises(NetworkError):
            await lone.find_providers(os.urandom(32))
        with pytest.raises(NetworkError):
            await lone.bootstrap([("127.0.0.1", lone.port)])  # ourselves: not a contact
        assert lone.reachable_addresses() == (("127.0.0.1", lone.port),)


async def test_announce_addrs_override_and_observed_address() -> None:
    async with network(3) as nodes:
        # the identify reply told each joiner where it was seen
        assert nodes[1].reachable_addresses() == (("127.0.0.1", nodes[1].port),)
        async with DHT.open_ctx(Identity.generate(), config(
            announce_addrs=(("203.0.113.9", 7000),),
            bootstrap=(("127.0.0.1", nodes[0].port),),
        )) as d:
            assert d.reachable_addresses() == (("203.0.113.9", 7000),)


async def test_find_peer_returns_the_freshest_record_and_its_addresses() -> None:
    async with network(10) as nodes:
        a, b = nodes[2], nodes[7]
        moved = (("192.0.2.44", 4000), ("2001:db8::44", 4000))
        assert await a.announce_peer((("192.0.2.43", 4000),)) >= 1
        first = await b.find_peer(a._identity.peer_id)
        assert first.addresses == (("192.0.2.43", 4000),)
        # The peer moved and says so; a holder that kept the old record is outvoted by expiry.
        signed = sign_peer(a._identity, moved, a._config.wall_clock() + 60)
        holders = await a._lookup_nodes(signed.key)
        assert await a.protocol.call_put(holders[0], signed.key, signed.raw) == PutStatus.OK
        latest = await b.find_peer(a._identity.peer_id)
        assert latest.addresses == moved and latest.expires > first.expires
        with pytest.raises(BadInput):
            await a.announce_peer((("localhost", 1),))


async def test_summary_is_typed_and_stats_keeps_the_old_keys() -> None:
    async with network(3) as nodes:
        s = nodes[1].summary()
        assert isinstance(s, DHTStats) and s.node_id == nodes[1].node_id
        assert s.contacts == sum(s.bucket_sizes) == len(nodes[1].contacts()) >= 1
        assert s.listen == ((("127.0.0.1", nodes[1].port)),)
        old_keys = {"node_id", "uptime", "contacts", "buckets", "rpcs_received", "rpcs_sent",
                    "rejected", "events", "records", "outstanding", "lookups", "lookup_rpcs",
                    "refused_ip_cap", "signature_cache", "provided", "state_load_error",
                    "restored_contacts"}
        doc = nodes[1].summary().to_json()
        assert old_keys <= set(doc) and doc == s.to_json() | {"uptime": doc["uptime"]}
        assert doc["node_id"] == nodes[1].node_id.hex()
        assert doc["signature_cache"] == {"hits": s.signature_cache_hits,
                                          "misses": s.signature_cache_misses}
        assert json.loads(json.dumps(doc)) == doc
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.contacts = 0  # type: ignore[misc]


async def test_aclose_is_idempotent_and_cancels_everything() -> None:
    async with network(4) as nodes:
        d = nodes[1]
        assert len(d._tasks) == 1  # the periodic work
        await d.aclose()
        await d.aclose()
        assert not d._tasks and not d.protocol._tasks and not d.protocol._outstanding
        assert d._tasks.closed and d.protocol._tasks.closed
        assert d._server.refresh_loop is None  # the library's call_later timer never armed
        assert d.protocol.closed.is_set() and not d.listening
        with pytest.raises(NetworkError, match="closed"):
            await d.announce(os.urandom(32))


async def test_a_node_behind_a_relay_announces_relay_hints_instead_of_its_addresses() -> None:
    from p2p.address import RelayHint

    async with network(4) as nodes:
        hidden, reader = nodes[2], nodes[3]
        hint = RelayHint(Identity.generate().peer_id, ("203.0.113.10", 7473))
        cid = os.urandom(32)
        assert hidden.set_relays([hint], direct=False)
        assert not hidden.set_relays([hint], direct=False)  # no change: nothing to re-announce
        async with asyncio.timeout(30):
            await hidden.provide(cid)
            await hidden.announce_peer()
            (found,) = await reader.find_providers(cid)
            peer = await reader.find_peer(hidden._identity.peer_id)
        assert found.addresses == () and found.relays == (hint,)
        assert peer.addresses == () and peer.relays == (hint,)
        # Reachable again (or unknown): direct addresses alongside the hint, then alone.
        hidden.set_relays([hint], direct=True)
        async with asyncio.timeout(30):
            await hidden.reannounce()
            (found,) = await reader.find_providers(cid)
        assert found.addresses and found.relays == (hint,)
        hidden.set_relays([], direct=True)
        async with asyncio.timeout(30):
            await hidden.reannounce()
            (found,) = await reader.find_providers(cid)
        assert found.addresses and found.relays == ()
