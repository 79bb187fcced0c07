"""A crowd of fresh keys cannot hide an honest provider (issue 12, item 2).

Pure tests of the record store's rules (expiry bound, fair reply sample, per-network
eviction) and of the lookup's merge, then real DHT nodes on 127.0.0.1: 64 provider records
from throw-away keys in one /24 (127.9.9.x, nothing listening there) with the latest expiry
a node accepts, and one honest provider; a lookup from another node finds the honest one.
Loopback addresses other than 127.0.0.1 stand in for other hosts and networks in the
records' addresses.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest
from dhtnet import config, network

from p2p.dht import DHT
from p2p.dht.errors import InvalidRecord
from p2p.dht.lookup import PROVIDER_SOURCES, ProviderMerge
from p2p.dht.records import (
    CLOCK_SKEW,
    PROVIDER_TTL,
    SignedRecord,
    VerifyCache,
    decode_record,
    discovery_key,
    sign_provider,
)
from p2p.dht.store import (
    MAX_PROVIDERS_PER_KEY,
    PROVIDER_HOLD,
    REPLY_PER_NETWORK,
    PutStatus,
    RecordStore,
    network_of,
)
from p2p.identity import Identity

NOW = 1_800_000_000.0
LATEST = PROVIDER_TTL + CLOCK_SKEW
"""The longest ttl a node accepts: the flood's best offer."""
REPLY = 16
"""MAX_RECORDS_PER_REPLY of a ``get`` reply."""
DKEY = discovery_key(bytes(32))


def provider(addr: str, now: float = NOW, ttl: int = PROVIDER_TTL, key: bytes = DKEY,
             identity: Identity | None = None) -> SignedRecord:
    return sign_provider(identity or Identity.generate(), key, ((addr, 4000),), now, ttl=ttl)


def sybils(n: int, network: str = "127.9.9", now: float = NOW, key: bytes = DKEY,
           ) -> list[SignedRecord]:
    """``n`` records from fresh keys, each at its own host of one /24, the latest expiry."""
    return [provider(f"{network}.{1 + i % 250}", now, LATEST, key) for i in range(n)]


@pytest.fixture(scope="module")
def crowd() -> list[SignedRecord]:
    return sybils(MAX_PROVIDERS_PER_KEY)


def test_the_flood_offers_what_a_node_accepts(crowd: list[SignedRecord]) -> None:
    # the attacker's records are valid: the defence is the store's, not a decoding accident
    assert decode_record(crowd[0].raw, DKEY, NOW, VerifyCache()) == crowd[0]
    with pytest.raises(InvalidRecord, match="future"):
        decode_record(provider("127.9.9.1", ttl=LATEST + 1).raw, DKEY, NOW, VerifyCache())


@pytest.mark.parametrize("honest_first", [False, True])
def test_the_honest_provider_is_in_every_reply(crowd: list[SignedRecord], honest_first: bool) -> None:
    honest = provider("198.51.100.7")
    for seed in range(200):
        store = RecordStore(rng=random.Random(seed))
        order = [honest, *crowd] if honest_first else [*crowd, honest]
        statuses = [store.put(r, NOW + i * 0.001) for i, r in enumerate(order)]
        if honest_first:  # the last sybil finds the key full and its own network the largest
            assert statuses[-1] == PutStatus.FULL and store.evicted == 0
        else:  # a full key of one network admits the newcomer from another: a sybil gives way
            assert statuses[-1] == PutStatus.OK and store.evicted == 1
        assert statuses[:-1] == [PutStatus.OK] * (len(order) - 1)
        for probe in range(5):
            reply = store.providers(DKEY, NOW + 60 + probe, REPLY)
            assert len(reply) == REPLY
            assert honest in reply, (seed, probe)
            assert len({r.author for r in reply}) == REPLY


def test_a_few_networks_of_sybils_still_leave_the_older_provider_in_every_reply() -> None:
    honest = provider("198.51.100.7", NOW)
    flood = [r for net in ("127.9.9", "127.9.10", "127.9.11", "127.9.12")
             for r in sybils(16, net, NOW + 100)]
    for seed in range(50):
        store = RecordStore(rng=random.Random(seed))
        assert store.put(honest, NOW) == PutStatus.OK
        for r in flood:
            store.put(r, NOW + 100)
        reply = store.providers(DKEY, NOW + 200, REPLY)
        assert honest in reply
        assert reply[0] == honest  # the oldest present comes first


def test_the_fair_part_of_a_reply_caps_each_network() -> None:
    store = RecordStore(rng=random.Random(1))
    flood = sybils(40, now=NOW)
    others = [provider(f"203.0.{i}.9", NOW + 1) for i in range(10)]
    for r in [*flood, *others]:
        assert store.put(r, NOW + 1) == PutStatus.OK
    reply = store.providers(DKEY, NOW + 2, REPLY)
    # ten networks besides the flood's: they take ten of the sixteen slots, the flood the rest
    assert set(others) <= set(reply)
    fair = reply[: len(others) + REPLY_PER_NETWORK]
    assert sum(r in flood for r in fair) == REPLY_PER_NETWORK


