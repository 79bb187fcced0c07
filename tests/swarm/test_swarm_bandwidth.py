"""Bandwidth limits on real connections between nodes in one process (127.0.0.1, port 0).

The assertions are on the limiter's own accounting, not on wall-clock speed: what it
charged (every byte the connections moved) can never exceed what its rate allowed over
the time it was charging, plus one second of burst and one turn per connection. A slower
machine only moves fewer bytes, so the bound holds under any load; a limit that was not
applied where bytes move breaks it (the transfer then runs at loopback speed). The
accuracy of the rate itself is measured by ``bench/limits.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

from p2p.events import ChunkVerified, DownloadStarted
from p2p.node import Node
from p2p.wire.bandwidth import RateLimit

from .conftest import MiB, make_file, node_config, wait_for

RATE = 4 * MiB
SIZE = 12 * MiB
"""Three seconds at the rate: well past the one-second burst, so the limit must hold back."""


def assert_held(limit: RateLimit, moved: int, connections: int = 1) -> None:
    """The limiter charged at least ``moved`` bytes and no more than its rate allowed."""
    assert limit.spent >= moved  # ciphertext: the payload plus framing and encryption
    assert limit.waits > 0, "the limit never held anything back"
    assert limit.started is not None and limit.last is not None
    allowed = limit.burst + limit.rate * (limit.last - limit.started) + limit.quantum * connections
    assert limit.spent <= allowed, (limit.spent, allowed)


async def test_an_upload_limit_holds_the_seeders_sending(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "big.bin", SIZE)
    async with asyncio.timeout(60), \
            Node(node_config(tmp_path, "seed", max_upload_rate=RATE)) as seeder:
        cid = (await seeder.share(source)).content_id
        async with Node(node_config(tmp_path, "dl")) as dl:
            result = await dl.fetch(str(cid), tmp_path / "out.bin",
                                    peers=[seeder.listen_address()], timeout=30)
            assert result.path.read_bytes() == source.read_bytes()
            assert dl.bandwidth.down.limit.spent == 0  # no limit there: not even counted
        assert_held(seeder.bandwidth.up.limit, SIZE)
        assert seeder.limits()["up"]["rate"] == RATE


async def test_a_download_limit_holds_the_receivers_reading(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "big.bin", SIZE)
    async with asyncio.timeout(60), Node(node_config(tmp_path, "seed")) as seeder:
        cid = (await seeder.share(source)).content_id
        async with Node(node_config(tmp_path, "dl", max_download_rate=RATE)) as dl:
            result = await dl.fetch(str(cid), tmp_path / "out.bin",
                                    peers=[seeder.listen_address()], timeout=30)
            assert result.path.read_bytes() == source.read_bytes()
            assert_held(dl.bandwidth.down.limit, SIZE)
        assert seeder.bandwidth.up.limit.spent == 0


async def test_a_downloads_own_limit_holds_and_changes_while_it_runs(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "big.bin", SIZE)
    async with asyncio.timeout(60), Node(node_config(tmp_path, "seed")) as seeder:
        cid = (await seeder.share(source)).content_id
        async with Node(node_config(tmp_path, "dl")) as dl:
            with dl.events.subscribed() as sub:
                fetching = asyncio.get_running_loop().create_task(dl.fetch(
                    str(cid), tmp_path / "out.bin", peers=[seeder.listen_address()],
                    timeout=30, max_download_rate=RATE // 2))
                try:
                    await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                    shown = dl.limits()["downloads"][str(cid)]
                    assert shown["rate"] == RATE // 2
                    own = dl._download_limits[cid].limit
                    dl.set_download_limit(cid, RATE)  # live: the open connection follows
                    assert own.rate == RATE
                    result = await fetching
                finally:
                    fetching.cancel()
            assert result.path.read_bytes() == source.read_bytes()
            assert_held(own, 0)
            assert own.spent >= SIZE - 2 * MiB  # most of it came under the download's limit
            assert dl.bandwidth.down.limit.spent == 0  # the node's own: none set
            assert str(cid) not in dl.limits()["downloads"]  # gone with its download


async def test_lifting_a_limit_wakes_what_it_held(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "big.bin", SIZE)
    # 64 KiB/s: the 12 MiB would take three minutes; lifting the limit finishes it at once.
    async with asyncio.timeout(60), \
            Node(node_config(tmp_path, "seed", max_upload_rate=64 * 1024)) as seeder:
        cid = (await seeder.share(source)).content_id
        async with Node(node_config(tmp_path, "dl")) as dl:
            with dl.events.subscribed() as sub:
                fetching = asyncio.get_running_loop().create_task(dl.fetch(
                    str(cid), tmp_path / "out.bin", peers=[seeder.listen_address()], timeout=30))
                try:
                    await wait_for(sub, lambda e: isinstance(e, ChunkVerified))
                    assert seeder.bandwidth.up.limit.waits > 0  # a chunk is more than 64 KiB
                    seeder.set_limits(up=0)
                    result = await fetching
                finally:
                    fetching.cancel()
            assert result.path.read_bytes() == source.read_bytes()
            assert seeder.bandwidth.up.limit.waiting == 0



async def test_two_downloaders_share_one_upload_limit_evenly(tmp_path: Path) -> None:
    # 128 KiB chunks: each is sent as one 128 KiB piece and a small one (its record headers),
    # so a turn must be worth the same bytes to each connection, not the same number of writes.
    rate = 8 * MiB  # a turn is then a whole write piece (128 KiB)
    size = 80 * MiB  # never finished: the test reads a window of 32 MiB out of it
    sources = [make_file(tmp_path / "src" / f"f{i}.bin", size, seed=i + 1) for i in range(2)]
    roomy = {"max_download_rate": 1024 * MiB}  # far above the rate: only there to count bytes
    async with asyncio.timeout(60), \
            Node(node_config(tmp_path, "seed", max_upload_rate=rate)) as seeder, \
            Node(node_config(tmp_path, "a", **roomy)) as a, \
            Node(node_config(tmp_path, "b", **roomy)) as b:
        cids = [str((await seeder.share(s)).content_id) for s in sources]
        downloaders = (a, b)
        with a.events.subscribed() as sub_a, b.events.subscribed() as sub_b:
            fetches = [asyncio.get_running_loop().create_task(node.fetch(
                cid, tmp_path / f"out{i}.bin", peers=[seeder.listen_address()], timeout=30))
                for i, (node, cid) in enumerate(zip(downloaders, cids, strict=True))]
            try:
                def spent() -> list[int]:
                    return [node.bandwidth.down.limit.spent for node in downloaders]

                async def until(done: Callable[[], bool]) -> None:
                    while not done():  # both subscriptions drained as chunks arrive
                        await wait_for(sub_a if spent()[0] <= spent()[1] else sub_b,
                                       lambda e: isinstance(e, ChunkVerified))

                await until(lambda: min(spent()) >= MiB)  # both are moving
                start = spent()
                await until(lambda: sum(spent()) - sum(start) >= 32 * MiB)
                got = [end - begin for begin, end in zip(start, spent(), strict=True)]
            finally:
                for fetch in fetches:
                    fetch.cancel()
                await asyncio.gather(*fetches, return_exceptions=True)
        assert min(got) / max(got) >= 0.9, got  # each about half (one write per turn split it 1:2)


async def test_a_downloads_own_limit_is_kept_across_pause_resume_and_restart(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "big.bin", SIZE)
    slow = 256 * 1024  # 12 MiB would take 48 s: it is surely running at every step below
    async with asyncio.timeout(60), Node(node_config(tmp_path, "seed")) as seeder:
        cid = (await seeder.share(source)).content_id
        dl_config = node_config(tmp_path, "dl")
        async with Node(dl_config) as dl:
            with dl.events.subscribed() as sub:
                fetching = asyncio.get_running_loop().create_task(dl.fetch(
                    str(cid), tmp_path / "out.bin", peers=[seeder.listen_address()],
                    timeout=30, max_download_rate=slow))
                await wait_for(sub, lambda e: isinstance(e, ChunkVerified))
                assert await dl.pause(cid)
                assert fetching.cancelled()
                assert dl.stopped_why(cid) == "paused"
                assert str(cid) not in dl.limits()["downloads"]
                assert dl.resume(cid) == "paused"  # owned by the node now
                await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                assert dl.limits()["downloads"][str(cid)]["rate"] == slow
                assert dl.stopped_why(cid) is None
        # Stopped with the node (interrupted), resumed by the next one: still its own limit.
        async with Node(dataclasses.replace(dl_config, resume_downloads=True)) as again:
            with again.events.subscribed() as sub:
                if cid not in again.downloading():
                    await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                assert again.limits()["downloads"][str(cid)]["rate"] == slow
                again.set_download_limit(cid, 0)  # lifted: finishes at loopback speed
                await again.join(cid)
            info = again.library.download(cid)
            assert info is not None and info.state == "complete", info
        assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
