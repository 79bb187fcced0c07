"""LAN advertisements are untrusted input: the TXT parser and the admission bounds (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.identity import PeerId
from p2p.lan import (
    ACCEPT_BURST,
    MAX_ADDRESSES,
    MAX_TXT_BYTES,
    Admission,
    BadAdvert,
    LanPeer,
    advert_txt,
    parse_advert,
)

NETS = [ipaddress.IPv4Network("10.78.0.0/24")]
PEER = PeerId(bytes(range(32)))
OTHER = PeerId(bytes(range(1, 33)))


def props(peer: PeerId = PEER, dht: int = 7473) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in advert_txt(peer, dht).items()}


def parse(p: dict[bytes, bytes | None] | dict[object, object], addrs: list[str] | None = None,
          port: object = 7473, text_len: int = 90, own: PeerId | None = OTHER) -> LanPeer:
    return parse_advert("x._p2p._tcp.local.", p, text_len, addrs or ["10.78.0.5"], port,
                        networks=NETS, own=own)


def test_a_valid_advertisement_round_trips() -> None:
    found = parse(props(dht=7000), ["10.78.0.5", "10.78.0.6"], port=7001)
    assert found.peer == PEER
    assert found.addresses == (("10.78.0.5", 7001), ("10.78.0.6", 7001))
    assert found.dht_addresses == [("10.78.0.5", 7000), ("10.78.0.6", 7000)]


@pytest.mark.parametrize(("change", "why"), [
    ({b"v": b"2"}, "version"),
    ({b"v": None}, "version"),
    ({b"id": b"p2p1notbase32!!"}, "bad peer id"),
    ({b"id": b"\xff\xfe"}, "bad peer id"),
    ({b"id": b"x" * 500}, "no peer id"),
    ({b"id": None}, "no peer id"),
    ({b"dht": b"0"}, "not a port"),
    ({b"dht": b"70000"}, "not a port"),
    ({b"dht": b"-1"}, "not a port number"),
    ({b"dht": b"99999999999999999999"}, "not a port number"),
    ({b"dht": None}, "not a port number"),
])
def test_hostile_fields_are_refused(change: dict[bytes, bytes | None], why: str) -> None:
    with pytest.raises(BadAdvert, match=why):
        parse({**props(), **change})


def test_huge_many_keys_wrong_types_and_foreign_addresses_are_refused() -> None:
    with pytest.raises(BadAdvert, match="larger"):
        parse(props(), text_len=MAX_TXT_BYTES + 1)
    with pytest.raises(BadAdvert, match="too many"):
        parse({**props(), **{f"k{i}".encode(): b"" for i in range(20)}})
    for port in (None, "7473", 0, 65536, True, 7.5):
        with pytest.raises(BadAdvert, match="port"):
            parse(props(), port=port)
    # Off our networks, loopback, multicast, garbage: a forged advert cannot aim us elsewhere.
    with pytest.raises(BadAdvert, match="no address"):
        parse(props(), ["192.0.2.1", "127.0.0.1", "224.0.0.251", "0.0.0.0", "not-an-ip", "::1"])
    with pytest.raises(BadAdvert, match="own"):
        parse(props(), own=PEER)


def test_addresses_are_capped_and_deduplicated() -> None:
    addrs = [f"10.78.0.{i}" for i in range(1, 30)] + ["10.78.0.1"]
    found = parse(props(), addrs)
    assert len(found.addresses) == MAX_ADDRESSES
    assert len(set(found.addresses)) == MAX_ADDRESSES


@given(st.dictionaries(st.one_of(st.binary(max_size=8), st.text(max_size=4)),
                       st.one_of(st.none(), st.binary(max_size=80), st.integers()), max_size=20),
       st.lists(st.text(max_size=40), max_size=8), st.one_of(st.none(), st.integers(), st.text()))
def test_any_garbage_is_a_bad_advert_or_a_valid_peer(p: dict[object, object], addrs: list[str],
                                                     port: object) -> None:
    try:
        found = parse(p, addrs, port=port)
    except BadAdvert:
        return
    assert found.addresses and all(0 < a[1] < 65536 for a in found.addresses)


def peer(n: int) -> LanPeer:
    return LanPeer(PeerId(n.to_bytes(32, "big")), (("10.78.0.5", 7473),), 7473, f"n{n}")


def test_a_flood_is_admitted_at_the_rate_and_up_to_the_cap() -> None:
    gate = Admission(max_peers=40, rate=2.0, burst=ACCEPT_BURST)
    accepted = sum(gate.admit(peer(n), now=0.0) for n in range(1000))
    assert accepted == ACCEPT_BURST and gate.refused == 1000 - ACCEPT_BURST
    # One second later: two more tokens, not more.
    assert sum(gate.admit(peer(n), now=1.0) for n in range(1000, 1010)) == 2
    # A long time later the bucket is full again, but the table holds at most max_peers.
    assert sum(gate.admit(peer(n), now=1e6) for n in range(2000, 2100)) == ACCEPT_BURST
    assert sum(gate.admit(peer(n), now=2e6) for n in range(3000, 3100)) == 40 - 18 - ACCEPT_BURST
    assert len(gate.peers) == 40


def test_known_peers_update_freely_and_leave_by_name() -> None:
    gate = Admission(max_peers=1, rate=0.0, burst=1)
    first = peer(1)
    assert gate.admit(first, now=0.0)
    moved = LanPeer(first.peer, (("10.78.0.9", 7473),), 7473, "n1")
    assert gate.admit(moved, now=0.0)  # an address change needs no token and no room
    assert gate.peers[first.peer].addresses == (("10.78.0.9", 7473),)
    assert not gate.admit(peer(2), now=0.0)
    assert gate.forget_name("n1") == moved and not gate.peers
    assert gate.forget_name("n1") is None
