"""Shared helpers for the swarm tests: test files and small clusters of real nodes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from p2p.events import Event, Subscription
from p2p.node import Node, NodeConfig

MiB = 1 << 20

Address = tuple[str, int]


def make_file(path: Path, size: int, seed: int = 1) -> Path:
    """A file of ``size`` pseudo-random bytes (incompressible, reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def node_config(base: Path, name: str, bootstrap: Sequence[Address] = ()) -> NodeConfig:
    """A node on 127.0.0.1, port 0, state and downloads under ``base / name``."""
    return NodeConfig(state_dir=base / name / "state", host="127.0.0.1", port=0,
                      bootstrap=tuple(bootstrap), download_dir=base / name / "downloads",
                      max_contacts_per_ip=None)


@contextlib.asynccontextmanager
async def running_nodes(base: Path, names: Sequence[str],
                        bootstrap: Sequence[Address] = ()) -> AsyncIterator[list[Node]]:
    """Start nodes one after another; each joins the DHT through the first (or ``bootstrap``).

    A node can announce (and so share) only once its routing table is not empty, so
    the first node shares after the others joined.
    """
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = []
        for name in names:
            boot = bootstrap or ([nodes[0].listen_address()] if nodes else ())
            nodes.append(await stack.enter_async_context(Node(node_config(base, name, boot))))
        yield nodes


def drain(sub: Subscription) -> list[Event]:
    """Every event queued on ``sub`` right now."""
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out


async def wait_for(sub: Subscription, match: Callable[[Event], bool],
                   seen: list[Event] | None = None) -> Event:
    """The next event on ``sub`` that ``match``es (callers bound this with asyncio.timeout)."""
    while True:
        event = await sub.get()
        if seen is not None:
            seen.append(event)
        if match(event):
            return event
