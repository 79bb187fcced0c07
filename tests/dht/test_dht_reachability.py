"""Dial-back requests, the client mode and the observer endpoint, on real UDP sockets on
127.0.0.1 (docs/PROTOCOL.md, Reachability)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dhtnet import FakeClock, config, raw_peer, request

from p2p.dht import DHT
from p2p.dht.protocol import (
    AMPLIFICATION_FACTOR,
    DIALBACK_ACCEPTED,
    DIALBACK_BURST,
    DIALBACK_BUSY,
    DIALBACK_INTERVAL,
    DIALBACK_REFUSED_ADDRESS,
    DIALBACK_UNAVAILABLE,
    RESPONSE,
)
from p2p.encoding import pack, unpack
from p2p.identity import Identity

V4 = "127.0.0.1"


class Dialer:
    """Records the dial-backs a node was asked to make."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, int], bytes]] = []
        self.called = asyncio.Event()

    async def __call__(self, target: tuple[str, int], pubkey: bytes) -> None:
        self.calls.append((target, pubkey))
        self.called.set()


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[DHT, Dialer]]:
    dialer = Dialer()
    async with DHT.open_ctx(Identity.generate(), config(**overrides)) as node:
        node.set_dialer(dialer, 2)
        yield node, dialer


async def ask(raw: Any, node: DHT, identity: Identity, host: str, port: int = 7473
              ) -> tuple[bytes, Any]:
    """A raw ``dialback`` request from ``raw``; (the datagram sent, the decoded answer)."""
    datagram = request("dialback", [identity.node_id, identity.public_key, host, port])
    raw.send(datagram, node.listen_addresses()[0])
    async with asyncio.timeout(5):
        data, _addr = await raw.received.get()
        while data[0] != RESPONSE:  # the server's identify challenge to a newcomer
            data, _addr = await raw.received.get()
    return datagram, unpack(data[21:], max_bin=64)


async def test_a_dialback_goes_to_the_requesters_own_ip_only() -> None:
    async with serving() as (node, dialer), raw_peer() as raw:
        me = Identity.generate()
        _sent, answer = await ask(raw, node, me, "127.0.0.2")  # a third party's IP
        assert answer[0] == DIALBACK_REFUSED_ADDRESS
        assert node.protocol.counters.rejected["dialback_third_party"] == 1
        _sent, answer = await ask(raw, node, me, V4, 7480)
        assert answer[0] == DIALBACK_ACCEPTED and answer[1] == 2
        async with asyncio.timeout(5):
            await dialer.called.wait()
        # Only the request with our own source IP was dialled, at the port we named.
        assert dialer.calls == [((V4, 7480), me.public_key)]


async def test_the_answer_is_small() -> None:
    async with serving() as (node, _dialer), raw_peer() as raw:
        sent, answer = await ask(raw, node, Identity.generate(), V4)
        assert answer[0] == DIALBACK_ACCEPTED
        assert node.protocol.counters.received["dialback"] == 1
        # A fresh raw socket (never proven) got the whole answer, within 3x its request.
        assert len(pack(answer)) + 21 <= AMPLIFICATION_FACTOR * len(sent)


async def test_dialbacks_are_rate_limited_per_ip() -> None:
    clock = FakeClock()
    async with serving(monotonic_clock=clock) as (node, _dialer), raw_peer() as raw:
        me = Identity.generate()
        statuses = [(await ask(raw, node, me, V4))[1][0] for _ in range(int(DIALBACK_BURST) + 1)]
        assert statuses == [DIALBACK_ACCEPTED] * int(DIALBACK_BURST) + [DIALBACK_BUSY]
        clock.advance(DIALBACK_INTERVAL)
        assert (await ask(raw, node, me, V4))[1][0] == DIALBACK_ACCEPTED
        assert (await ask(raw, node, me, V4))[1][0] == DIALBACK_BUSY


