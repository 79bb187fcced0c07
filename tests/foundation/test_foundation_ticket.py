"""Tickets and the id-or-ticket parser (p2p.content.ticket)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.address import normalize_host
from p2p.content import ContentId, Ticket, make_ticket, parse_id_or_ticket
from p2p.content.ticket import MAX_TICKET_ADDRS
from p2p.encoding import b32encode, pack
from p2p.errors import BadInput
from p2p.identity import PeerId

digests = st.binary(min_size=32, max_size=32)
addresses = st.tuples(st.ip_addresses().map(str), st.integers(1, 65535))

CID = ContentId(bytes(range(32)))
PUB = PeerId(bytes(range(32, 64)))


def _ticket_text(payload: object) -> str:
    return "p2pt1" + b32encode(pack(payload))


@given(digests, digests, st.lists(addresses, max_size=MAX_TICKET_ADDRS))
def test_ticket_round_trip(cid: bytes, pub: bytes, addrs: list[tuple[str, int]]) -> None:
    ticket = Ticket(ContentId(cid), PeerId(pub), tuple(addrs))
    text = str(ticket)
    assert text.startswith("p2pt1")
    assert text == text.lower()
    assert Ticket.parse(text) == ticket
    assert Ticket.parse(text.upper()) == ticket
    assert Ticket.parse(f" {text}\n") == ticket
    assert parse_id_or_ticket(text) == (ContentId(cid), ticket)


def test_ticket_carries_v4_and_v6() -> None:
    hosts = ["192.0.2.1", "2001:db8::1", normalize_host("::ffff:10.0.0.1")]
    ticket = Ticket(CID, PUB, ((hosts[0], 4001), (hosts[1], 65535), (hosts[2], 1)))
    assert Ticket.parse(str(ticket)).addresses == ticket.addresses
    # Addresses travel packed: a host spelled differently comes back in its canonical form.
    loose = Ticket(CID, PUB, (("2001:DB8:0::1", 80),))
    assert Ticket.parse(str(loose)).addresses == (("2001:db8::1", 80),)


def test_make_ticket_normalizes_skips_and_caps() -> None:
    given_addrs = [("0.0.0.0", 1), ("::", 2), ("not-an-ip", 3), ("[2001:DB8::1]", 4),
                   ("2001:db8:0::1", 4)] + [(f"10.0.0.{i}", 5) for i in range(20)]
    ticket = make_ticket(CID, PUB, given_addrs)
    assert ticket.addresses[0] == ("2001:db8::1", 4)  # brackets and case normalized, then deduped
    assert len(ticket.addresses) == MAX_TICKET_ADDRS
    assert ticket.addresses[1:] == tuple((f"10.0.0.{i}", 5) for i in range(MAX_TICKET_ADDRS - 1))
    assert Ticket.parse(str(ticket)) == ticket


def test_ticket_without_addresses() -> None:
    ticket = make_ticket(CID, PUB, [])
    assert ticket.addresses == ()
    assert Ticket.parse(str(ticket)) == ticket


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "not a ticket", id="empty"),
        pytest.param(str(CID), "not a ticket", id="content-id"),
        pytest.param("p2pt2" + str(Ticket(CID, PUB, ()))[5:], "not a ticket", id="version-2"),
        pytest.param("p2pt1", "malformed ticket", id="prefix-only"),
        pytest.param(str(Ticket(CID, PUB, ()))[:-8], "malformed ticket", id="truncated"),
        pytest.param(str(Ticket(CID, PUB, ()))[:-1], "malformed ticket", id="truncated-by-one"),
        pytest.param(str(Ticket(CID, PUB, ())) + "!", "malformed ticket", id="bad-base32"),
        pytest.param(str(Ticket(CID, PUB, ()))[:-1] + "1", "malformed ticket", id="bad-digit"),
        pytest.param("p2pt1" + "a" * 3000, "too long", id="too-long"),
        pytest.param(_ticket_text([CID.digest, PUB.key, [[b"\x7f\0\0\1", p] for p in range(1, 10)]]),
                     "malformed ticket", id="nine-addresses"),
        pytest.param(_ticket_text([CID.digest, PUB.key, [[b"\x7f\0\0\1", 0]]]), "ticket port",
                     id="port-0"),
        pytest.param(_ticket_text([CID.digest, PUB.key, [[b"\x7f\0\0\1", 65536]]]), "ticket port",
                     id="port-65536"),
        pytest.param(_ticket_text([CID.digest, PUB.key, [[b"\x7f\0\0", 80]]]), "4 or 16 bytes",
                     id="3-byte-ip"),
        pytest.param(_ticket_text([CID.digest, PUB.key, [["127.0.0.1", 80]]]), "ticket ip",
                     id="text-ip"),
        pytest.param(_ticket_text([CID.digest, PUB.key, [[b"\x7f\0\0\1"]]]), "ticket address",
                     id="address-without-port"),
        pytest.param(_ticket_text([CID.digest[:31], PUB.key, []]), "content id", id="short-id"),
        pytest.param(_ticket_text([CID.digest, PUB.key[:31], []]), "publisher", id="short-key"),
        pytest.param(_ticket_text([CID.digest, PUB.key]), "ticket", id="two-fields"),
        pytest.param(_ticket_text([CID.digest, PUB.key, [], 1]), "ticket", id="four-fields"),
        pytest.param("p2pt1" + b32encode(b"\xcc\x01"), "non-canonical", id="non-canonical"),
    ],
)
def test_malformed_tickets(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        Ticket.parse(text)
    if text.lower().startswith("p2pt1"):
        with pytest.raises(BadInput, match=message):
            parse_id_or_ticket(text)


@given(digests, digests, st.lists(addresses, max_size=MAX_TICKET_ADDRS), st.data())
def test_truncated_ticket_is_refused(cid: bytes, pub: bytes, addrs: list[tuple[str, int]],
                                     data: st.DataObject) -> None:
    text = str(Ticket(ContentId(cid), PeerId(pub), tuple(addrs)))
    cut = data.draw(st.integers(5, len(text) - 1), label="cut")
    with pytest.raises(BadInput):
        Ticket.parse(text[:cut])


def test_ticket_constructor_checks() -> None:
    with pytest.raises(BadInput, match="at most 8"):
        Ticket(CID, PUB, tuple(("10.0.0.1", p) for p in range(1, 10)))
    with pytest.raises(BadInput, match="bad port"):
        Ticket(CID, PUB, (("10.0.0.1", 0),))
    with pytest.raises(BadInput, match="not an IP address"):
        Ticket(CID, PUB, (("example.com", 80),))


def test_normalize_host() -> None:
    assert normalize_host("[2001:DB8:0:0::1]") == "2001:db8::1"
    assert normalize_host("127.000.0.1".replace("000", "0")) == "127.0.0.1"
    with pytest.raises(BadInput):
        normalize_host("localhost")


def test_parse_id_or_ticket_accepts_both_forms() -> None:
    assert parse_id_or_ticket(str(CID)) == (CID, None)
    assert parse_id_or_ticket(f"  {str(CID).upper()} ") == (CID, None)
    ticket = Ticket(CID, PUB, (("192.0.2.7", 7000),))
    assert parse_id_or_ticket(str(ticket)) == (CID, ticket)
    assert parse_id_or_ticket(str(ticket).upper()) == (CID, ticket)
    with pytest.raises(BadInput, match="not a content id"):
        parse_id_or_ticket(str(PUB))
    with pytest.raises(BadInput, match="unsupported content id format"):
        parse_id_or_ticket("p2pc2" + str(CID)[5:])


@given(st.ip_addresses())
def test_any_ip_survives_a_ticket(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    ticket = make_ticket(CID, PUB, [(str(ip), 443)])
    literal = normalize_host(str(ip))  # an IPv4-mapped address is the IPv4 one
    if ipaddress.ip_address(literal).is_unspecified:
        assert ticket.addresses == ()
    else:
        assert Ticket.parse(str(ticket)).addresses == ((literal, 443),)


def test_ticket_built_with_a_bracketed_host_can_be_printed() -> None:
    ticket = Ticket(CID, PUB, (("[2001:db8::1]", 80),))
    assert Ticket.parse(str(ticket)).addresses == (("2001:db8::1", 80),)


def test_relay_hints_in_tickets_and_tickets_without_them() -> None:
    from p2p.address import RelayHint

    relay, holder = PeerId(bytes(range(64, 96))), PeerId(bytes(range(96, 128)))
    hint = RelayHint(relay, ("203.0.113.10", 7473))
    ticket = make_ticket(CID, PUB, [("10.0.1.2", 7473)], [hint])
    again = Ticket.parse(str(ticket))
    assert again == ticket and again.relays == (hint,) and again.relay_target == PUB
    # A node re-sharing someone else's content names itself as the one behind the relay.
    other = Ticket(CID, PUB, (), (hint,), relayed_peer=holder)
    assert Ticket.parse(str(other)).relay_target == holder
    # A ticket from before relays: two-element entries only.
    old = _ticket_text([CID.digest, PUB.key, [[bytes([192, 0, 2, 7]), 4000]]])
    parsed = Ticket.parse(old)
    assert parsed.addresses == (("192.0.2.7", 4000),) and parsed.relays == ()
    # Relay hints take their room first: the rest of MAX_TICKET_ADDRS goes to addresses.
    many = [(f"192.0.2.{i}", 4000) for i in range(1, 20)]
    assert len(make_ticket(CID, PUB, many, [hint]).addresses) == MAX_TICKET_ADDRS - 1
    with pytest.raises(BadInput, match="malformed"):
        Ticket.parse(_ticket_text([CID.digest, PUB.key, [[bytes(4), 1, b"short"]]]))
