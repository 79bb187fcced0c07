"""A download remembers where it was told to fetch from (a ticket's addresses)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from p2p.errors import NetworkError
from p2p.node import Node
from p2p.store import Store

from .conftest import MiB, make_file, node_config


async def test_resume_after_restart_dials_the_tickets_addresses_again(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 2 * MiB)
    async with asyncio.timeout(60):
        async with Node(node_config(tmp_path, "sharer")) as sharer:
            shared = await sharer.share(source)
            port = sharer.port
        ticket = str(shared.ticket)

        # The sharer is gone: the ticket's fetch says it could not connect (at once, not after
        # the timeout), but its addresses are kept.
        async with Node(node_config(tmp_path, "fetcher")) as fetcher:
            with pytest.raises(NetworkError, match=r"could not connect to 127\.0\.0\.1"):
                await fetcher.fetch(ticket, timeout=30.0)
        assert ("127.0.0.1", port) in Store(tmp_path / "fetcher" / "state").sources(shared.content_id)

        # The sharer is back on the same port; a new fetcher process knows only the id,
        # has no bootstrap and no --peer, and still finds it.
        back = dataclasses.replace(node_config(tmp_path, "sharer"), port=port)
        async with Node(back), Node(node_config(tmp_path, "fetcher")) as fetcher:
            path = (await fetcher.fetch(shared.content_id, timeout=10.0)).path
        assert path.read_bytes() == source.read_bytes()
