"""The records this node holds for others: merged, capped, sampled and expired. No I/O; time
is a parameter.

Only records that :func:`p2p.dht.records.decode_record` verified reach this store.

Provider records are where a crowd of throw-away keys attacks: anyone may announce for any
key, so the store never lets a flood decide what it keeps or what it answers
(docs/PROTOCOL.md, DHT, Storage rules):

* a record's life here is bounded by this node's clock, not by the expiry its author chose:
  it lapses at ``min(expires, last stored + PROVIDER_TTL)``;
* what counts is presence: each author's record remembers when this node first stored it
  (kept across refreshes), and older wins, in replies and in eviction;
* records are counted per network of their first address (IPv4 /24, IPv6 /48) and per host
  (IPv4 address, IPv6 /64), or of the address that stored them when that is another host: a
  reply takes at most :data:`REPLY_PER_NETWORK` records of one network and
  :data:`REPLY_PER_HOST` of one host before any record beyond those quotas;
* a full key admits a newcomer by evicting the youngest record of the most represented
  network, and only when that network holds at least two more records than the
  newcomer's: a network holding one record is never evicted, whatever the flood.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import sys
from collections import Counter
from dataclasses import dataclass

from ..address import Address
from .records import (
    KIND_CHANNEL,
    KIND_NAMES,
    KIND_PEER,
    KIND_PROVIDER,
    PROVIDER_TTL,
    ChannelRecord,
    ProviderRecord,
    SignedRecord,
)
from .routing import ip_group

MAX_PROVIDERS_PER_KEY = 64
"""Providers kept per discovery key, one per peer. A popular file needs a few dozen to start a
swarm; more only cost memory and reply space."""
MAX_RECORDS = 100_000
"""Records held in all (about 40 MB at worst): a flood of valid records cannot exhaust memory."""
PROVIDER_HOLD = PROVIDER_TTL
"""Longest a provider record lives here after it was last stored (s), whatever the expiry its
author signed: the reader's window (``now + TTL + CLOCK_SKEW``) tolerates a fast clock, the
holder does not let anyone buy those extra minutes. An honest provider re-stores its record
every ``REANNOUNCE_INTERVAL`` (1 h), so it survives two missed announces as before."""
REPLY_PER_NETWORK = 2
"""Records of one network (IPv4 /24, IPv6 /48 of a record's first address) a ``get`` reply
takes before it takes any record beyond the quotas: a crowd of keys in one network fills two
slots of the fair part, not sixteen. Two, not one: a small office or a LAN seeding together
is still seen."""
REPLY_PER_HOST = 1
"""Records of one host (IPv4 address, IPv6 /64) a reply takes before any beyond the quotas:
one host running many keys is one provider."""
REPLY_OLDEST_SHARE = 0.5
"""Share of a reply's slots given oldest-first (by when this node first stored each author's
record): a provider that has been announcing for hours is always seen, and a fresh flood
cannot push it out. The rest are drawn at random, so a newcomer is seen too."""
NETWORK_V4_BITS = 24
NETWORK_V6_BITS = 48
"""The network a record counts under: the prefix one operator usually holds (the same as the
chunk server's per-prefix cap and the address vote's observer networks)."""


class PutStatus(enum.IntEnum):
    """Answer to a store request (sent on the wire as this integer)."""

    OK = 0
    INVALID = 1
    """Malformed, forged, expired or wrong key."""
    STALE = 2
    """Older than what is held: lower seq (or same seq, other value), or an earlier expiry."""
    FULL = 3
    """The key (or the whole store) is at its cap, and the newcomer's network already holds
    its share of the key (see :meth:`RecordStore.put`)."""


def network_of(host: str) -> str:
    """The network a record at ``host`` counts under: its IPv4 /24 or IPv6 /48."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    bits = NETWORK_V4_BITS if ip.version == 4 else NETWORK_V6_BITS
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


@dataclass(slots=True)
class HeldProvider:
    """A provider record as this node holds it: when it came, where it counts."""

    signed: SignedRecord
    first_stored: float
    """When this node first stored this author's record under this key (kept on refresh)."""
    stored: float
    """When this node last stored it (the start of its :data:`PROVIDER_HOLD`)."""
    network: str
    """:func:`network_of` the record's first address (or of the host that stored it, when
    that is another host: see :meth:`RecordStore.put`)."""
    host: str
    """:func:`p2p.dht.routing.ip_group` of the same address."""

    @property
    def expires(self) -> float:
        """When the record lapses here: its signed expiry, or :data:`PROVIDER_HOLD` after it
        was last stored, whichever is sooner."""
        return min(self.signed.record.expires, self.stored + PROVIDER_HOLD)

    @property
    def seniority(self) -> tuple[float, bytes]:
        """Sort key, oldest first (ties by author, so the order is deterministic)."""
        return self.first_stored, self.signed.author


