"""Whom a download dials, and how often: failed addresses back off, a peer id gets a bounded
number of dials. On a fake clock, against real (refused) TCP dials on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from p2p.content import ContentId
from p2p.identity import Identity, PeerId
from p2p.swarm.download import (
    DIAL_BACKOFF,
    DIAL_BACKOFF_MAX,
    MAX_ADDRESSES_PER_PEER,
    REDISCOVER_INTERVAL,
)
from p2p.wire.messages import Message

from .doubles import Address, Dialer, FakeClock, make_content, running_download

T = 30


def dead_addresses(count: int) -> list[Address]:
    """Ports on 127.0.0.1 where nothing listens (bound, then closed): every dial is refused."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[:2] for s in socks]
    finally:
        for s in socks:
            s.close()


class Rounds:
    """A provider source naming the same peers in every discovery round, and a dialer that
    records in which round each address was dialled (and tells when a dial has failed)."""

    def __init__(self, named: Sequence[tuple[PeerId | None, Sequence[Address]]]) -> None:
        self.named = named
        self.round = -1
        self.round_done = asyncio.Event()
        self.dials: list[tuple[int, Address]] = []
        self.failed = asyncio.Event()
        self._dialer = Dialer()
        self.identity = self._dialer.identity

    async def providers(self, cid: ContentId) -> AsyncIterator[tuple[PeerId | None, Sequence[Address], bool]]:
        self.round += 1
        for peer, addrs in self.named:
            yield peer, addrs, True
        self.round_done.set()

    async def __call__(self, addr: Address, peer: PeerId | None, first: Sequence[Message]) -> object:
        self.dials.append((self.round, addr))
        try:
            return await self._dialer(addr, peer, first)
        finally:
            self.failed.set()

    async def next_round(self, clock: FakeClock, download: object) -> None:
        self.round_done.clear()
        clock.advance(REDISCOVER_INTERVAL)
        download.handle_timer()  # type: ignore[attr-defined]
        await self.round_done.wait()

    async def failures(self, count: int) -> None:
        while len(self.dials) < count:
            self.failed.clear()
            await self.failed.wait()


def rounds_dialled(dials: list[tuple[int, Address]], addr: Address) -> list[int]:
    return [r for r, a in dials if a == addr]


async def test_a_dead_address_is_dialled_again_only_after_a_doubling_wait(tmp_path: Path) -> None:
    [dead] = dead_addresses(1)
    content = make_content(2)
    clock = FakeClock()
    rounds = Rounds([(None, [dead])])
    async with asyncio.timeout(T), running_download(
            tmp_path, content.content_id, clock, dialer=rounds, providers=rounds.providers,
            timeout=10_000) as rig:
        # Failed at 0 s; waits 5, 10, 20, 40, 80 s (doubling from DIAL_BACKOFF), each from
        # the failure: dialled in the rounds at 0, 5, 15, 35, 75 and 155 s.
        assert DIAL_BACKOFF == REDISCOVER_INTERVAL and DIAL_BACKOFF_MAX >= 80
        expected = [0, 1, 3, 7, 15, 31]
        await rounds.round_done.wait()
        await rounds.failures(1)
        for round_ in range(1, 40):  # 200 s of rounds, one every 5 s
            await rounds.next_round(clock, rig.download)
            if round_ in expected:  # its dial has failed before the next round is due
                await rounds.failures(expected.index(round_) + 1)
        await rounds.next_round(clock, rig.download)  # a dial queued in round 39 shows now
    assert rounds_dialled(rounds.dials, dead) == expected


async def test_a_peer_id_is_dialled_at_a_bounded_number_of_addresses_per_round(
        tmp_path: Path) -> None:
    many = dead_addresses(10)
    liar = Identity.generate().peer_id
    content = make_content(2)
    clock = FakeClock()
    rounds = Rounds([(liar, many)])
    async with asyncio.timeout(T), running_download(
            tmp_path, content.content_id, clock, dialer=rounds, providers=rounds.providers,
            timeout=10_000) as rig:
        await rounds.round_done.wait()
        await rounds.failures(MAX_ADDRESSES_PER_PEER)
        for round_ in (1, 2):
            await rounds.next_round(clock, rig.download)
            await rounds.failures((round_ + 1) * MAX_ADDRESSES_PER_PEER)
        await rounds.next_round(clock, rig.download)  # anything more queued shows now
    by_round = [[many.index(addr) for r, addr in rounds.dials if r == n] for n in range(3)]
    # Four a round, never all ten: the first four; 5 s later the same four (their first
    # wait is over); at 10 s they wait until 15 s, so the next four.
    assert MAX_ADDRESSES_PER_PEER == 4
    assert by_round == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7]]
