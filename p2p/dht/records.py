"""Signed DHT records: encode, sign, decode and verify. No I/O; time is a parameter.

Every record is canonical msgpack (:mod:`p2p.encoding`) and carries its author's
Ed25519 signature over ``TAG + key + pack(body)``, where ``key`` is the 20-byte
DHT key the record is stored under. Signing the key binds the record to its
place: a record copied to another key fails verification. Exact layouts are in
``docs/PROTOCOL.md`` (DHT section).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3

from ..address import RelayHint
from ..encoding import expect_bytes, expect_int, expect_list, expect_str, pack, unpack_canonical
from ..errors import BadInput, BadSignature, DecodeError
from ..identity import NODE_ID_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, Identity, PeerId, node_id_for
from ..identity import verify_signature as _verify_signature
from .errors import InvalidRecord

KIND_PROVIDER = 1
KIND_PEER = 2
KIND_CHANNEL = 3
KINDS = (KIND_PROVIDER, KIND_PEER, KIND_CHANNEL)
KIND_NAMES = {KIND_PROVIDER: "provider", KIND_PEER: "peer", KIND_CHANNEL: "channel"}

CONTENT_ID_LEN = 32
KEY_LEN = NODE_ID_LEN

# Domain-separation tags: a signature made for one record type (or for the identify
# handshake) can never be replayed as another. "v1" is the record format version.
PROVIDER_TAG = b"p2p-dht-provider-v1\x00"
PEER_TAG = b"p2p-dht-peer-v1\x00"
CHANNEL_TAG = b"p2p-dht-channel-v1\x00"
_DISCOVERY_CONTEXT = "p2p 2026-11 dht discovery key v1"
_CHANNEL_CONTEXT = "p2p 2026-11 dht channel key v1"

PROVIDER_TTL = 3 * 3600
"""Provider record lifetime (s). Three re-announce intervals: two announces may fail in a row."""
REANNOUNCE_INTERVAL = 3600.0
"""How often a provider re-announces its content (s). See docs/PROTOCOL.md (DHT) for the trade-off."""
PEER_TTL = 3 * 3600
"""Peer record lifetime (s); re-announced with the provider records."""
CHANNEL_TTL = 24 * 3600
"""Channel record lifetime (s): a publisher that stays away for a day loses its name's pointer."""
MAX_TTL = {KIND_PROVIDER: PROVIDER_TTL, KIND_PEER: PEER_TTL, KIND_CHANNEL: CHANNEL_TTL}
CLOCK_SKEW = 600
"""Seconds by which a record's expiry may exceed ``now + TTL``: tolerated clock difference. It
buys no life: a node holds a provider record at most ``PROVIDER_TTL`` after it last stored it
(:data:`p2p.dht.store.PROVIDER_HOLD`)."""
MAX_ADDRESSES = 4
"""Addresses per provider/peer record (direct ones and relay hints together): enough for
v4 + v6 + an override, small enough that 16 records fit one datagram."""
MAX_RELAY_HINTS = 2
"""Relay hints per record: a node holds reservations on one or two relays. With two hints
and two direct IPv6 addresses of the longest canonical form (39 characters) a record is
352 bytes, under :data:`MAX_RECORD_SIZE`."""
MAX_HOST_LEN = 45  # the longest textual IPv6 address
MAX_NAME_LEN = 64
"""Channel name length in UTF-8 bytes."""
MAX_SEQ = 2**63 - 1
MAX_RECORD_SIZE = 384
"""Encoded record size limit (bytes); the largest valid record is about 330 bytes."""


@dataclass(frozen=True)
class ProviderRecord:
    """``peer_id`` serves (all or part of) a content id at ``addresses`` until ``expires``."""

    peer_id: PeerId
    addresses: tuple[tuple[str, int], ...]
    expires: float
    """Unix time (seconds) after which the record is void."""
    relays: tuple[RelayHint, ...] = ()
    """Relays the peer holds a reservation on (when it cannot be dialled directly)."""