async def test_a_key_that_is_not_the_senders_gets_no_answer() -> None:
    async with serving() as (node, dialer), raw_peer() as raw:
        me, other = Identity.generate(), Identity.generate()
        raw.send(request("dialback", [me.node_id, other.public_key, V4, 7473]),
                 node.listen_addresses()[0])
        _sent, answer = await ask(raw, node, me, "127.0.0.9")  # the next answer is this one's
        assert answer[0] == DIALBACK_REFUSED_ADDRESS
        assert node.protocol.counters.rejected["bad_arguments"] == 1
        assert dialer.calls == []


async def test_a_node_without_a_dialer_says_so() -> None:
    async with DHT.open_ctx(Identity.generate(), config()) as node, raw_peer() as raw:
        assert (await ask(raw, node, Identity.generate(), V4))[1][0] == DIALBACK_UNAVAILABLE


async def test_request_dialback_reports_the_observer_endpoint() -> None:
    async with serving(observer=(V4, 0)) as (server, _dialer), \
            DHT.open_ctx(Identity.generate(), config()) as client:
        status, attempts, observers = await client.request_dialback(
            server.listen_addresses()[0], (V4, client.port))
        assert (status, attempts) == (DIALBACK_ACCEPTED, 2)
        assert len(observers) == 1 and observers[0] != server.listen_addresses()[0]
        # The observer endpoint answers identify from its own address: a second observer.
        pubkey, seen, local = await client.observe(observers[0])
        assert pubkey == server.protocol.identity.public_key
        assert seen == local == client.listen_addresses()[0]


async def test_the_observer_endpoint_answers_identify_only() -> None:
    async with serving(observer=(V4, 0)) as (server, _dialer), raw_peer() as raw:
        observer = server.protocol.observer_addresses[0]
        me = Identity.generate()
        raw.send(request("ping", [me.node_id]), observer)
        msg_id = os.urandom(20)
        raw.send(request("identify", [me.node_id, os.urandom(32)], msg_id), observer)
        async with asyncio.timeout(5):
            data, addr = await raw.received.get()
        assert addr[:2] == observer and data[1:21] == msg_id  # the ping got nothing
        assert server.protocol.counters.rejected["observer_dropped"] == 1


async def test_a_client_is_answered_but_never_added() -> None:
    async with DHT.open_ctx(Identity.generate(), config()) as server:
        boot = server.listen_addresses()[:1]
        async with DHT.open_ctx(Identity.generate(), config(bootstrap=boot,
                                                            client_mode=True)) as client:
            # The client joined (it knows the server) and the server answered it ...
            assert client.protocol.router.get(server.node_id) is not None
            assert server.protocol.counters.received["identify"] >= 1
            # ... but the server never took it in, not even after more requests.
            await client.find_providers(os.urandom(32))
            assert server.protocol.router.get(client.node_id) is None
            # A server that dials the client itself (its reply is marked) does not add it.
            with contextlib.suppress(Exception):
                await server.bootstrap(client.listen_addresses())
            assert server.protocol.router.get(client.node_id) is None
            assert server.protocol.counters.events["clients_not_admitted"] >= 1


async def test_a_server_that_becomes_a_client_leaves_the_tables() -> None:
    async with DHT.open_ctx(Identity.generate(), config()) as server:
        boot = server.listen_addresses()[:1]
        async with DHT.open_ctx(Identity.generate(), config(bootstrap=boot)) as other:
            async with asyncio.timeout(5):
                while server.protocol.router.get(other.node_id) is None:
                    # Its verification is one identify round trip the server started.
                    await other.protocol.call_ping(
                        other.protocol.router.get(server.node_id))
            await other.set_client_mode(True)
            await other.protocol.call_ping(other.protocol.router.get(server.node_id))
            assert server.protocol.router.get(other.node_id) is None
            assert server.protocol.counters.events["clients_removed"] == 1


@pytest.mark.parametrize("mode", [True, False])
async def test_set_client_mode_is_what_the_datagrams_say(mode: bool) -> None:
    async with DHT.open_ctx(Identity.generate(), config(client_mode=not mode)) as node:
        await node.set_client_mode(mode)
        assert node.client_mode is mode
