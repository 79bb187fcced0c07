"""Message floods (issue 12, item 1): a peer that sends valid messages that change nothing,
as fast as its victim takes them, costs itself the connection, not the victim its download.

Both floods count what the victim *processed*, not what sat in socket buffers: a Ping
after every batch is answered in order, so each Pong acknowledges the whole batch before
it (:class:`~adversarial.hostile.Flood`). The bound is a budget of thousands of such
messages, far above what an honest peer sends (a few stray Haves or Cancels). A seeder
then refuses the flooder's address for a while, before any cryptography (PROTOCOL.md,
Threats), so a fresh key buys no fresh budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from p2p.identity import PeerId
from p2p.library import Library

from . import hostile as h
from .conftest import MiB, address, cli, cli_process, fetch_args, make_file, share_args

SIZE = 16 * MiB
MAX_FLOOD = 10_000
"""The most messages that change nothing a victim may process before it drops the flooder."""
T = 80


async def test_flooding_provider_is_dropped_and_banned_and_the_download_completes(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", SIZE, seed=11)
    content = h.FileContent.of(source)
    flooder = h.FloodingProvider(content)
    listener = h.Listener(flooder.identity, flooder)
    async with asyncio.timeout(T), cli_process(*share_args(tmp_path / "seed", source),
                                               cwd=tmp_path) as seed:
        info = await seed.json()
        cid = info["content_id"]
        assert cid == h.content_id_text(content.content_id)
        seeder = address(info["listen"])
        baseline = await cli(*fetch_args(tmp_path / "dl0", cid, tmp_path / "base.bin", [seeder]),
                             cwd=tmp_path)
        assert baseline.code == 0, baseline.stderr
        assert (tmp_path / "base.bin").read_bytes() == source.read_bytes()
        flood_addr = await listener.start("127.0.0.1")
        try:
            state = tmp_path / "dl1"
            attacked = await cli(*fetch_args(state, cid, tmp_path / "out.bin",
                                             [flood_addr, seeder]), cwd=tmp_path)
        finally:
            await listener.aclose()
    assert attacked.code == 0, attacked.stderr
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert flooder.floods, "the downloader never dialled the flooding provider"
    first = flooder.floods[0]
    assert first.dropped.is_set()
    with Library.open(state) as library:
        banned = library.is_banned(PeerId(flooder.identity.public_key))
    assert banned, (f"the flooder was not banned; the downloader processed {first.acked} "
                    "messages that changed nothing")
    assert first.acked <= MAX_FLOOD, f"dropped only after {first.acked} messages"
    assert flooder.requests_after_drop == 0, "the banned flooder was asked for content again"
    assert attacked.seconds <= 4 * baseline.seconds + 5, (attacked.seconds, baseline.seconds)


async def test_flood_of_a_seeders_server_is_dropped_while_a_download_from_it_completes(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", SIZE, seed=12)
    content = h.FileContent.of(source)
    async with asyncio.timeout(T), cli_process(*share_args(tmp_path / "seed", source),
                                               cwd=tmp_path) as seed:
        info = await seed.json()
        cid = info["content_id"]
        seeder = address(info["listen"])
        baseline = await cli(*fetch_args(tmp_path / "dl0", cid, tmp_path / "base.bin", [seeder]),
                             cwd=tmp_path)
        assert baseline.code == 0, baseline.stderr
        session = await h.dial(*seeder, source="127.33.0.1")
        flood = h.Flood(session, h.server_flood_frame(content.content_id))
        flooding = asyncio.create_task(flood.run())
        try:
            attacked = await cli(*fetch_args(tmp_path / "dl1", cid, tmp_path / "out.bin",
                                             [seeder]), cwd=tmp_path)
            dropped_during_download = flood.dropped.is_set()
            # PROTOCOL.md, Threats: a server refuses a flooder's IP for a while, before any
            # cryptography, so a fresh key does not buy a fresh budget.
            refused_again = False
            if dropped_during_download:
                try:
                    await (await h.dial(*seeder, source="127.33.0.1")).aclose()
                except (h.Closed, ConnectionError):
                    refused_again = True
        finally:
            flooding.cancel()
            with contextlib.suppress(BaseException):
                await flooding
            session.abort()
    assert attacked.code == 0, attacked.stderr
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert dropped_during_download, (f"the flooder was still connected after the server "
                                     f"processed {flood.acked} of its messages")
    assert flood.acked <= MAX_FLOOD, f"dropped only after {flood.acked} messages"
    assert refused_again, "the flooder's address was let in again at once with a fresh key"
    assert attacked.seconds <= 4 * baseline.seconds + 5, (attacked.seconds, baseline.seconds)