def _held(signed: SignedRecord, first_stored: float, now: float,
          source: Address | None) -> HeldProvider:
    rec = signed.record
    assert isinstance(rec, ProviderRecord)
    # A record of relay hints only (a NATed provider) counts where it came from, else
    # under its first relay: never all of one relay's peers as one host.
    host = rec.addresses[0][0] if rec.addresses else (
        source[0] if source is not None else rec.relays[0].address[0])
    if source is not None and ip_group(source[0]) != ip_group(host):
        # The record names another host than the one that stored it: the claim is free, the
        # source is not (a reply to it reached it), so the record counts where it came from.
        host = source[0]
    # Interned: a flood shares one string per network and host instead of one per record.
    return HeldProvider(signed, first_stored, now, sys.intern(network_of(host)),
                        sys.intern(ip_group(host)))


class RecordStore:
    """Verified records by (kind, key). Providers merge per peer; peer and channel keep the latest.

    ``rng`` draws the random part of a provider reply (tests pass a seeded one).
    """

    def __init__(self, max_providers_per_key: int = MAX_PROVIDERS_PER_KEY,
                 max_records: int = MAX_RECORDS, rng: random.Random | None = None) -> None:
        self._max_per_key = max_providers_per_key
        self._max_records = max_records
        self._rng = rng or random.Random()
        self._providers: dict[bytes, dict[bytes, HeldProvider]] = {}
        self._single: dict[tuple[int, bytes], SignedRecord] = {}
        self._count = 0
        self.evicted = 0
        """Provider records evicted from a full key to admit one from a less represented
        network."""

    def put(self, signed: SignedRecord, now: float, source: Address | None = None) -> PutStatus:
        """Store ``signed`` if it is newer than what is held and there is room.

        ``source`` is the address the store request came from, if it came over the network.
        A provider record counts under the network and host of its first address, or under
        those of ``source`` when that is another host (a crowd of keys put from one host
        while claiming addresses all over the Internet is one host's crowd).

        A provider record for a full key is admitted by evicting the youngest record of the
        most represented network (then host) when that holds at least two more records than
        the newcomer's; otherwise it is refused (:attr:`PutStatus.FULL`).
        """
        if signed.record.expires <= now:
            return PutStatus.INVALID
        if signed.kind == KIND_PROVIDER:
            return self._put_provider(signed, now, source)
        slot = (signed.kind, signed.key)
        old = self._single.get(slot)
        if old is not None and old.record.expires > now:
            if not _newer(signed, old):
                return PutStatus.STALE
        elif old is not None:
            self._drop_single(slot)
            old = None
        if old is None:
            if self._count >= self._max_records:
                self.expire(now)
                if self._count >= self._max_records:
                    return PutStatus.FULL
            self._count += 1
        self._single[slot] = signed
        return PutStatus.OK

    def _put_provider(self, signed: SignedRecord, now: float, source: Address | None) -> PutStatus:
        per_key = self._providers.setdefault(signed.key, {})
        old = per_key.get(signed.author)
        if old is not None and old.expires > now:
            if old.signed.record.expires > signed.record.expires:
                return PutStatus.STALE
            # A refresh: the record lives on from now, and keeps the presence it earned.
            per_key[signed.author] = _held(signed, old.first_stored, now, source)
            return PutStatus.OK
        if old is not None:  # lapsed: whatever presence it had is gone
            del per_key[signed.author]
            self._count -= 1
        newcomer = _held(signed, now, now, source)
        if len(per_key) >= self._max_per_key:
            self._expire_key(signed.key, now)
            per_key = self._providers.setdefault(signed.key, {})
            if len(per_key) >= self._max_per_key:
                victim = eviction_victim(list(per_key.values()), newcomer)
                if victim is None:
                    return PutStatus.FULL
                del per_key[victim.signed.author]
                self._count -= 1
                self.evicted += 1
        if self._count >= self._max_records:
            self.expire(now)
            if self._count >= self._max_records:
                if not self._providers.get(signed.key):
                    self._providers.pop(signed.key, None)
                return PutStatus.FULL
            per_key = self._providers.setdefault(signed.key, {})
        per_key[signed.author] = newcomer
        self._count += 1
        return PutStatus.OK

    def providers(self, key: bytes, now: float, limit: int) -> list[SignedRecord]:
        """Up to ``limit`` live provider records under ``key``: a sample a flood cannot take.

        See :func:`fair_sample`: the oldest present first (within per-network and per-host
        quotas), then a random draw within the quotas, then, if slots remain, the rest.
        """
        live = [h for h in self._providers.get(key, {}).values() if h.expires > now]
        return [h.signed for h in fair_sample(live, limit, self._rng)]

    def get(self, kind: int, key: bytes, now: float) -> SignedRecord | None:
        """The live peer or channel record under ``key``, if held."""
        rec = self._single.get((kind, key))
        if rec is None or rec.record.expires <= now:
            return None
        return rec

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many were dropped."""
        before = self._count
        for key in list(self._providers):
            self._expire_key(key, now)
        for slot in [s for s, r in self._single.items() if r.record.expires <= now]:
            self._drop_single(slot)
        return before - self._count

    def counts(self) -> dict[str, int]:
        """Records held by type (expired but not yet culled included)."""
        out = {name: 0 for name in KIND_NAMES.values()}
        out["provider"] = sum(len(v) for v in self._providers.values())
        for kind, _ in self._single:
            out[KIND_NAMES[kind]] += 1
        return out

    def _expire_key(self, key: bytes, now: float) -> None:
        per_key = self._providers.get(key, {})
        for author in [a for a, h in per_key.items() if h.expires <= now]:
            del per_key[author]
            self._count -= 1
        if not per_key:
            self._providers.pop(key, None)

    def _drop_single(self, slot: tuple[int, bytes]) -> None:
        if self._single.pop(slot, None) is not None:
            self._count -= 1


def fair_sample(held: list[HeldProvider], limit: int, rng: random.Random) -> list[HeldProvider]:
    """Up to ``limit`` of ``held``, chosen so that a crowd of keys cannot crowd anyone out.

    1. :data:`REPLY_OLDEST_SHARE` of the slots go oldest-first (by first stored), skipping a
       record whose network already has :data:`REPLY_PER_NETWORK` records in the reply or
       whose host has :data:`REPLY_PER_HOST`;
    2. the remaining slots go to a random draw (``rng``) among the others, within the same
       quotas;
    3. slots still free take the records the quotas held back, in random order: a swarm
       on one LAN is answered in full when nobody competes with it.

    Returned in that order.
    """
    if limit <= 0 or not held:
        return []
    picked: list[HeldProvider] = []
    per_network: Counter[str] = Counter()
    per_host: Counter[str] = Counter()

    def take(candidates: list[HeldProvider], until: int) -> list[HeldProvider]:
        left = []
        for h in candidates:
            if len(picked) < until and per_network[h.network] < REPLY_PER_NETWORK \
                    and per_host[h.host] < REPLY_PER_HOST:
                picked.append(h)
                per_network[h.network] += 1
                per_host[h.host] += 1
            else:
                left.append(h)
        return left

    oldest = max(1, int(limit * REPLY_OLDEST_SHARE))
    rest = take(sorted(held, key=lambda h: h.seniority), oldest)
    rng.shuffle(rest)
    rest = take(rest, limit)
    picked.extend(rest[: limit - len(picked)])
    return picked


def eviction_victim(held: list[HeldProvider], newcomer: HeldProvider) -> HeldProvider | None:
    """Which record of a full key gives way to ``newcomer``, or None to refuse it.

    The victim is the youngest record (latest first stored) of the most represented network,
    and within it of the most represented host; it gives way only if that network holds at
    least two more records than the newcomer's network (or, when the newcomer's network is
    itself the largest, that host at least two more than the newcomer's host). Each eviction
    thus makes the key's records strictly more even across networks, so a flood from a few
    networks can only take the room of the networks it floods from, and a network with a
    single record is never evicted.
    """
    networks = Counter(h.network for h in held)
    mine = networks[newcomer.network]
    largest = max(networks.values())
    if largest > mine + 1:
        pool = [h for h in held if networks[h.network] == largest]
    elif mine == largest:
        # The newcomer's network holds the most: even it out between the hosts inside.
        inside = [h for h in held if h.network == newcomer.network]
        hosts = Counter(h.host for h in inside)
        biggest = max(hosts.values())
        if biggest <= hosts[newcomer.host] + 1:
            return None
        pool = [h for h in inside if hosts[h.host] == biggest]
        return max(pool, key=lambda h: h.seniority)
    else:
        return None
    # Several networks may tie for largest: the one whose youngest record is youngest gives.
    network = max(pool, key=lambda h: h.seniority).network
    inside = [h for h in pool if h.network == network]
    hosts = Counter(h.host for h in inside)
    biggest = max(hosts.values())
    return max((h for h in inside if hosts[h.host] == biggest), key=lambda h: h.seniority)


def _newer(new: SignedRecord, old: SignedRecord) -> bool:
    """Whether ``new`` may replace ``old`` under the same key."""
    if new.kind == KIND_CHANNEL:
        assert isinstance(new.record, ChannelRecord) and isinstance(old.record, ChannelRecord)
        if new.record.seq != old.record.seq:
            return new.record.seq > old.record.seq
        # Same version: only a refresh of the same value (a later expiry) is accepted.
        return (new.record.content_id == old.record.content_id
                and new.record.expires >= old.record.expires)
    assert new.kind == KIND_PEER
    return new.record.expires >= old.record.expires
