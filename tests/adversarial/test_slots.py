"""Slot exhaustion (issue 12, item 3): half-open handshakes and idle sessions from 20 hosts in
20 different /24s, each re-opened as soon as it is dropped (50 ms later: the attacker's
own pacing), more than the seeder's 256
connection slots and right up to its 16-per-IP cap; an honest ``p2p fetch`` from another
address still downloads, byte-identical, within a bound of its same-test baseline.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from . import hostile as h
from .conftest import MiB, address, cli, cli_process, fetch_args, make_file, share_args

SIZE = 8 * MiB
SOURCES = [h.loopback_source(20 + i) for i in range(20)]
HALF_OPEN = 160
IDLE = 160
"""16 per source (the server's per-IP cap), 320 in all: more than its 256 slots."""
T = 80


async def test_half_open_and_idle_connections_do_not_lock_out_an_honest_downloader(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", SIZE, seed=31)
    async with asyncio.timeout(T), cli_process(*share_args(tmp_path / "seed", source),
                                               cwd=tmp_path) as seed:
        info = await seed.json()
        cid = info["content_id"]
        seeder = address(info["listen"])
        baseline = await cli(*fetch_args(tmp_path / "dl0", cid, tmp_path / "base.bin", [seeder]),
                             cwd=tmp_path)
        assert baseline.code == 0, baseline.stderr
        holder = h.SlotHolder(seeder, SOURCES, HALF_OPEN, IDLE)
        holder.start()
        try:
            await holder.all_started.wait()
            held_at_start = holder.open_now
            attacked = await cli(*fetch_args(tmp_path / "dl1", cid, tmp_path / "out.bin",
                                             [seeder], timeout=15), cwd=tmp_path)
            held_at_end = holder.open_now
        finally:
            await holder.aclose()
    assert attacked.code == 0, f"exit {attacked.code}: {attacked.stderr[-1500:]}"
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    # The attack was in force: the server's slots were (nearly) all taken by it.
    assert holder.peak >= 240, (holder.peak, held_at_start, held_at_end)
    assert holder.sessions > 0
    assert attacked.seconds <= 4 * baseline.seconds + 5, (attacked.seconds, baseline.seconds)
