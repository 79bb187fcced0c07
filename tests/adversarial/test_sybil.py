"""A sybil provider crowd (issue 12, item 2): 64 provider records from fresh Ed25519 keys,
addresses in one /24 where nothing listens, the latest expiry a node accepts, put into the
DHT nodes closest to the content's discovery key before the honest seeder announces. A
real ``p2p fetch ID`` (by id, through the DHT) still finds the honest seeder, every time.

The records and the puts are made by :mod:`adversarial.hostile` from the document's
"Records" and "RPCs"; the attacker finds the nodes around the key with its own
``find_node``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from p2p.node import Node

from . import hostile as h
from .conftest import MiB, address, cli, cli_process, fetch_args, make_file, node_config, share_args

SIZE = 4 * MiB
SYBILS = 64
RUNS = 3
T = 85


def sybil_records(content_id: bytes, count: int = SYBILS) -> list[bytes]:
    """``count`` provider records from fresh keys at 127.9.9.x, the latest expiry allowed."""
    key = h.discovery_key(content_id)
    expires = h.latest_provider_expiry()
    return [h.provider_record(h.Identity(), key, [(f"127.9.9.{1 + i}", 7473)], expires)
            for i in range(count)]


async def test_sybil_provider_crowd_does_not_hide_the_honest_seeder(tmp_path: Path) -> None:
    decoy = make_file(tmp_path / "src" / "baseline.bin", SIZE, seed=21)
    target = make_file(tmp_path / "src" / "target.bin", SIZE, seed=22)
    content = h.FileContent.of(target)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(asyncio.timeout(T))
        boot = await stack.enter_async_context(Node(node_config(tmp_path, "boot")))
        entry = boot.listen_address()
        for i in range(3):
            await stack.enter_async_context(Node(node_config(tmp_path, f"dht{i}", [entry])))
        # Baseline: the same kind of fetch by id, of content nobody attacks.
        base_seed = await stack.enter_async_context(
            cli_process(*share_args(tmp_path / "seed0", decoy, [entry]), cwd=tmp_path))
        base_id = (await base_seed.json())["content_id"]
        baseline = await cli(*fetch_args(tmp_path / "dl0", base_id, tmp_path / "base.bin",
                                         bootstrap=[entry]), cwd=tmp_path)
        assert baseline.code == 0, baseline.stderr
        # The crowd arrives first, then the honest seeder announces; then the crowd is put
        # again, now at the seeder's own node too.
        crowd = sybil_records(content.content_id)
        stored = min(await h.put_crowd(content.content_id, crowd, entry))
        assert stored == SYBILS, f"a node stored only {stored} of the sybil records"
        seed = await stack.enter_async_context(
            cli_process(*share_args(tmp_path / "seed1", target, [entry]), cwd=tmp_path))
        info = await seed.json()
        cid = info["content_id"]
        assert cid == h.content_id_text(content.content_id)
        seeder_key = h.parse_peer_id(info["peer_id"])
        await h.put_crowd(content.content_id, crowd, entry)
        runs = []
        for run in range(RUNS):
            dest = tmp_path / f"out{run}.bin"
            result = await cli(*fetch_args(tmp_path / f"dl{run + 1}", cid, dest,
                                           bootstrap=[entry]), cwd=tmp_path)
            runs.append(result)
            assert result.code == 0, f"run {run}: exit {result.code}: {result.stderr[-1500:]}"
            assert dest.read_bytes() == target.read_bytes()
            supplied = result.completed()["chunks_by_peer"]
            assert set(supplied) == {h.peer_id_text(seeder_key)}, supplied
    slowest = max(r.seconds for r in runs)
    assert slowest <= 4 * baseline.seconds + 5, ([r.seconds for r in runs], baseline.seconds)
    assert address(info["listen"])[0] == "127.0.0.1"
