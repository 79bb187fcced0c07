"""Where a node thinks it is: a vote of observer networks, never one peer's word (issue 12, item 5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dhtnet import FakeClock, RawPeer, config, network, parse_request, raw_peer, response

from p2p.dht import DHT
from p2p.dht.observed import OBSERVATION_QUORUM, OBSERVATION_TTL, AddressVote, observer_network
from p2p.dht.protocol import IDENTIFY_TAG
from p2p.encoding import pack
from p2p.identity import Identity

HONEST = ("198.51.100.7", 4000)
FAKE = ("203.0.113.66", 6666)
HONEST6 = ("2001:db8:1::7", 4000)
FAKE6 = ("2001:db8:bad::66", 6666)


def test_quorum_is_more_than_one() -> None:
    assert OBSERVATION_QUORUM >= 2


def test_one_liar_first_then_honest_peers_from_other_networks() -> None:
    vote = AddressVote()
    vote.observe(("192.0.2.1", 1), FAKE, 0.0)
    assert vote.agreed(4, 0.0) is None  # one answer decides nothing
    vote.observe(("10.1.1.1", 1), HONEST, 1.0)
    vote.observe(("10.2.2.2", 1), HONEST, 2.0)
    vote.observe(("10.3.3.3", 1), HONEST, 3.0)
    assert vote.agreed(4, 3.0) == HONEST
    assert vote.agreed(6, 3.0) is None


def test_many_votes_from_one_slash24_count_once() -> None:
    vote = AddressVote()
    for last in range(1, 200):
        vote.observe((f"192.0.2.{last}", 1), FAKE, float(last))
    assert vote.tally(4, 200.0)[FAKE] == 1
    assert vote.agreed(4, 200.0) is None
    vote.observe(("10.1.1.1", 1), HONEST, 201.0)
    vote.observe(("10.2.2.2", 1), HONEST, 202.0)
    assert vote.agreed(4, 202.0) == HONEST
    # a network changing its story still has one vote, its latest
    vote.observe(("192.0.2.9", 1), HONEST, 203.0)
    assert vote.tally(4, 203.0) == {HONEST: 3}


def test_votes_expire() -> None:
    vote = AddressVote()
    vote.observe(("10.1.1.1", 1), HONEST, 0.0)
    vote.observe(("10.2.2.2", 1), HONEST, 10.0)
    assert vote.agreed(4, OBSERVATION_TTL - 1) == HONEST
    assert vote.agreed(4, OBSERVATION_TTL + 1) is None  # the first vote is too old
    vote.observe(("10.3.3.3", 1), HONEST, OBSERVATION_TTL + 2)
    assert vote.agreed(4, OBSERVATION_TTL + 2) == HONEST
    vote.expire(OBSERVATION_TTL + 5)
    assert len(vote) == 2
    vote.expire(10 * OBSERVATION_TTL)
    assert len(vote) == 0 and vote.agreed(4, 10 * OBSERVATION_TTL) is None


def test_ipv6_observers_count_per_slash48() -> None:
    assert observer_network("2001:db8:1:2::1") == observer_network("2001:db8:1:ffff::9")
    assert observer_network("2001:db8:1::1") != observer_network("2001:db8:2::1")
    assert observer_network("192.0.2.1") == "192.0.2.0/24"
    vote = AddressVote()
    vote.observe(("2001:db8:bad:1::1", 1), FAKE6, 0.0)
    for n in range(2, 50):
        vote.observe((f"2001:db8:bad:{n:x}::1", 1), FAKE6, float(n))
    assert vote.agreed(6, 50.0) is None  # one /48, one vote
    vote.observe(("2001:db8:1::1", 1), HONEST6, 51.0)
    vote.observe(("2001:db8:2::1", 1), HONEST6, 52.0)
    assert vote.agreed(6, 52.0) == HONEST6
    assert vote.agreed(4, 52.0) is None


def test_the_vote_is_bounded() -> None:
    vote = AddressVote(max_voters=8)
    for n in range(100):
        vote.observe((f"10.{n}.0.1", 1), HONEST, float(n))
    assert len(vote) == 8
    assert vote.agreed(4, 100.0) == HONEST
    with pytest.raises(ValueError):
        AddressVote(quorum=0)


class Claimer(RawPeer):
    """A node with a real key whose identify answer signs a made-up observed address."""

    def __init__(self, claim: tuple[str, int]) -> None:
        super().__init__()
        self.identity = Identity.generate()
        self.claim = claim
        self.answered = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg_id, name, args = parse_request(data)
        if name == "identify":
            observed = list(self.claim)
            sig = self.identity.sign(IDENTIFY_TAG + args[1] + self.identity.node_id + args[0]
                                     + pack(observed))
            self.send(response(msg_id, [self.identity.public_key, sig, *observed]), addr)
            self.answered += 1
        elif name == "ping":
            self.send(response(msg_id, self.identity.node_id), addr)
        elif name == "find_node":
            self.send(response(msg_id, []), addr)


async def test_a_liar_answering_first_does_not_lock_out_honest_contacts() -> None:
    made_up = ("127.9.9.9", 9999)  # the same kind (IPv4 loopback) as the honest answers
    async with network(4) as nodes, raw_peer(Claimer, claim=made_up) as liar:
        victim = nodes[3]
        assert await victim.bootstrap([liar.addr]) == 1
        assert liar.answered == 1
        honest = [("127.0.0.1", d.port) for d in nodes[:3]]
        async with asyncio.timeout(5):
            assert await victim.bootstrap(honest) == 3
        known = {bytes(c.id) for bucket in victim.protocol.router.buckets
                 for c in bucket.get_nodes()}
        assert {d.node_id for d in nodes[:3]} <= known
        assert victim.reachable_addresses() == (("127.0.0.1", victim.port),)


async def test_agreeing_networks_move_the_address_until_their_votes_expire() -> None:
    made_up = ("192.0.2.200", 7000)
    clock = FakeClock()
    async with network(2, monotonic_clock=clock) as nodes, \
            raw_peer(Claimer, host="127.0.1.1", claim=made_up) as one, \
            raw_peer(Claimer, host="127.0.1.2", claim=made_up) as same, \
            raw_peer(Claimer, host="127.0.2.1", claim=made_up) as other:
        victim = nodes[1]
        bound = (("127.0.0.1", victim.port),)
        await victim.bootstrap([one.addr, same.addr])  # one /24: one vote
        assert victim.reachable_addresses() == bound
        await victim.bootstrap([other.addr])  # a second /24 agrees
        assert victim.reachable_addresses() == (made_up,)
        clock.advance(OBSERVATION_TTL)  # the injected monotonic clock dates the votes
        assert victim.reachable_addresses() == bound
        async with DHT.open_ctx(Identity.generate(), config(
                announce_addrs=(HONEST,), bootstrap=(one.addr, other.addr))) as told:
            assert told.protocol.observed.agreed(4, told.protocol.monotonic()) == made_up
            assert told.reachable_addresses() == (HONEST,)  # announce_addrs overrides the vote
