"""What a lookup reports about itself (its depth in hops) and how it ends when its node closes."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from dhtnet import FakeClock, network
from kademlia.node import Node

from p2p.dht.lookup import Walk
from p2p.errors import NetworkError


def node_at(distance: int) -> Node:
    return Node(distance.to_bytes(20, "big"), "127.0.0.1", 1000 + distance)


def test_walk_counts_the_hops_of_its_deepest_answer() -> None:
    start, named, deeper, side = node_at(40), node_at(20), node_at(5), node_at(30)
    walk = Walk(0, [start], ksize=4, alpha=1, stall=1.0)
    assert walk.rounds == 0
    assert walk.step(1.0) == [start]
    walk.answer(start.id, [named, side], now=1.1)
    assert walk.rounds == 1  # the start contact answered: round 1
    assert walk.step(1.1) == [named]
    walk.answer(named.id, [deeper, start], now=1.2)  # start is known: stays at hop 1
    assert walk.rounds == 2
    assert walk.step(1.2) == [deeper]
    walk.fail(deeper.id, now=1.3, timed_out=True)  # no answer: not a round
    assert walk.rounds == 2
    assert walk.step(1.3) == [side]
    walk.answer(side.id, [], now=1.4)  # named by the start contact: hop 2, not 3
    assert walk.rounds == 2 and walk.step(1.4) == [] and walk.finished


async def test_lookups_add_their_rounds_to_the_summary() -> None:
    async with network(4) as nodes:
        before = nodes[3].summary()
        await nodes[3].find_providers(os.urandom(32))
        after = nodes[3].summary()
        assert after.lookups == before.lookups + 1
        assert 1 <= after.lookup_rounds - before.lookup_rounds <= after.lookup_rpcs - before.lookup_rpcs
        assert after.to_json()["lookup_rounds"] == after.lookup_rounds


async def test_a_provider_lookup_cut_short_by_close_raises_network_error() -> None:
    clock = FakeClock(100.0)  # no request times out: the walk waits until the close
    async with network(2, monotonic_clock=clock) as nodes:
        asker, hung = nodes
        transport = hung.protocol.transport
        transport.pause_reading()  # a peer that no longer answers: we read its socket instead
        ours = transport.get_extra_info("socket")
        with socket.fromfd(ours.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            lookup = asyncio.ensure_future(asker.find_providers(os.urandom(32)))
            async with asyncio.timeout(5):
                await asyncio.get_running_loop().sock_recv(sock, 9000)  # the request arrived
        assert not lookup.done() and asker.protocol._outstanding
        await asker.aclose()
        with pytest.raises(NetworkError, match="closed"):
            async with asyncio.timeout(5):
                await lookup
