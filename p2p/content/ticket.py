"""Tickets: a copy-pasteable string that is enough to fetch, with no bootstrap configured.

Text form: ``"p2pt1"`` followed by lowercase base32 (no padding) of
``pack([content_id, publisher_key, [[ip, port], ...]])`` where ``ip`` is the
4- or 16-byte packed address. A ticket names the content, who published it (so
the fetch checks the signer) and up to :data:`MAX_TICKET_ADDRS` addresses to dial.
An entry of three, ``[ip, port, relay_key]``, is a relay hint: the publisher's node is
reached through the relay ``relay_key`` at ``ip:port`` (a NATed sharer); tickets made before
relays have two-element entries only and parse as they always did.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ..address import RelayHint, is_unspecified, normalize_host
from ..encoding import (
    b32decode,
    b32encode,
    expect_bytes,
    expect_int,
    expect_list,
    kind_of,
    pack,
    pasted,
    unpack_canonical,
)
from ..errors import BadInput, DecodeError
from ..identity import PeerId
from .ids import ContentId

TICKET_PREFIX = "p2pt1"
MAX_TICKET_ADDRS = 8
"""A few addresses: enough for a peer's v4 + v6 + LAN forms; more makes tickets unwieldy."""


@dataclass(frozen=True)
class Ticket:
    """Content id + publisher + a few addresses."""

    content_id: ContentId
    publisher: PeerId
    addresses: tuple[tuple[str, int], ...]
    relays: tuple[RelayHint, ...] = ()
    """Relays the sharer holds a reservation on (a sharer others cannot dial)."""
    relayed_peer: PeerId | None = None
    """The peer that holds those reservations when it is not the publisher (a node
    re-sharing what someone else published); None: the publisher."""

    @property
    def relay_target(self) -> PeerId:
        """The peer the relay hints lead to."""
        return self.relayed_peer if self.relayed_peer is not None else self.publisher

    def __post_init__(self) -> None:
        if len(self.addresses) + len(self.relays) > MAX_TICKET_ADDRS:
            raise BadInput(f"a ticket carries at most {MAX_TICKET_ADDRS} addresses")
        for _, port in (*self.addresses, *(r.address for r in self.relays)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise BadInput(f"bad port in ticket address: {port}")
        # Canonical host spelling, so a ticket equals itself after a round trip.
        object.__setattr__(self, "addresses",
                           tuple((normalize_host(h), p) for h, p in self.addresses))
        object.__setattr__(self, "relays", tuple(
            RelayHint(r.relay, (normalize_host(r.address[0]), r.address[1])) for r in self.relays))

    def __str__(self) -> str:
        addrs: list[list[bytes | int]] = [[ipaddress.ip_address(h).packed, p]
                                          for h, p in self.addresses]
        # The reachable peer's key is a fourth field only when it is not the publisher.
        extra = [] if self.relayed_peer is None or self.relayed_peer == self.publisher \
            else [self.relayed_peer.key]
        addrs += [[ipaddress.ip_address(r.address[0]).packed, r.address[1], r.relay.key, *extra]
                  for r in self.relays]
        return TICKET_PREFIX + b32encode(pack([self.content_id.digest, self.publisher.key, addrs]))

    @classmethod
    def parse(cls, text: str) -> Ticket:
        """Parse a ticket (spaces and line breaks pasted inside it are dropped). Raises
        :class:`BadInput` saying what is wrong; a ticket that does not decode is called
        truncated or mistyped, the two ways a pasted one goes wrong."""
        text = pasted(text)
        if not text.lower().startswith(TICKET_PREFIX):
            kind = kind_of(text)
            if kind is not None:
                raise BadInput(f"{text[:60]!r} is {kind}, not a ticket (a ticket starts with "
                               f"{TICKET_PREFIX!r})")
            raise BadInput(f"not a ticket (expected text starting with {TICKET_PREFIX!r}): {text[:60]!r}")
        if len(text) > 2048:
            raise BadInput("ticket too long")
        try:
            raw = unpack_canonical(b32decode(text[len(TICKET_PREFIX):], "ticket"), max_bin=32,
                                   max_array=MAX_TICKET_ADDRS)
            cid, pub, addrs = expect_list(raw, 3, "ticket")
            addresses = []
            relays = []
            relayed: set[bytes] = set()
            for item in expect_list(addrs, None, "ticket addresses"):
                fields = expect_list(item, None, "ticket address")
                if len(fields) not in (2, 3, 4):
                    raise DecodeError("ticket address: expected [ip, port] or [ip, port, relay(, peer)]")
                if len(fields) == 4:
                    relayed.add(expect_bytes(fields.pop(), 32, "ticket relayed peer"))
                ip = expect_bytes(fields[0], None, "ticket ip")
                if len(ip) not in (4, 16):
                    raise DecodeError("ticket ip: expected 4 or 16 bytes")
                address = (str(ipaddress.ip_address(ip)), expect_int(fields[1], 1, 65535, "ticket port"))
                if len(fields) == 3:
                    relays.append(RelayHint(PeerId(expect_bytes(fields[2], 32, "ticket relay")),
                                            address))
                else:
                    addresses.append(address)
            if len(relayed) > 1:
                raise DecodeError("ticket relay hints name more than one peer")
            return cls(ContentId(expect_bytes(cid, 32, "ticket content id")),
                       PeerId(expect_bytes(pub, 32, "ticket publisher")), tuple(addresses),
                       tuple(relays), PeerId(relayed.pop()) if relayed else None)
        except DecodeError as exc:
            raise BadInput(f"malformed ticket: {exc} (truncated or mistyped? copy it whole, again)") from None


def make_ticket(content_id: ContentId, publisher: PeerId, addresses: Sequence[tuple[str, int]],
                relays: Sequence[RelayHint] = ()) -> Ticket:
    """A ticket for ``content_id`` with its relay hints and the first usable addresses
    (unspecified ones skipped) in the room left."""
    usable = []
    for host, port in addresses:
        try:
            literal = normalize_host(host)
        except BadInput:
            continue
        if is_unspecified(literal) or (literal, port) in usable:
            continue
        usable.append((literal, port))
    hints = tuple(relays)[:MAX_TICKET_ADDRS]
    return Ticket(content_id, publisher, tuple(usable[:MAX_TICKET_ADDRS - len(hints)]), hints)


def parse_id_or_ticket(text: str) -> tuple[ContentId, Ticket | None]:
    """What ``p2p fetch`` accepts: a content id or a ticket, as pasted (spaces and line breaks
    inside are dropped). Raises :class:`BadInput`."""
    stripped = pasted(text)
    if stripped.lower().startswith(TICKET_PREFIX):
        ticket = Ticket.parse(stripped)
        return ticket.content_id, ticket
    return ContentId.parse(stripped), None