def test_one_lan_alone_is_answered_in_full() -> None:
    # quotas only matter when networks compete: five seeders on one host are all named
    store = RecordStore(rng=random.Random(3))
    lan = [provider("127.0.0.1") for _ in range(5)]
    for r in lan:
        assert store.put(r, NOW) == PutStatus.OK
    assert set(store.providers(DKEY, NOW + 1, REPLY)) == set(lan)


def test_networks_are_ipv4_slash24_and_ipv6_slash48_hosts_ipv6_slash64() -> None:
    assert network_of("192.0.2.200") == network_of("192.0.2.1") != network_of("192.0.3.1")
    assert network_of("2001:db8:1:ffff::1") == network_of("2001:db8:1::2") == "2001:db8:1::/48"
    assert network_of("2001:db8:2::1") != network_of("2001:db8:1::1")
    # a /48 flood from many /64s: one network, so it takes two slots of the fair part
    store = RecordStore(rng=random.Random(4))
    flood = [provider(f"2001:db8:1:{i + 1:x}::1") for i in range(40)]
    honest = provider("2001:db8:77::1")
    for r in [*flood, honest]:
        assert store.put(r, NOW) == PutStatus.OK
    reply = store.providers(DKEY, NOW + 1, REPLY)
    assert honest in reply[: 1 + REPLY_PER_NETWORK]
    # a host is a /64: two keys on one /64 are one host, and share one slot of the fair part
    store = RecordStore(rng=random.Random(4))
    twins = [provider("2001:db8:5:6::1"), provider("2001:db8:5:6::2")]
    others = [provider(f"2001:db8:{9 + i:x}::1") for i in range(REPLY)]
    for r in [*twins, *others]:
        assert store.put(r, NOW) == PutStatus.OK
    reply = store.providers(DKEY, NOW + 1, REPLY)
    assert sum(r in twins for r in reply) == 1


def test_a_flood_from_one_network_cannot_evict_other_networks() -> None:
    store = RecordStore(rng=random.Random(5))
    honest = [provider(f"198.51.{i}.7", NOW) for i in range(20)]
    for r in honest:
        assert store.put(r, NOW) == PutStatus.OK
    statuses = [store.put(r, NOW + 10) for r in sybils(400, now=NOW + 10)]
    assert statuses.count(PutStatus.OK) == MAX_PROVIDERS_PER_KEY - len(honest)
    assert set(statuses) == {PutStatus.OK, PutStatus.FULL}
    held = store.providers(DKEY, NOW + 20, 1000)
    assert len(held) == MAX_PROVIDERS_PER_KEY and set(honest) <= set(held)
    # the full key still admits an honest newcomer from a network not yet present
    late = provider("192.0.2.44", NOW + 30)
    assert store.put(late, NOW + 30) == PutStatus.OK
    held = store.providers(DKEY, NOW + 31, 1000)
    assert late in held and set(honest) <= set(held) and len(held) == MAX_PROVIDERS_PER_KEY
    # ...and refuses one more from the flood's network, which holds more than its share
    assert store.put(provider("127.9.9.200", NOW + 40, LATEST), NOW + 40) == PutStatus.FULL


def test_a_flood_from_a_few_networks_cannot_evict_single_records() -> None:
    store = RecordStore(rng=random.Random(6))
    honest = [provider(f"198.51.{i}.7", NOW) for i in range(12)]
    for r in honest:
        assert store.put(r, NOW) == PutStatus.OK
    for round_ in range(3):  # the flood keeps coming from fresh keys
        for net in ("127.9.9", "127.9.10", "127.9.11"):
            for r in sybils(40, net, NOW + 10 + round_):
                store.put(r, NOW + 10 + round_)
    held = store.providers(DKEY, NOW + 20, 1000)
    assert set(honest) <= set(held) and len(held) == MAX_PROVIDERS_PER_KEY
    # the flood's networks share what is left evenly: (64 - 12) / 3 = 17 or 18 each
    per_net = {n: sum(r.record.addresses[0][0].startswith(n + ".") for r in held)  # type: ignore[union-attr]
               for n in ("127.9.9", "127.9.10", "127.9.11")}
    assert sorted(per_net.values()) == [17, 17, 18]
    # a network holding one record among them is never the one that gives way
    newcomer = provider("127.9.12.1", NOW + 30)
    assert store.put(newcomer, NOW + 30) == PutStatus.OK
    held2 = store.providers(DKEY, NOW + 31, 1000)
    assert newcomer in held2 and set(honest) <= set(held2)


