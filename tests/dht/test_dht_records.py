"""Records and the record store as pure objects: no sockets, time passed in."""

from __future__ import annotations

import os
import time

import pytest

from p2p.dht.errors import InvalidRecord
from p2p.dht.records import (
    CHANNEL_TTL,
    MAX_RECORD_SIZE,
    PROVIDER_TTL,
    VerifyCache,
    channel_key,
    decode_record,
    discovery_key,
    peer_key,
    sign_channel,
    sign_peer,
    sign_provider,
)
from p2p.dht.store import MAX_PROVIDERS_PER_KEY, PutStatus, RecordStore
from p2p.encoding import pack, unpack
from p2p.errors import BadInput, BadSignature, DecodeError
from p2p.identity import Identity

NOW = 1_800_000_000.0
ADDR = (("192.0.2.7", 4000),)


def test_discovery_key_hides_the_content_id() -> None:
    cid = os.urandom(32)
    dkey = discovery_key(cid)
    assert len(dkey) == 20 and dkey not in cid
    assert discovery_key(cid) == dkey != discovery_key(os.urandom(32))


def test_round_trip_each_kind() -> None:
    me = Identity.generate()
    cache = VerifyCache()
    dkey = discovery_key(os.urandom(32))
    for signed in (
        sign_provider(me, dkey, ADDR, NOW),
        sign_peer(me, ADDR, NOW),
        sign_channel(me, "docs", os.urandom(32), 7, NOW),
    ):
        again = decode_record(signed.raw, signed.key, NOW + 1, cache)
        assert again == signed
        assert len(signed.raw) <= MAX_RECORD_SIZE


def test_signature_covers_the_discovery_key_not_the_content_id() -> None:
    me = Identity.generate()
    cid = os.urandom(32)
    signed = sign_provider(me, discovery_key(cid), ADDR, NOW)
    with pytest.raises(BadSignature):  # moved to another key
        decode_record(signed.raw, discovery_key(os.urandom(32)), NOW, VerifyCache())


def test_forged_record_refused() -> None:
    me, mallory = Identity.generate(), Identity.generate()
    dkey = discovery_key(os.urandom(32))
    honest = unpack(sign_provider(me, dkey, ADDR, NOW).raw, max_bin=64)
    forged = unpack(sign_provider(mallory, dkey, (("198.51.100.1", 1),), NOW).raw, max_bin=64)
    honest[2] = forged[2]  # my key, mallory's addresses, my signature
    with pytest.raises(BadSignature):
        decode_record(pack(honest), dkey, NOW, VerifyCache())
    forged[1] = me.public_key  # claims to be me, signed by mallory
    with pytest.raises(BadSignature):
        decode_record(pack(forged), dkey, NOW, VerifyCache())


def test_wrong_key_peer_and_channel_records_refused() -> None:
    me, other = Identity.generate(), Identity.generate()
    peer = sign_peer(me, ADDR, NOW)
    with pytest.raises(InvalidRecord):
        decode_record(peer.raw, peer_key(other.peer_id), NOW, VerifyCache())
    chan = sign_channel(me, "a", os.urandom(32), 1, NOW)
    with pytest.raises(InvalidRecord):
        decode_record(chan.raw, channel_key(me.peer_id, "b"), NOW, VerifyCache())


def test_expired_and_far_future_records_refused() -> None:
    me = Identity.generate()
    dkey = discovery_key(os.urandom(32))
    signed = sign_provider(me, dkey, ADDR, NOW)
    with pytest.raises(InvalidRecord, match="expired"):
        decode_record(signed.raw, dkey, NOW + PROVIDER_TTL + 1, VerifyCache())
    far = sign_provider(me, dkey, ADDR, NOW, ttl=30 * 24 * 3600)
    with pytest.raises(InvalidRecord, match="future"):
        decode_record(far.raw, dkey, NOW, VerifyCache())


def test_oversize_and_malformed_records_refused() -> None:
    dkey = os.urandom(20)
    with pytest.raises(DecodeError):
        decode_record(b"\x00" * (MAX_RECORD_SIZE + 1), dkey, NOW, VerifyCache())
    for bad in (b"", b"\xc1", pack([1]), pack([9, b"", [], 1, b""]), pack("x"),
                pack([1, b"k" * 32, [["example.com", 80]], int(NOW) + 5, b"s" * 64]),
                pack([1, b"k" * 32, [["10.0.0.1", 70000]], int(NOW) + 5, b"s" * 64]),
                pack([1, b"k" * 32, [["0.0.0.0", 80]], int(NOW) + 5, b"s" * 64])):
        with pytest.raises(DecodeError):
            decode_record(bad, dkey, NOW, VerifyCache())
    with pytest.raises(DecodeError):  # non-canonical msgpack (int as uint64)
        decode_record(b"\x95\xcf" + (1).to_bytes(8, "big") + b"\xc0\xc0\xc0\xc0", dkey, NOW, VerifyCache())


def test_bad_local_input_is_bad_input() -> None:
    me = Identity.generate()
    with pytest.raises(BadInput):
        sign_provider(me, os.urandom(20), (("localhost", 80),), NOW)
    with pytest.raises(BadInput):
        sign_provider(me, os.urandom(20), (), NOW)
    with pytest.raises(BadInput):
        discovery_key(b"short")
    with pytest.raises(BadInput):
        sign_channel(me, "x" * 65, os.urandom(32), 1, NOW)


