"""Shared helpers for the swarm tests: test files and small clusters of real nodes on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from testbed import MiB, make_file, node_config

from p2p.events import Event, Subscription
from p2p.node import Node

Address = tuple[str, int]

__all__ = ["MiB", "drain", "make_file", "node_config", "running_nodes", "wait_for"]


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
