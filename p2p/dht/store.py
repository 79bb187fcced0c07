"""The records this node holds for others: merged, capped and expired. No I/O; time is a parameter.

Only records that :func:`p2p.dht.records.decode_record` verified reach this store.
"""

from __future__ import annotations

import enum

from .records import KIND_CHANNEL, KIND_NAMES, KIND_PEER, KIND_PROVIDER, ChannelRecord, SignedRecord

MAX_PROVIDERS_PER_KEY = 64
"""Providers kept per discovery key, one per peer. A popular file needs a few dozen to start a
swarm; more only cost memory and reply space."""
MAX_RECORDS = 100_000
"""Records held in all (about 40 MB at worst): a flood of valid records cannot exhaust memory."""


class PutStatus(enum.IntEnum):
    """Answer to a store request (sent on the wire as this integer)."""

    OK = 0
    INVALID = 1
    """Malformed, forged, expired or wrong key."""
    STALE = 2
    """Older than what is held: lower seq (or same seq, other value), or an earlier expiry."""
    FULL = 3
    """The key (or the whole store) is at its cap."""


class RecordStore:
    """Verified records by (kind, key). Providers merge per peer; peer and channel keep the latest."""

    def __init__(self, max_providers_per_key: int = MAX_PROVIDERS_PER_KEY,
                 max_records: int = MAX_RECORDS) -> None:
        self._max_per_key = max_providers_per_key
        self._max_records = max_records
        self._providers: dict[bytes, dict[bytes, SignedRecord]] = {}
        self._single: dict[tuple[int, bytes], SignedRecord] = {}
        self._count = 0

    def put(self, signed: SignedRecord, now: float) -> PutStatus:
        """Store ``signed`` if it is newer than what is held and there is room."""
        if signed.record.expires <= now:
            return PutStatus.INVALID
        if signed.kind == KIND_PROVIDER:
            return self._put_provider(signed, now)
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

    def _put_provider(self, signed: SignedRecord, now: float) -> PutStatus:
        per_key = self._providers.setdefault(signed.key, {})
        old = per_key.get(signed.author)
        if old is not None:
            if old.record.expires > signed.record.expires:
                return PutStatus.STALE
            per_key[signed.author] = signed
            return PutStatus.OK
        if len(per_key) >= self._max_per_key or self._count >= self._max_records:
            self._expire_key(signed.key, now)
            per_key = self._providers.setdefault(signed.key, {})
            if len(per_key) >= self._max_per_key or self._count >= self._max_records:
                # Refuse rather than evict: evicting lets a flood push honest providers out.
                return PutStatus.FULL
        per_key[signed.author] = signed
        self._count += 1
        return PutStatus.OK

    def providers(self, key: bytes, now: float, limit: int) -> list[SignedRecord]:
        """Up to ``limit`` live provider records under ``key``, latest expiry first."""
        live = [r for r in self._providers.get(key, {}).values() if r.record.expires > now]
        live.sort(key=lambda r: r.record.expires, reverse=True)
        return live[:limit]

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
        for author in [a for a, r in per_key.items() if r.record.expires <= now]:
            del per_key[author]
            self._count -= 1
        if not per_key:
            self._providers.pop(key, None)

    def _drop_single(self, slot: tuple[int, bytes]) -> None:
        if self._single.pop(slot, None) is not None:
            self._count -= 1


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
