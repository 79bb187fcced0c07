"""Both address families: real UDP on 127.0.0.1 and ::1, one socket per family on one port."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from dhtnet import DUAL, V4, V6, config, raw_peer, request
from kademlia.node import Node

from p2p.dht import DHT, DHTConfig
from p2p.dht.protocol import MAX_FAILURES, RESPONSE
from p2p.dht.records import VerifyCache, decode_record, discovery_key, sign_peer, sign_provider
from p2p.dht.routing import Contact, ExactRoutingTable, ip_group
from p2p.errors import BadInput, DecodeError, NetworkError
from p2p.identity import Identity

NOW = 1_800_000_000.0


async def test_v4_only_and_v6_only_nodes_find_each_other_through_a_dual_stack_node() -> None:
    async with DHT.open_ctx(Identity.generate(), config(host=DUAL)) as hub:
        v4_at, v6_at = hub.listen_addresses()
        assert v4_at == (V4, hub.port) and v6_at == (V6, hub.port)
        async with DHT.open_ctx(Identity.generate(), config(host=V4, bootstrap=(v4_at,))) as a, \
                DHT.open_ctx(Identity.generate(), config(host=V6, bootstrap=(v6_at,))) as b:
            from_a, from_b = os.urandom(32), os.urandom(32)
            async with asyncio.timeout(10):
                assert await a.announce(from_a) >= 1
                assert await b.announce(from_b) >= 1
                found_by_b = await b.find_providers(from_a)
                found_by_a = await a.find_providers(from_b)
            assert [(r.peer_id, r.addresses) for r in found_by_b] == \
                [(a._identity.peer_id, ((V4, a.port),))]
            assert [(r.peer_id, r.addresses) for r in found_by_a] == \
                [(b._identity.peer_id, ((V6, b.port),))]
            # The hub handed neither side a contact it cannot use: no contact was refused.
            assert a.summary().rejected == {} and b.summary().rejected == {}
            assert a.summary().contacts_ipv6 == 0 and b.summary().contacts_ipv4 == 0
            assert hub.summary().contacts == 2


async def test_a_dual_stack_node_met_over_both_families_is_one_contact() -> None:
    async with DHT.open_ctx(Identity.generate(), config(host=DUAL)) as first:
        # The second node's requests reach the first from both of its sockets; the first
        # verifies it at each address. Wait for that, whatever order it happens in.
        met_twice = asyncio.Event()
        admit = first.protocol.admit

        def spy(node: Node) -> None:
            admit(node)
            if any(len(c.addresses) == 2 for c in first.contacts()):
                met_twice.set()

        first.protocol.admit = spy  # type: ignore[method-assign]
        boot = first.listen_addresses()
        async with DHT.open_ctx(Identity.generate(), config(host=DUAL, bootstrap=boot)) as second:
            async with asyncio.timeout(10):
                await met_twice.wait()
            [back] = first.contacts()
            assert back.node_id == second.node_id
            assert set(back.addresses) == {(V4, second.port), (V6, second.port)}
            assert [len(b) for b in first.routing_table()] == [1]
            stats = first.summary()
            assert (stats.contacts, stats.contacts_ipv4, stats.contacts_ipv6) == (1, 1, 1)
            # Bootstrapping at both addresses: one node, verified twice, one contact.
            assert await second.bootstrap(boot) == 2
            [contact] = second.contacts()
            assert contact.node_id == first.node_id
            assert set(contact.addresses) == {(V4, first.port), (V6, first.port)}
            # Both families in our own records, and a provider found with both.
            assert set(second.reachable_addresses()) == {(V4, second.port), (V6, second.port)}
            cid = os.urandom(32)
            assert await second.announce(cid) >= 1
            [rec] = await first.find_providers(cid)
            assert set(rec.addresses) == {(V4, second.port), (V6, second.port)}


async def test_both_sockets_share_the_port_the_caller_passes() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # what a node's TCP server holds
    probe.bind((V4, 0))
    port = probe.getsockname()[1]
    try:
        async with DHT.open_ctx(Identity.generate(), config(host=DUAL, port=port)) as d:
            assert d.listen_addresses() == ((V4, port), (V6, port)) and d.port == port
            assert d.listening
        assert not d.listening
    finally:
        probe.close()
    async with DHT.open_ctx(Identity.generate(), config(host=(V6, V4))) as d:
        assert d.listen_addresses() == ((V6, d.port), (V4, d.port))  # the order given


async def test_ipv4_mapped_sources_are_ipv4_everywhere() -> None:
    async with DHT.open_ctx(Identity.generate(), config(host=DUAL)) as d, raw_peer() as raw:
        sender = os.urandom(20)
        # What a dual-stack socket reports for an IPv4 peer.
        d.protocol.datagram_received(request("ping", [sender]),
                                     ("::ffff:" + raw.addr[0], raw.addr[1], 0, 0))
        async with asyncio.timeout(5):
            reply, source = await raw.received.get()  # answered over IPv4, to the IPv4 peer
            assert reply[0] == RESPONSE and source[:2] == (V4, d.port)
            challenge, _ = await raw.received.get()  # the identify challenge, over IPv4 too
        assert challenge[0] == 0x10


def test_host_tuples_are_checked() -> None:
    assert DHTConfig(host=DUAL).hosts == DUAL
    assert DHTConfig(host="[::1]").hosts == (V6,)
    assert DHTConfig(host="::ffff:127.0.0.1").hosts == (V4,)
    for bad in ((V4, "127.0.0.2"), ("localhost",), (), "example.com"):
        with pytest.raises(BadInput):
            DHTConfig(host=bad)


async def test_contacts_of_a_family_we_do_not_speak_are_skipped_not_refused() -> None:
    async with DHT.open_ctx(Identity.generate(), config(host=V4)) as d:
        honest = Node(os.urandom(20), V4, 9)
        entries = [[os.urandom(20), V6, 7], [honest.id, V6, 9], [honest.id, V4, 9]]
        [only] = d.protocol._contacts(entries, Node(os.urandom(20), V4, 1))
        assert (only.id, only.ip) == (honest.id, V4)
        assert d.summary().rejected == {}
        with pytest.raises(NetworkError, match="IPv6"):
            await d.protocol._request((V6, 9), "ping")


def test_a_dead_address_is_dropped_and_the_contact_lives_on_at_the_other() -> None:
    table = ExactRoutingTable(None, 20, Node(b"\xff" * 20), None)  # type: ignore[arg-type]
    contact = Contact(b"\x01" * 20, (V6, 5))
    table.add_contact(contact)
    assert table.add_address(contact, (V4, 5))
    assert (contact.ip, contact.port) == (V6, 5)  # the first verified address stays preferred
    assert contact.same_home_as(Node(b"\0" * 20, V4, 5))
    assert contact.forget((V6, 5)) and (contact.ip, contact.port) == (V4, 5)
    assert not contact.forget((V4, 5))


async def test_failures_at_one_address_do_not_evict_a_dual_stack_contact() -> None:
    async with DHT.open_ctx(Identity.generate(), config(host=DUAL)) as d:
        proto = d.protocol
        nid = os.urandom(20)
        proto.admit(Node(nid, V6, 5))
        proto.admit(Node(nid, V4, 5))
        for _ in range(MAX_FAILURES):
            proto._note_failure(Node(nid, V6, 5))
        [info] = d.contacts()
        assert info.addresses == ((V4, 5),)
        for _ in range(MAX_FAILURES):
            proto._note_failure(Node(nid, V4, 5))
        assert d.contacts() == []
        assert d.summary().events["contacts_evicted"] == 1


def test_per_ip_cap_counts_an_ipv6_slash64_as_one_ip() -> None:
    assert ip_group("2001:db8::1") == ip_group("2001:db8::ffff:1") != ip_group("2001:db8:0:1::1")
    assert ip_group("192.0.2.1") != ip_group("192.0.2.2")
    table = ExactRoutingTable(None, 20, Node(b"\xff" * 20), 2)  # type: ignore[arg-type]
    for i in range(5):
        table.add_contact(Contact(bytes([i]) * 20, (f"2001:db8::{i + 1}", 1000 + i)))
    table.add_contact(Contact(b"\x09" * 20, ("2001:db8:0:1::1", 1000)))
    assert len(table) == 3 and table.refused_ip_cap == 3
    # a contact's second address is capped too
    assert not table.add_address(table.get(b"\x09" * 20), ("2001:db8::99", 1))


def test_records_carry_both_families() -> None:
    me = Identity.generate()
    both = (("192.0.2.7", 4000), ("2001:db8::7", 4000))
    dkey = discovery_key(os.urandom(32))
    for signed in (sign_provider(me, dkey, both, NOW), sign_peer(me, both, NOW)):
        again = decode_record(signed.raw, signed.key, NOW, VerifyCache())
        assert again.record.addresses == both  # type: ignore[union-attr]
    with pytest.raises(BadInput):  # an IPv4-mapped address is written as IPv4
        sign_provider(me, dkey, (("::ffff:192.0.2.7", 4000),), NOW)
    with pytest.raises(BadInput):  # not in canonical form
        sign_provider(me, dkey, (("2001:DB8::7", 4000),), NOW)
    with pytest.raises(DecodeError):
        from p2p.dht.records import check_address
        check_address("::ffff:192.0.2.7", 1)


async def test_listening_is_false_once_either_socket_is_gone() -> None:
    async with DHT.open_ctx(Identity.generate(), config(host=DUAL)) as d:
        assert d.listening
        d.protocol.transports[6].close()  # as if the system closed the IPv6 socket
        assert not d.listening
        assert d.summary().listen == ((V4, d.port), (V6, d.port))  # still where it was bound


async def test_a_port_taken_in_one_family_fails_the_open_and_leaves_nothing_bound() -> None:
    taken = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    taken.bind((V6, 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(NetworkError, match=str(port)):
            await DHT.open(Identity.generate(), config(host=DUAL, port=port))
        free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        free.bind((V4, port))  # the IPv4 socket of the failed open is closed
        free.close()
    finally:
        taken.close()