def test_a_crowd_claiming_many_networks_counts_where_it_was_stored_from() -> None:
    # one host puts 64 records that each claim another /24: the claims are free
    claims = [provider(f"10.{i}.0.1", ttl=LATEST) for i in range(MAX_PROVIDERS_PER_KEY)]
    attacker = ("203.0.113.9", 40000)
    honest = provider("198.51.100.7")
    for seed in range(50):
        store = RecordStore(rng=random.Random(seed))
        for r in claims:
            assert store.put(r, NOW, source=attacker) == PutStatus.OK
        # the honest provider stores its own record: it counts where its address says
        assert store.put(honest, NOW + 1, source=("198.51.100.7", 4000)) == PutStatus.OK
        assert honest in store.providers(DKEY, NOW + 2, REPLY)
        assert store.put(provider("10.200.0.1"), NOW + 3, source=attacker) == PutStatus.FULL
    # Without the source (the record's word alone) the same crowd is 64 networks of one
    # record each: nothing is evicted for a newcomer.
    store = RecordStore()
    for r in claims:
        assert store.put(r, NOW) == PutStatus.OK
    assert store.put(honest, NOW + 1) == PutStatus.FULL


def test_eviction_takes_the_youngest_of_the_largest_network() -> None:
    store = RecordStore(max_providers_per_key=4, rng=random.Random(0))
    a1, a2, a3 = (provider(f"127.9.9.{i}", NOW + i) for i in (1, 2, 3))
    b = provider("198.51.100.1", NOW)
    for i, r in enumerate((a1, a2, a3, b)):
        assert store.put(r, NOW + i) == PutStatus.OK
    c = provider("203.0.113.5", NOW + 10)
    assert store.put(c, NOW + 10) == PutStatus.OK  # 3 > 0 + 1: a3, the youngest of 127.9.9, goes
    assert set(store.providers(DKEY, NOW + 11, 10)) == {a1, a2, b, c}
    d = provider("192.0.2.5", NOW + 20)
    assert store.put(d, NOW + 20) == PutStatus.OK  # 2 > 0 + 1: a2 goes
    assert set(store.providers(DKEY, NOW + 21, 10)) == {a1, b, c, d}
    # one record per network: nothing would get more even, so the newcomer is refused
    assert store.put(provider("192.0.2.99", NOW + 30), NOW + 30) == PutStatus.FULL
    assert set(store.providers(DKEY, NOW + 31, 10)) == {a1, b, c, d}


def test_a_record_lives_at_most_the_hold_after_it_was_stored() -> None:
    store = RecordStore()
    long_lived = provider("198.51.100.7", ttl=LATEST)  # signed 600 s beyond the TTL
    assert store.put(long_lived, NOW) == PutStatus.OK
    assert store.providers(DKEY, NOW + PROVIDER_HOLD - 1, REPLY) == [long_lived]
    assert store.providers(DKEY, NOW + PROVIDER_HOLD, REPLY) == []  # not NOW + TTL + 600
    assert store.expire(NOW + PROVIDER_HOLD) == 1
    # a refresh restarts the hold but not beyond the signed expiry
    me = Identity.generate()
    first = provider("198.51.100.8", NOW, identity=me)
    assert store.put(first, NOW) == PutStatus.OK
    again = provider("198.51.100.8", NOW + 3600, identity=me)
    assert store.put(again, NOW + 3600) == PutStatus.OK
    assert store.providers(DKEY, NOW + PROVIDER_TTL + 1, REPLY) == [again]
    assert store.providers(DKEY, NOW + 3600 + PROVIDER_TTL, REPLY) == []


def test_presence_survives_refresh_and_is_lost_when_the_record_lapses() -> None:
    me = Identity.generate()
    store = RecordStore(rng=random.Random(2))
    assert store.put(provider("198.51.100.7", NOW, identity=me), NOW) == PutStatus.OK
    for i in range(30):
        store.put(provider(f"203.0.{i}.1", NOW + 100), NOW + 100)
    # re-announced every hour: still the oldest present, so first in every reply
    for hour in (1, 2, 3, 4):
        t = NOW + hour * 3600
        assert store.put(provider("198.51.100.7", t, identity=me), t) == PutStatus.OK
        assert store.put(provider("203.0.99.1", t), t) == PutStatus.OK
    assert store.providers(DKEY, NOW + 4 * 3600 + 1, REPLY)[0].author == me.public_key
    # a provider that went away longer than the hold comes back as a newcomer
    t = NOW + 4 * 3600 + PROVIDER_HOLD + 10
    for i in range(3):
        store.put(provider(f"192.0.{i}.1", t - 5), t - 5)
    assert store.put(provider("198.51.100.7", t, identity=me), t) == PutStatus.OK
    assert store.providers(DKEY, t + 1, REPLY)[0].author != me.public_key