@dataclass(frozen=True)
class PeerRecord:
    """``peer_id`` is reachable at ``addresses`` until ``expires``."""

    peer_id: PeerId
    addresses: tuple[tuple[str, int], ...]
    expires: float
    relays: tuple[RelayHint, ...] = ()
    """Relays the peer holds a reservation on (when it cannot be dialled directly)."""


@dataclass(frozen=True)
class ChannelRecord:
    """``publisher``'s name ``name`` points at ``content_id``; the highest ``seq`` wins."""

    publisher: PeerId
    name: str
    content_id: bytes
    seq: int
    expires: float


Record = ProviderRecord | PeerRecord | ChannelRecord


@dataclass(frozen=True)
class SignedRecord:
    """A verified record, with the exact bytes it arrived as (served on unchanged)."""

    kind: int
    key: bytes
    record: Record
    raw: bytes

    @property
    def author(self) -> bytes:
        """The signing key: the peer id of a provider/peer record, the channel's publisher."""
        rec = self.record
        return rec.publisher.key if isinstance(rec, ChannelRecord) else rec.peer_id.key


# -- keys ---------------------------------------------------------------------------


def discovery_key(content_id: bytes) -> bytes:
    """The 20-byte DHT key provider records of ``content_id`` live under.

    A one-way hash, so the nodes holding the records cannot tell which content is
    shared or fetched unless they already know its id (Hypercore's discovery keys).
    """
    _check_content_id(content_id)
    return blake3.blake3(content_id, derive_key_context=_DISCOVERY_CONTEXT).digest(KEY_LEN)


def peer_key(peer_id: PeerId) -> bytes:
    """The DHT key of a peer record: the peer's own node id."""
    return node_id_for(peer_id.key)


def channel_key(publisher: PeerId, name: str) -> bytes:
    """The DHT key of the channel ``name`` of ``publisher``."""
    _check_name(name)
    return blake3.blake3(pack([publisher.key, name]), derive_key_context=_CHANNEL_CONTEXT).digest(
        KEY_LEN
    )


# -- addresses ------------------------------------------------------------------------


def check_address(host: Any, port: Any, what: str = "address") -> tuple[str, int]:
    """Return ``(host, port)`` if host is a canonical literal IP that can be dialled and the port
    is in 1..65535; raise :class:`DecodeError` otherwise (hostnames, 0.0.0.0, multicast...)."""
    host = expect_str(host, MAX_HOST_LEN, f"{what} host")
    port = expect_int(port, 1, 65535, f"{what} port")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError(f"{what}: {host!r} is not a literal IP address") from None
    if str(ip) != host:
        raise DecodeError(f"{what}: {host!r} is not in canonical form")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        raise DecodeError(f"{what}: {host!r} is an IPv4 address; write it as IPv4")
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and host == "255.255.255.255"):
        raise DecodeError(f"{what}: {host!r} cannot be dialled")
    return host, port


def _encode_addresses(addresses: Sequence[tuple[str, int]],
                      relays: Sequence[RelayHint] = ()) -> list[list[str | int | bytes]]:
    """Direct addresses ``[ip, port]`` first, then relay hints ``[ip, port, relay_key]``."""
    if not 1 <= len(addresses) + len(relays) <= MAX_ADDRESSES:
        raise BadInput(f"a record carries 1..{MAX_ADDRESSES} addresses and relay hints")
    if len(relays) > MAX_RELAY_HINTS:
        raise BadInput(f"a record carries at most {MAX_RELAY_HINTS} relay hints")
    try:
        checked = [check_address(h, p) for h, p in addresses]
        hints = [(check_address(*r.address, "relay hint"), r.relay.key) for r in relays]
    except DecodeError as exc:
        raise BadInput(str(exc)) from None
    out: list[list[str | int | bytes]] = [[h, p] for h, p in checked]
    out += [[h, p, key] for (h, p), key in hints]
    return out


