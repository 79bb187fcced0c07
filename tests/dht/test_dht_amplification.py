"""The DHT is not an amplifier (issue 12, item 8).

An address that has not proven it receives our datagrams (no verified contact there, no valid
address token echoed) gets at most AMPLIFICATION_FACTOR (3) times the bytes it sent, the
``identify`` challenge included; a token from an earlier reply gets the full answer.

The datagrams here are built by hand from docs/PROTOCOL.md ("### Datagram", "### RPCs") with
the ``msgpack`` package, not with the code under test, and go over real UDP sockets on
127.0.0.1 to a real node holding 16 large provider records.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import os
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from dhtnet import FakeClock, RawPeer, config, network, raw_peer
from kademlia.node import Node

from p2p.dht import DHT
from p2p.dht.protocol import (
    AMPLIFICATION_FACTOR,
    TOKEN_ROTATION,
    TOKEN_SIZE,
    AddressTokens,
    TokenCache,
    fit,
)
from p2p.dht.records import discovery_key, sign_provider
from p2p.identity import Identity

REQUEST, RESPONSE = 0x10, 0x11
RECORDS = 16


def datagram(name: str, args: list[Any]) -> tuple[bytes, bytes]:
    """A request as docs/PROTOCOL.md writes it: type, 20-byte msg id, msgpack payload."""
    msg_id = os.urandom(20)
    return bytes([REQUEST]) + msg_id + msgpack.packb([name, args], use_bin_type=True), msg_id


def payload(data: bytes) -> Any:
    return msgpack.unpackb(data[21:], raw=False)


def large_records(key: bytes, now: float, count: int = RECORDS) -> list[Any]:
    """``count`` provider records of different authors, each with four long IPv6 addresses in a
    network of its own (so no per-network quota of the store leaves one out)."""
    out = []
    for i in range(count):
        addrs = [(str(ipaddress.IPv6Address(f"2a01:{0x100 + i:x}:{j + 1:x}fff:ffff:ffff:ffff:"
                                            f"ffff:ffff")), 60000 + j) for j in range(4)]
        out.append(sign_provider(Identity.generate(), key, addrs, now))
    return out


class SentLog:
    """Every datagram a node's sockets send, by destination: a spy on its real transports."""

    def __init__(self, dht: DHT) -> None:
        self.bytes: collections.Counter[tuple[str, int]] = collections.Counter()
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        for transport in dht.protocol.transports.values():
            self._wrap(transport)

    def _wrap(self, transport: Any) -> None:
        send = transport.sendto

        def sendto(data: bytes, addr: Any = None) -> None:
            self.bytes[(addr[0], addr[1])] += len(data)
            self.datagrams.append((bytes(data), (addr[0], addr[1])))
            send(data, addr)

        transport.sendto = sendto

    def requests_to(self, addr: tuple[str, int]) -> list[str]:
        """The names of the requests sent to ``addr``."""
        return [payload(d)[0] for d, a in self.datagrams if a == addr and d[0] == REQUEST]


class Client:
    """A fresh socket that is nobody's contact: it sends requests and never answers any."""

    def __init__(self, raw: RawPeer, target: tuple[str, int]) -> None:
        self.raw = raw
        self.target = target
        self.sent = 0
        self.node_id = os.urandom(20)

    async def ask(self, name: str, *args: Any) -> tuple[Any, int, int]:
        """Send one request; return (reply value, reply size, request size)."""
        data, msg_id = datagram(name, [self.node_id, *args])
        self.sent += len(data)
        self.raw.send(data, self.target)
        async with asyncio.timeout(5):
            while True:
                reply, _ = await self.raw.received.get()
                if reply[0] == RESPONSE and reply[1:21] == msg_id:
                    return payload(reply), len(reply), len(data)


async def settle(dht: DHT) -> None:
    """Return once the node has handled everything sent to it so far (and sent what that
    made it send): one more round trip from another socket."""
    async with raw_peer() as probe:
        await Client(probe, ("127.0.0.1", dht.port)).ask("ping")


@contextlib.asynccontextmanager
async def holder(**overrides: Any) -> AsyncIterator[tuple[DHT, bytes]]:
    """A node among five that knows them all and holds 16 large provider records for a key."""
    async with network(5, **overrides) as nodes:
        node = nodes[0]
        key = discovery_key(os.urandom(32))
        now = node._wall()
        for signed in large_records(key, now):
            node._records.put(signed, now)
        assert len(node._records.providers(key, now, RECORDS)) == RECORDS
        yield node, key


