"""A recorder of chunk-server events that tests can await (shared by the wire tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from p2p.wire.server import PeerDisconnected, ServerEvent


class Recorder:
    """Server events, with a way to await the one a test is waiting for."""

    def __init__(self) -> None:
        self.events: list[ServerEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: ServerEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[ServerEvent], bool]) -> ServerEvent:
        """The first recorded event that satisfies ``predicate`` (waits for it to happen)."""
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            self._changed.clear()
            await self._changed.wait()

    def disconnects(self) -> list[PeerDisconnected]:
        return [e for e in self.events if isinstance(e, PeerDisconnected)]