def test_verify_cache_hits_on_repeat_and_never_accepts_a_forgery() -> None:
    me = Identity.generate()
    cache = VerifyCache()
    sig = me.sign(b"m")
    cache.verify(me.public_key, sig, b"m")
    cache.verify(me.public_key, sig, b"m")
    assert (cache.hits, cache.misses) == (1, 1)
    for _ in range(2):
        with pytest.raises(BadSignature):
            cache.verify(me.public_key, sig, b"other")


def test_store_channel_sequence_rules() -> None:
    me = Identity.generate()
    store = RecordStore()
    a, b = os.urandom(32), os.urandom(32)
    assert store.put(sign_channel(me, "n", a, 5, NOW), NOW) == PutStatus.OK
    assert store.put(sign_channel(me, "n", b, 4, NOW), NOW) == PutStatus.STALE  # replay
    assert store.put(sign_channel(me, "n", b, 5, NOW), NOW) == PutStatus.STALE  # same seq, other value
    assert store.put(sign_channel(me, "n", a, 5, NOW + 10), NOW) == PutStatus.OK  # refresh
    assert store.put(sign_channel(me, "n", b, 6, NOW), NOW) == PutStatus.OK
    held = store.get(3, channel_key(me.peer_id, "n"), NOW)
    assert held is not None and held.record.seq == 6  # type: ignore[union-attr]
    assert store.get(3, channel_key(me.peer_id, "n"), NOW + CHANNEL_TTL + 1) is None


def test_store_providers_merge_one_per_peer_and_cap() -> None:
    store = RecordStore()
    dkey = os.urandom(20)
    me = Identity.generate()
    assert store.put(sign_provider(me, dkey, ADDR, NOW + 5), NOW) == PutStatus.OK
    assert store.put(sign_provider(me, dkey, ADDR, NOW), NOW) == PutStatus.STALE
    assert store.put(sign_provider(me, dkey, ADDR, NOW + 9), NOW) == PutStatus.OK
    assert len(store.providers(dkey, NOW, 100)) == 1
    for _ in range(MAX_PROVIDERS_PER_KEY - 1):
        assert store.put(sign_provider(Identity.generate(), dkey, ADDR, NOW), NOW) == PutStatus.OK
    # all at one host: the newcomer's network and host already hold the most, so nothing is
    # evicted for it (newcomers from other networks are: tests/dht/test_dht_sybil.py)
    assert store.put(sign_provider(Identity.generate(), dkey, ADDR, NOW), NOW) == PutStatus.FULL
    assert len(store.providers(dkey, NOW, 100)) == MAX_PROVIDERS_PER_KEY
    assert store.expire(NOW + PROVIDER_TTL + 10) == MAX_PROVIDERS_PER_KEY
    assert store.counts()["provider"] == 0


def test_wall_clock_is_sane() -> None:
    # the records use Unix seconds; a test machine with a broken clock would fail everything
    assert time.time() > NOW - 10 * 365 * 86400


# -- relay hints (docs/PROTOCOL.md, Relays) -------------------------------------------------


def test_relay_hints_round_trip_and_old_records_still_parse() -> None:
    from p2p.address import RelayHint
    from p2p.dht.records import MAX_RELAY_HINTS, ProviderRecord

    me, relay = Identity.generate(), Identity.generate()
    dkey = discovery_key(os.urandom(32))
    hint = RelayHint(relay.peer_id, ("203.0.113.10", 7473))
    signed = sign_provider(me, dkey, (), NOW, relays=(hint,))
    rec = decode_record(signed.raw, dkey, NOW, VerifyCache()).record
    assert isinstance(rec, ProviderRecord)
    assert rec.addresses == () and rec.relays == (hint,)
    assert unpack(signed.raw, max_bin=64)[2] == [["203.0.113.10", 7473, relay.public_key]]
    # The layout before relays: [[ip, port], ...] only, parsed as it always was.
    body = [me.public_key, [["192.0.2.7", 4000]], int(NOW) + 60]
    old = pack([1, *body, me.sign(b"p2p-dht-provider-v1\x00" + dkey + pack(body))])
    rec = decode_record(old, dkey, NOW, VerifyCache()).record
    assert isinstance(rec, ProviderRecord)
    assert rec.addresses == (("192.0.2.7", 4000),) and rec.relays == ()
    # Worst case: the longest canonical IPv6 text for two direct addresses and two hints.
    v6 = "2001:db8:ffff:ffff:ffff:ffff:ffff:fff"
    big = sign_peer(me, [(v6 + "1", 65535), (v6 + "2", 65535)], NOW,
                    relays=[RelayHint(relay.peer_id, (v6 + "3", 65535))] * MAX_RELAY_HINTS)
    assert len(big.raw) <= MAX_RECORD_SIZE
    with pytest.raises(BadInput, match="relay hints"):
        sign_peer(me, [], NOW, relays=[hint] * (MAX_RELAY_HINTS + 1))


def test_a_relay_only_record_counts_where_it_came_from() -> None:
    from p2p.address import RelayHint

    store = RecordStore()
    dkey = discovery_key(os.urandom(32))
    relay = Identity.generate().peer_id
    hint = RelayHint(relay, ("203.0.113.10", 7473))
    # A crowd of relay-only records from one network fills the key ...
    for i in range(MAX_PROVIDERS_PER_KEY):
        signed = sign_provider(Identity.generate(), dkey, (), NOW, relays=(hint,))
        assert store.put(signed, NOW, source=(f"198.51.100.{i + 1}", 7473)) == PutStatus.OK
    # ... and a NATed provider of another network behind the same relay still gets in: each
    # counts where it came from, not under the relay's address they all name.
    newcomer = sign_provider(Identity.generate(), dkey, (), NOW, relays=(hint,))
    assert store.put(newcomer, NOW, source=("192.0.2.5", 7473)) == PutStatus.OK
