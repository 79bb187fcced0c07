"""The one address module: parsing what people type, normalising what sockets report."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.address import format_address, from_sockaddr, normalize_host, parse_address
from p2p.errors import BadInput, NetworkError


@pytest.mark.parametrize(("text", "expected"), [
    ("[::ffff:192.0.2.7]:5", ("192.0.2.7", 5)),   # IPv4-mapped: the IPv4 peer it is
    ("[2001:DB8:0:0::1]:1", ("2001:db8::1", 1)),  # canonical IPv6 text
    ("localhost:9", ("127.0.0.1", 9)),            # a host name is resolved
])
def test_parse_normalises(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["[::1:80", "[1.2.3.4]:80", "[::1]:", "host:", "[]:80", "1.2.3.4:-1"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(BadInput):
        parse_address(text)


def test_names_are_refused_where_only_literals_belong() -> None:
    with pytest.raises(BadInput, match="not an IP address"):
        parse_address("localhost:9", resolve=False)


def test_unresolvable_name_is_a_network_error() -> None:
    with pytest.raises(NetworkError, match="cannot resolve"):
        parse_address("no-such-host.invalid:9")


def test_socket_addresses_are_normalised() -> None:
    assert from_sockaddr(("::ffff:10.0.0.1", 7, 0, 0)) == ("10.0.0.1", 7)
    assert from_sockaddr(("::1", 7, 0, 0)) == ("::1", 7)
    assert from_sockaddr(("fe80::1%lo", 7, 0, 1)) == ("fe80::1%lo", 7)
    assert normalize_host("::FFFF:1.2.3.4") == "1.2.3.4"


@given(st.ip_addresses(), st.integers(0, 65535))
def test_format_then_parse_round_trips(ip: object, port: int) -> None:
    host = normalize_host(str(ip))
    assert parse_address(format_address((host, port)), resolve=False) == (host, port)
