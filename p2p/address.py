"""Addresses: the one place that parses, normalises and prints ``host:port``.

Every front end parses what a person typed with :func:`parse_address` and prints
with :func:`format_address`; every socket's peer address passes through
:func:`from_sockaddr`, so an IPv4 peer reaching a dual-stack socket as
``::ffff:192.0.2.1`` is the same peer as ``192.0.2.1`` everywhere (bans, caps,
records, the routing table).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BadInput, NetworkError
from .identity import PeerId

__all__ = [
    "Address",
    "RelayHint",
    "RelayedAddress",
    "format_address",
    "from_sockaddr",
    "is_unspecified",
    "normalize_host",
    "parse_address",
    "primary_ip",
]

Address = tuple[str, int]
"""(literal IP, port): IPv4 dotted, IPv6 compressed without brackets."""


@dataclass(frozen=True)
class RelayHint:
    """How to reach a peer that others cannot dial: through the relay ``relay`` at
    ``address``, where the peer holds a reservation (docs/PROTOCOL.md, Relays)."""

    relay: PeerId
    address: Address


class RelayedAddress(tuple[str, int]):
    """The relay's ``(host, port)`` standing for ``target`` reached through it: what a
    download dials like any address, and the node's dialler opens as a circuit. Equal only
    to the same relay and target (two peers behind one relay are two candidates)."""

    hint: RelayHint
    target: PeerId

    def __new__(cls, hint: RelayHint, target: PeerId) -> RelayedAddress:
        self = super().__new__(cls, hint.address)
        self.hint = hint
        self.target = target
        return self

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RelayedAddress) and tuple(self) == tuple(other)
                and self.hint == other.hint and self.target == other.target)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((tuple(self), self.hint.relay, self.target))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RelayedAddress, (self.hint, self.target))


def normalize_host(host: str) -> str:
    """A literal IP in canonical form; an IPv4-mapped IPv6 address becomes the IPv4 one.

    Raises :class:`BadInput` if ``host`` is not a literal IP.
    """
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise BadInput(f"{host!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def from_sockaddr(sockaddr: Sequence[object]) -> Address:
    """``(host, port)`` from what a socket returns (``getpeername``, ``recvfrom``), normalised."""
    host, port = str(sockaddr[0]), int(str(sockaddr[1]))
    try:
        return normalize_host(host), port
    except BadInput:  # a scoped link-local address such as fe80::1%eth0: keep it as given
        return host, port


def is_unspecified(host: str) -> bool:
    """True for ``0.0.0.0`` and ``::`` (listen on every address, not an address to dial)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def parse_address(text: str, *, what: str = "address", default_port: int | None = None,
                  resolve: bool = True) -> Address:
    """``HOST:PORT``, ``[V6]:PORT``, or a bare host when ``default_port`` is given.

    A host name is resolved (``resolve=True``) or refused; the result is always a
    literal, normalised IP. Raises :class:`BadInput` for malformed text and
    :class:`NetworkError` for a name that does not resolve.
    """
    text = text.strip()
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1:] if close >= 0 else ""
        if close < 0 or (rest and not rest.startswith(":")):
            raise BadInput(f"bad {what} {text!r}: expected [V6]:PORT")
        host = text[1:close]
        port_text = rest[1:] if rest else None
        if ":" not in host:
            raise BadInput(f"bad {what} {text!r}: brackets are for IPv6 addresses")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host, port_text = text, None
    else:
        raise BadInput(f"bad {what} {text!r}: write an IPv6 address in brackets, [V6]:PORT")
    if port_text is None:
        if default_port is None:
            raise BadInput(f"bad {what} {text!r}: expected HOST:PORT")
        port = default_port
    else:
        if not port_text.isdigit():
            raise BadInput(f"bad {what} {text!r}: the port must be a number")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise BadInput(f"bad {what} {text!r}: the port must be between 0 and 65535")
    if not host:
        raise BadInput(f"bad {what} {text!r}: no host")
    return _literal(host, what, resolve and not text.startswith("[")), port


def _literal(host: str, what: str, resolve: bool) -> str:
    try:
        return normalize_host(host)
    except BadInput:
        if not resolve:
            raise BadInput(f"bad {what}: {host!r} is not an IP address") from None
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise NetworkError(f"cannot resolve the {what} host {host!r}: {exc}") from None
    return normalize_host(str(infos[0][4][0]))


def format_address(addr: Sequence[object]) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def primary_ip(version: int, toward: str | None = None) -> str | None:
    """The address this host would use to reach the outside in IP ``version`` (4 or 6), or to
    reach the host ``toward`` when given, found without sending anything (a UDP socket
    connected to that address, or to a documentation address); None if there is no route.
    What a node bound to a wildcard announces until peers agree on where they see it: the
    kernel's choice, which no peer can steer."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    probe = toward or ("192.0.2.1" if version == 4 else "2001:db8::1")  # documentation ranges
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((probe, 9))
        host = str(s.getsockname()[0])
        if not ipaddress.ip_address(host.partition("%")[0]).is_unspecified:
            return normalize_host(host) if "%" not in host else host
    return None