def check_contacts(entries: Any) -> None:
    assert isinstance(entries, list)
    for entry in entries:
        node_id, host, port = entry
        assert len(node_id) == 20 and ipaddress.ip_address(host) and 1 <= port <= 65535


async def test_an_unproven_address_gets_at_most_three_times_what_it_sent() -> None:
    async with holder() as (node, key), raw_peer() as raw:
        log = SentLog(node)
        client = Client(raw, ("127.0.0.1", node.port))
        # the old shapes, the token shapes without a token and with a made-up one, then the
        # small RPCs, whose answers leave room for the identify challenge of a new sender
        asks: list[tuple[str, list[Any]]] = [
            ("get", [1, key]),
            ("get", [1, key, b""]),
            ("get", [1, key, os.urandom(TOKEN_SIZE)]),
            ("find_node", [key]),
            ("find_node", [key, b""]),
            ("find_node", [key, os.urandom(TOKEN_SIZE)]),
            ("ping", []),
            ("identify", [os.urandom(32)]),
            ("put", [key, b"\x93\x01\x02\x03"]),
        ]
        for name, args in asks:
            before = log.bytes[raw.addr]
            value, size, sent = await client.ask(name, *args)
            await settle(node)
            assert size <= AMPLIFICATION_FACTOR * sent, (name, args, size, sent)
            assert log.bytes[raw.addr] - before <= AMPLIFICATION_FACTOR * sent, (name, args)
            if name == "get" and len(args) == 2:
                records, contacts = value  # the old shape, cut short
                assert len(records) < RECORDS
                check_contacts(contacts)
            elif name == "get":
                (records, contacts), token, complete = value
                assert complete is False and len(token) == TOKEN_SIZE
                assert len(records) < RECORDS
                check_contacts(contacts)
            elif name == "find_node" and len(args) == 1:
                check_contacts(value)
            elif name == "find_node":
                contacts, token, complete = value
                check_contacts(contacts)
                assert len(token) == TOKEN_SIZE and isinstance(complete, bool)
        assert log.bytes[raw.addr] <= AMPLIFICATION_FACTOR * client.sent
        # The challenge went out only where it fit the budget (ping, identify, put), never
        # after a shaped reply.
        assert 1 <= log.requests_to(raw.addr).count("identify") <= 3
        assert node.summary().events["identify_deferred"] >= 6
        assert all(raw.addr not in c.addresses for c in node.contacts())


async def test_an_echoed_token_gets_the_full_answer_and_proves_the_address() -> None:
    async with holder() as (node, key), raw_peer() as raw:
        log = SentLog(node)
        client = Client(raw, ("127.0.0.1", node.port))
        (records, contacts), token, complete = (await client.ask("get", 1, key, b""))[0]
        assert not complete and len(records) < RECORDS
        value, size, sent = await client.ask("get", 1, key, token)
        (records, contacts), again, complete = value
        assert complete is True and again == token
        assert len(records) == RECORDS and len(contacts) == 4  # everyone the holder knows
        assert size > AMPLIFICATION_FACTOR * sent  # what an unproven address must not get
        contacts, _token, complete = (await client.ask("find_node", key, token))[0]
        assert complete is True and len(contacts) == 4
        await settle(node)
        # A proven sender is a candidate contact: it is challenged at once.
        assert "identify" in log.requests_to(raw.addr)
        # The token is this address's: another socket echoing it is still unproven.
        async with raw_peer() as other:
            stolen = Client(other, ("127.0.0.1", node.port))
            (records, _), _new, complete = (await stolen.ask("get", 1, key, token))[0]
            assert not complete and len(records) < RECORDS


async def test_a_token_lasts_one_to_two_rotations_and_a_forged_one_never_works() -> None:
    clock = FakeClock(3 * TOKEN_ROTATION)  # the start of a rotation
    async with holder(monotonic_clock=clock) as (node, key), raw_peer() as raw:
        client = Client(raw, ("127.0.0.1", node.port))

        async def full(token: bytes) -> tuple[bool, bytes]:
            (records, _), fresh, complete = (await client.ask("get", 1, key, token))[0]
            assert complete == (len(records) == RECORDS)
            return complete, fresh

        _, token = await full(b"")
        forged = bytes([token[0] ^ 1]) + token[1:]
        assert await full(forged) == (False, token)
        assert await full(token + b"\0") == (False, token)  # a longer token is not ours
        assert await full(token) == (True, token)
        clock.advance(TOKEN_ROTATION)  # the secret rotated once: still accepted
        complete, fresh = await full(token)
        assert complete and fresh != token
        clock.advance(TOKEN_ROTATION)  # twice: expired, the shaped answer and a new token
        complete, newest = await full(token)
        assert not complete and newest not in (token, fresh)
        assert await full(newest) == (True, newest)