def _decode_addresses(value: Any) -> tuple[tuple[tuple[str, int], ...], tuple[RelayHint, ...]]:
    """(direct addresses, relay hints): a two-element entry is a direct address, a three-
    element one a relay hint (the format before relays had two-element entries only)."""
    items = expect_list(value, what="addresses")
    if not 1 <= len(items) <= MAX_ADDRESSES:
        raise DecodeError(f"addresses: expected 1..{MAX_ADDRESSES}")
    out = []
    relays = []
    for item in items:
        fields = expect_list(item, None, "address")
        if len(fields) == 2:
            out.append(check_address(*fields))
        elif len(fields) == 3:
            host, port, key = fields
            relay = PeerId(expect_bytes(key, PUBLIC_KEY_LEN, "relay hint key"))
            relays.append(RelayHint(relay, check_address(host, port, "relay hint")))
        else:
            raise DecodeError("address: expected [ip, port] or [ip, port, relay key]")
    if len(relays) > MAX_RELAY_HINTS:
        raise DecodeError(f"addresses: at most {MAX_RELAY_HINTS} relay hints")
    return tuple(out), tuple(relays)


def _check_content_id(content_id: Any) -> None:
    if not isinstance(content_id, bytes) or len(content_id) != CONTENT_ID_LEN:
        raise BadInput("a content id is 32 bytes")


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not 1 <= len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_LEN:
        raise BadInput(f"a channel name is 1..{MAX_NAME_LEN} bytes of text")


# -- signature cache ----------------------------------------------------------------


class VerifyCache:
    """Remembers Ed25519 verdicts, because a lookup receives the same records from many nodes.

    Keyed by the exact (key, signature, message) triple, so a hit proves nothing
    new is being trusted. Bounded LRU.
    """

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._verdicts: OrderedDict[tuple[bytes, bytes, bytes], bool] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> None:
        """Raise :class:`BadSignature` unless ``signature`` is ``public_key``'s over ``message``."""
        entry = (public_key, signature, message)
        verdict = self._verdicts.get(entry)
        if verdict is None:
            self.misses += 1
            try:
                _verify_signature(public_key, signature, message)
                verdict = True
            except BadSignature:
                verdict = False
            self._verdicts[entry] = verdict
            if len(self._verdicts) > self._size:
                self._verdicts.popitem(last=False)
        else:
            self.hits += 1
            self._verdicts.move_to_end(entry)
        if not verdict:
            raise BadSignature("DHT record signature does not verify")


# -- encode -----------------------------------------------------------------------------


def _expires(now: float, ttl: int) -> int:
    return int(now) + ttl


def sign_provider(
    identity: Identity, dkey: bytes, addresses: Sequence[tuple[str, int]], now: float,
    ttl: int = PROVIDER_TTL, relays: Sequence[RelayHint] = (),
) -> SignedRecord:
    """A provider record for discovery key ``dkey``: ``identity`` serves it at ``addresses``
    and through ``relays``."""
    expect_bytes(dkey, KEY_LEN, "discovery key")
    addrs = _encode_addresses(addresses, relays)
    expires = _expires(now, ttl)
    body = [identity.public_key, addrs, expires]
    sig = identity.sign(PROVIDER_TAG + dkey + pack(body))
    raw = pack([KIND_PROVIDER, *body, sig])
    direct, hints = _decode_addresses(addrs)
    rec = ProviderRecord(identity.peer_id, direct, float(expires), hints)
    return SignedRecord(KIND_PROVIDER, dkey, rec, raw)


def sign_peer(
    identity: Identity, addresses: Sequence[tuple[str, int]], now: float, ttl: int = PEER_TTL,
    relays: Sequence[RelayHint] = (),
) -> SignedRecord:
    """A peer record: ``identity`` is reachable at ``addresses`` and through ``relays``."""
    key = peer_key(identity.peer_id)
    addrs = _encode_addresses(addresses, relays)
    expires = _expires(now, ttl)
    body = [identity.public_key, addrs, expires]
    sig = identity.sign(PEER_TAG + key + pack(body))
    raw = pack([KIND_PEER, *body, sig])
    direct, hints = _decode_addresses(addrs)
    rec = PeerRecord(identity.peer_id, direct, float(expires), hints)
    return SignedRecord(KIND_PEER, key, rec, raw)


