"""A download the node owns (``Node.start_fetch``, the terminal app's way) that is refused
before any transfer is told as its failure event: nobody awaits it to see the error."""

from __future__ import annotations

import asyncio
from pathlib import Path

from p2p.events import DownloadFailed
from p2p.node import Node

from .conftest import MiB, make_file, node_config, wait_for


async def test_a_refused_destination_of_held_content_is_a_failure_event(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "notes.bin", MiB)
    other = make_file(tmp_path / "there" / "notes.bin", MiB, seed=2)  # something else, in the way
    async with asyncio.timeout(30), Node(node_config(tmp_path, "home")) as node:
        cid = (await node.share(source)).content_id  # complete here: a local copy, no transfer
        with node.events.subscribed() as sub:
            assert node.start_fetch(str(cid), other) == cid
            failed = await wait_for(sub, lambda e: isinstance(e, DownloadFailed))
        assert isinstance(failed, DownloadFailed) and failed.content_id == cid
        assert "already exists" in failed.error and failed.exit_code == 6, failed
        assert other.read_bytes() != source.read_bytes()  # never overwritten