def test_the_merge_lets_no_single_reply_fill_the_result(crowd: list[SignedRecord]) -> None:
    honest = provider("198.51.100.7")
    merge = ProviderMerge(limit=REPLY)
    assert merge.share == REPLY // PROVIDER_SOURCES
    first = merge.offer(crowd[:REPLY])  # a flooded (or lying) node answers first
    assert first == crowd[: merge.share] and not merge.full
    second = merge.offer([crowd[0], honest, *crowd[REPLY:2 * REPLY]])
    assert honest in second and crowd[0] not in second  # each author once
    assert not merge.open
    rest = [r for _ in range(PROVIDER_SOURCES - 2) for r in merge.offer([])]
    assert merge.open
    got = [*first, *second, *rest]
    assert len(got) == REPLY == len({r.author for r in got}) and merge.full
    assert merge.offer([provider("192.0.2.1")]) == []  # nothing past the limit


def test_the_merge_lifts_the_share_once_enough_nodes_answered() -> None:
    merge = ProviderMerge(limit=64)
    records = [provider(f"203.0.{i}.1") for i in range(20)]
    held_back = merge.offer(records)
    assert len(held_back) == merge.share == 64 // PROVIDER_SOURCES
    for _ in range(PROVIDER_SOURCES - 2):
        assert merge.offer([]) == []
    # the sixth reply lifts the share: its own records and everything held back come out
    late = provider("192.0.2.1")
    out = merge.offer([late])
    assert late in out and {*held_back, *out} == {*records, late}
    assert merge.finish() == []


# -- real nodes ------------------------------------------------------------------------------


async def _flood(attacker: DHT, key: bytes, records: list[SignedRecord]) -> None:
    """Put ``records`` on every node ``attacker`` knows, over the wire, as an attacker would."""
    targets = attacker.protocol.router.contacts()
    for signed in records:
        statuses = await asyncio.gather(*(attacker.protocol.call_put(n, key, signed.raw)
                                          for n in targets))
        assert set(statuses) <= {PutStatus.OK, PutStatus.FULL}


async def test_sixty_four_sybils_in_one_network_cannot_hide_the_honest_provider() -> None:
    async with network(10) as nodes:
        cid = os.urandom(32)
        dkey = discovery_key(cid)
        async with asyncio.timeout(20):
            # the crowd comes first: it is older than the honest provider everywhere
            await _flood(nodes[-1], dkey, sybils(MAX_PROVIDERS_PER_KEY, now=time.time(), key=dkey))
            assert max(d.summary().records["provider"] for d in nodes) == MAX_PROVIDERS_PER_KEY
            # The honest provider is another host, in another network, and announces its own
            # address (the crowd's puts all come from 127.0.0.1, whatever their records claim).
            boot = nodes[0].listen_addresses()[:1]
            async with DHT.open_ctx(Identity.generate(), config(host="127.0.1.2", bootstrap=boot)) as honest, \
                    DHT.open_ctx(Identity.generate(), config(bootstrap=boot)) as late:
                assert await honest.announce(cid, [("127.0.1.2", honest.port)]) >= 1
                for _ in range(3):
                    found = await late.find_providers(cid)
                    assert honest._identity.peer_id in {r.peer_id for r in found}
                    assert len(found) > REPLY  # several nodes' replies were merged
                    few = [r.peer_id async for r in late.iter_providers(cid, limit=3)]
                    assert honest._identity.peer_id in few


async def test_a_lookup_merges_several_nodes_so_flooded_nodes_cannot_fill_it() -> None:
    async with network(10) as nodes:
        cid = os.urandom(32)
        dkey = discovery_key(cid)
        now = time.time()
        honest = Identity.generate()
        honest_rec = sign_provider(honest, dkey, (("127.0.0.2", 4000),), now)
        crowd = [sign_provider(Identity.generate(), dkey, (("127.0.0.1", 5000 + i),), now,
                               ttl=LATEST) for i in range(REPLY)]
        # The three nodes closest to the key, asked first, hold only the crowd (all on one
        # host: the reply quotas cannot help them); the others hold only the honest record.
        by_distance = sorted(nodes[1:], key=lambda d: int.from_bytes(d.node_id, "big")
                             ^ int.from_bytes(dkey, "big"))
        for d in by_distance[:3]:
            for r in crowd:
                assert d._records.put(r, now) == PutStatus.OK
        for d in by_distance[3:]:
            assert d._records.put(honest_rec, now) == PutStatus.OK
        async with asyncio.timeout(10):
            few = [r.peer_id async for r in nodes[0].iter_providers(cid, limit=4)]
        assert honest.peer_id in few and len(few) == 4 == len(set(few))
