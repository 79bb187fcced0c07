"""A chunk server for tests, with a recorder of its events that tests can await."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from p2p.identity import Identity, PeerId
from p2p.testing import FakeClock, MemorySource
from p2p.wire.server import Backpressure, PeerDisconnected, Server, ServerEvent, ServerLimits


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

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checking it again after every new event."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    def disconnects(self) -> list[PeerDisconnected]:
        return [e for e in self.events if isinstance(e, PeerDisconnected)]

    def write_paused(self, peer: PeerId) -> bool:
        """Whether the last Backpressure event for ``peer`` says its sending is paused."""
        states = [e.paused for e in self.events if isinstance(e, Backpressure) and e.peer == peer]
        return bool(states) and states[-1]


@asynccontextmanager
async def serving(limits: ServerLimits, cid: bytes, chunks: list[bytes | None], *,
                  clock: FakeClock | None = None,
                  ) -> AsyncIterator[tuple[Server, tuple[str, int], Recorder]]:
    """A server on 127.0.0.1 port 0 holding ``chunks`` of ``cid``; closed on exit.

    Its deadlines run on ``clock`` (a fresh :class:`FakeClock` if none is given), so no
    timeout fires unless the test moves the clock and calls ``server.handle_timers()``.
    """
    recorder = Recorder()
    server = Server(Identity.generate(), MemorySource({cid: list(chunks)}), limits,
                    on_event=recorder, clock=clock if clock is not None else FakeClock())
    addr = await server.start("127.0.0.1", 0)
    try:
        yield server, addr, recorder
    finally:
        await server.aclose()