def sign_channel(
    identity: Identity, name: str, content_id: bytes, seq: int, now: float,
    ttl: int = CHANNEL_TTL,
) -> SignedRecord:
    """A channel record: ``identity``'s name ``name`` points at ``content_id`` (version ``seq``)."""
    _check_content_id(content_id)
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise BadInput(f"seq must be an integer in 0..{MAX_SEQ}")
    key = channel_key(identity.peer_id, name)
    expires = _expires(now, ttl)
    body = [identity.public_key, name, content_id, seq, expires]
    sig = identity.sign(CHANNEL_TAG + key + pack(body))
    raw = pack([KIND_CHANNEL, *body, sig])
    rec = ChannelRecord(identity.peer_id, name, content_id, seq, float(expires))
    return SignedRecord(KIND_CHANNEL, key, rec, raw)


# -- decode + verify ------------------------------------------------------------------


def decode_record(
    raw: Any, key: bytes, now: float, cache: VerifyCache, kind: int | None = None
) -> SignedRecord:
    """Decode and fully verify a record received for DHT key ``key``.

    Checks, in order: size, canonical encoding, field types and limits, the kind
    (when given), key binding (peer and channel keys are derived from the author),
    expiry window ``now < expires <= now + TTL + CLOCK_SKEW`` and the signature.
    Raises :class:`DecodeError`, :class:`InvalidRecord` or :class:`BadSignature`.
    """
    raw = expect_bytes(raw, what="record", max_len=MAX_RECORD_SIZE)
    fields = expect_list(
        unpack_canonical(raw, max_bin=64, max_str=MAX_HOST_LEN + MAX_NAME_LEN, max_array=8),
        what="record",
    )
    if not fields:
        raise DecodeError("record: empty")
    rkind = expect_int(fields[0], 1, 255, "record kind")
    if kind is not None and rkind != kind:
        raise InvalidRecord(f"expected a {KIND_NAMES.get(kind)} record")
    rec: Record
    match rkind:
        case 1 | 2:
            _, author, addrs_v, expires_v, sig = expect_list(fields, 5, "record")
            author = expect_bytes(author, PUBLIC_KEY_LEN, "record author")
            addrs, relays = _decode_addresses(addrs_v)
            expires = expect_int(expires_v, 0, 2**53, "record expiry")
            body: list[Any] = [author, addrs_v, expires]
            if rkind == KIND_PEER:
                if key != node_id_for(author):
                    raise InvalidRecord("peer record stored under another peer's key")
                tag = PEER_TAG
                rec = PeerRecord(PeerId(author), addrs, float(expires), relays)
            else:
                tag = PROVIDER_TAG
                rec = ProviderRecord(PeerId(author), addrs, float(expires), relays)
        case 3:
            _, author, name, content_id, seq, expires_v, sig = expect_list(fields, 7, "record")
            author = expect_bytes(author, PUBLIC_KEY_LEN, "record author")
            name = expect_str(name, MAX_NAME_LEN, "channel name")
            content_id = expect_bytes(content_id, CONTENT_ID_LEN, "channel content id")
            seq = expect_int(seq, 0, MAX_SEQ, "channel seq")
            expires = expect_int(expires_v, 0, 2**53, "record expiry")
            if not name:
                raise DecodeError("channel name: empty")
            if key != channel_key(PeerId(author), name):
                raise InvalidRecord("channel record stored under another channel's key")
            body = [author, name, content_id, seq, expires]
            tag = CHANNEL_TAG
            rec = ChannelRecord(PeerId(author), name, content_id, seq, float(expires))
        case _:
            raise DecodeError(f"record: unknown kind {rkind}")
    sig = expect_bytes(sig, SIGNATURE_LEN, "record signature")
    if expires <= now:
        raise InvalidRecord("record expired")
    if expires > now + MAX_TTL[rkind] + CLOCK_SKEW:
        raise InvalidRecord("record expiry too far in the future")
    cache.verify(author, sig, tag + key + pack(body))
    return SignedRecord(rkind, key, rec, raw)
