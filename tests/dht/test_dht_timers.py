"""Timeouts, expiry and periodic work, driven by fake clocks: nothing here waits for time to pass."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from dhtnet import FakeClock, config, network, raw_peer, request
from kademlia.node import Node

from p2p.dht import DHT, PEER_TTL, PROVIDER_TTL, RPCTimeout, discovery_key
from p2p.dht.records import CLOCK_SKEW
from p2p.dht.schedule import EXPIRE, REANNOUNCE, REFRESH, SAVE
from p2p.dht.state import load_routing_table
from p2p.errors import NetworkError
from p2p.identity import Identity


async def test_an_unanswered_request_times_out_when_the_clock_says_so() -> None:
    clock = FakeClock(100.0)
    cfg = config(monotonic_clock=clock, rpc_timeout=2.0, lookup_stall=0.5)
    async with DHT.open_ctx(Identity.generate(), cfg) as d, raw_peer() as silent:
        proto = d.protocol
        first = asyncio.ensure_future(proto._request(silent.addr, "ping"))
        async with asyncio.timeout(5):
            await silent.received.get()  # sent at 100.0
        clock.advance(1.0)
        second = asyncio.ensure_future(proto._request(silent.addr, "ping"))
        async with asyncio.timeout(5):
            await silent.received.get()  # sent at 101.0
        proto.handle_timer(clock.advance(0.5))  # 1.5 s after the first: not yet
        assert not first.done() and len(proto._outstanding) == 2
        proto.handle_timer(clock.advance(0.5))  # 2.0 s: the first is overdue
        with pytest.raises(RPCTimeout):
            async with asyncio.timeout(5):
                await first
        assert not second.done()
        proto.handle_timer(clock.advance(1.0))
        with pytest.raises(RPCTimeout):
            async with asyncio.timeout(5):
                await second
        assert proto._outstanding == {} and d.summary().events["rpc_timeout"] == 2


async def test_the_rate_limit_refills_with_the_clock() -> None:
    clock = FakeClock()
    cfg = config(monotonic_clock=clock, rate_limit_per_ip=2.0, rate_limit_burst=3.0)
    async with DHT.open_ctx(Identity.generate(), cfg) as d, raw_peer() as raw:
        sender = os.urandom(20)
        for _ in range(5):
            d.protocol.datagram_received(request("ping", [sender]), raw.addr)
        assert d.summary().rejected["rate_limited"] == 2
        clock.advance(1.0)  # two tokens back
        for _ in range(3):
            d.protocol.datagram_received(request("ping", [sender]), raw.addr)
        assert d.summary().rejected["rate_limited"] == 3
        assert d.summary().rpcs_received["ping"] == 5


async def test_records_expire_by_the_wall_clock() -> None:
    wall, mono = FakeClock(), FakeClock(50.0)
    async with network(6, wall_clock=wall, monotonic_clock=mono) as nodes:
        cid = os.urandom(32)
        provider, asker = nodes[2], nodes[4]
        assert await provider.announce(cid) >= 1
        assert [r.peer_id for r in await asker.find_providers(cid)] == [provider._identity.peer_id]
        [rec] = await asker.find_providers(cid)
        assert rec.expires == int(wall.now) + PROVIDER_TTL
        held = sum(n.summary().records["provider"] for n in nodes)
        assert held >= 1
        wall.advance(PROVIDER_TTL)  # every holder's clock says the record is void now
        assert await asker.find_providers(cid) == []
        # ...and the holders drop it at their next expiry run.
        for node in nodes:
            assert EXPIRE in await node.handle_timer(node.next_deadline())
        assert sum(n.summary().records["provider"] for n in nodes) == 0


async def test_a_record_from_a_clock_far_ahead_is_refused() -> None:
    async with network(3) as nodes:
        boot = nodes[0].listen_addresses()[:1]
        wall_ahead = FakeClock(nodes[0]._config.wall_clock() + 2 * CLOCK_SKEW)
        async with DHT.open_ctx(Identity.generate(),
                                config(bootstrap=boot, wall_clock=wall_ahead)) as ahead:
            cid = os.urandom(32)
            with pytest.raises(NetworkError, match="accepted"):
                await ahead.announce(cid)
            assert sum(n.summary().rejected.get("invalid_record", 0) for n in nodes) >= 1


async def test_provide_reannounces_when_due_and_unprovide_stops() -> None:
    mono = FakeClock(10.0)
    async with network(6, monotonic_clock=mono, reannounce_interval=600.0,
                       refresh_interval=900.0) as nodes:
        cid = os.urandom(32)
        me = nodes[2]
        await me.provide(cid)
        announced: list[bytes] = []
        announce = me.announce

        async def spy(content_id: bytes, addresses: Any = None) -> int:
            announced.append(content_id)
            return await announce(content_id, addresses)

        me.announce = spy  # type: ignore[method-assign]
        start = mono.now
        assert me.next_deadline() == start + 300.0  # the expiry run comes first
        assert await me.handle_timer(start + 300.0) == (EXPIRE,)
        assert await me.handle_timer(start + 599.0) == ()
        assert announced == []
        assert await me.handle_timer(start + 600.0) == (EXPIRE, REANNOUNCE)
        assert announced == [cid]
        me.unprovide(cid)
        assert REANNOUNCE in await me.handle_timer(start + 1200.0)
        assert announced == [cid] and me.summary().provided == 0


async def test_lonely_buckets_are_refreshed_when_due() -> None:
    mono = FakeClock(10.0)
    async with network(8, monotonic_clock=mono, refresh_interval=900.0,
                       reannounce_interval=3600.0) as nodes:
        me = nodes[3]
        before = me.summary().lookups
        assert await me.handle_timer(mono.advance(450.0)) == (EXPIRE,)
        assert me.summary().lookups == before  # nothing is lonely yet, nothing was due
        mono.advance(450.0)
        buckets = me.summary().buckets
        assert await me.handle_timer(mono.now) == (EXPIRE, REFRESH)
        assert me.summary().lookups == before + buckets  # every bucket was lonely: one lookup each
        router = me.protocol.router
        cid = os.urandom(32)
        mono.advance(900.0)
        assert router.buckets[router.get_bucket_for(Node(discovery_key(cid)))] in \
            router.lonely_buckets(900.0)
        await me.find_providers(cid)  # a lookup makes its bucket not lonely
        assert router.buckets[router.get_bucket_for(Node(discovery_key(cid)))] not in \
            router.lonely_buckets(900.0)


async def test_the_table_is_saved_when_due(tmp_path: Path) -> None:
    mono = FakeClock(10.0)
    path = tmp_path / "dht.json"
    async with network(4, monotonic_clock=mono) as nodes:
        boot = nodes[0].listen_addresses()[:1]
        async with DHT.open_ctx(Identity.generate(), config(
                state_path=path, bootstrap=boot, monotonic_clock=mono, save_interval=60.0)) as d:
            assert d.next_deadline() == mono.now + 60.0
            assert not path.exists()
            assert await d.handle_timer(mono.advance(60.0)) == (SAVE,)
            _, saved = load_routing_table(path)
            ids = {c[0] for c in saved}
            assert nodes[0].node_id in ids and ids <= {n.node_id for n in nodes}


async def test_the_peer_record_is_republished_with_the_providers() -> None:
    mono, wall = FakeClock(10.0), FakeClock()
    async with network(6, monotonic_clock=mono, wall_clock=wall,
                       reannounce_interval=600.0) as nodes:
        me, other = nodes[1], nodes[4]
        addrs = (("192.0.2.1", 4000), ("2001:db8::1", 4000))
        assert await me.announce_peer(addrs) >= 1
        first = await other.find_peer(me._identity.peer_id)
        assert first.addresses == addrs and first.expires == int(wall.now) + PEER_TTL
        wall.advance(100.0)
        assert REANNOUNCE in await me.handle_timer(mono.advance(600.0))
        again = await other.find_peer(me._identity.peer_id)
        assert again.addresses == addrs and again.expires == first.expires + 100


async def test_an_unexpected_failure_in_a_background_task_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    async with network(8) as nodes:
        me = nodes[2]

        async def broken(node: Any, key: bytes, raw: bytes) -> Any:
            raise RuntimeError("a bug in the store path")

        me.protocol.call_put = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="p2p.dht.server"), \
                pytest.raises(NetworkError, match="accepted"):
            await me.announce(os.urandom(32))
        failures = [r for r in caplog.records if "store a record" in r.getMessage()]
        assert failures and all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)