async def test_lookups_still_find_every_record_through_nodes_that_do_not_know_the_asker() -> None:
    async with network(8) as nodes:
        cid = os.urandom(32)
        key = discovery_key(cid)
        now = nodes[0]._wall()
        for signed in large_records(key, now):
            for holder_node in nodes:
                contact = Node(holder_node.node_id, "127.0.0.1", holder_node.port)
                assert await nodes[0].protocol.call_put(contact, key, signed.raw) == 0
        boot = nodes[-1].listen_addresses()[:1]
        async with DHT.open_ctx(Identity.generate(), config(bootstrap=boot)) as asker:
            found = await asker.find_providers(cid)
            assert len({r.peer_id for r in found}) == RECORDS
            # Most nodes it asked had not verified it: they cut their first answer short
            # and the token brought the rest.
            assert asker.summary().events["token_retries"] >= 1
            assert len(asker.protocol.held_tokens) >= 1


# -- the pure parts ----------------------------------------------------------------------------


def test_tokens_rotate_and_are_bound_to_the_address() -> None:
    tokens = AddressTokens(rotation=300.0)
    a, b = ("192.0.2.1", 4000), ("192.0.2.1", 4001)
    token = tokens.issue(a, 600.0)
    assert len(token) == TOKEN_SIZE and tokens.issue(a, 899.0) == token
    assert tokens.check(a, token, 600.0) and tokens.check(a, token, 1199.9)  # current, previous
    assert not tokens.check(b, token, 600.0)
    assert not tokens.check(("192.0.2.2", 4000), token, 600.0)
    assert not tokens.check(a, token[:-1], 600.0) and not tokens.check(a, b"", 600.0)
    assert not tokens.check(a, token, 1200.0)  # two rotations later
    assert tokens.issue(a, 1200.0) != token
    # A jump of many rotations forgets both secrets.
    late = AddressTokens(rotation=300.0)
    old = late.issue(a, 0.0)
    assert not late.check(a, old, 10_000.0)
    # Another node's secret gives other tokens.
    assert AddressTokens().issue(a, 0.0) != AddressTokens().issue(a, 0.0)


def test_the_token_cache_is_bounded_and_keeps_the_recently_used() -> None:
    cache = TokenCache(size=3)
    for port in (1, 2, 3):
        cache.put(("192.0.2.1", port), bytes([port]))
    assert cache.get(("192.0.2.1", 1)) == b"\x01"  # now the most recent
    cache.put(("192.0.2.1", 4), b"\x04")
    assert len(cache) == 3
    assert cache.get(("192.0.2.1", 2)) == b""  # the least recently used went
    assert cache.get(("192.0.2.1", 1)) == b"\x01"
    cache.put(("192.0.2.1", 1), b"\x05")
    assert cache.get(("192.0.2.1", 1)) == b"\x05" and len(cache) == 3


@pytest.mark.parametrize("budget", [2, 3, 40, 100, 300, 1000, 10_000])
def test_fit_keeps_the_longest_prefixes_that_encode_within_the_budget(budget: int) -> None:
    records = [os.urandom(n) for n in (120, 30, 200)]
    contacts = [[os.urandom(20), "192.0.2.1", 1000 + i] for i in range(20)]
    (kept_records, kept_contacts), complete = fit([records, contacts], budget)
    assert len(msgpack.packb([kept_records, kept_contacts], use_bin_type=True)) <= budget + 1
    assert kept_records == records[:len(kept_records)]
    assert kept_contacts == contacts[:len(kept_contacts)]
    assert complete == (kept_records == records and kept_contacts == contacts)
    # nothing more of the first list that does not fit would have: its next item is too big
    if len(kept_records) < len(records):
        grown = [[*kept_records, records[len(kept_records)]], kept_contacts]
        assert len(msgpack.packb(grown, use_bin_type=True)) > budget + 1
