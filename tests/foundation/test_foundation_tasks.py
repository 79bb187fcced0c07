"""TaskOwner: every task it starts is cancelled on close, and no failure goes unread."""

from __future__ import annotations

import asyncio
import logging

import pytest

from p2p.errors import LocalProtocolError
from p2p.tasks import TaskOwner


async def test_close_cancels_and_awaits_everything() -> None:
    owner = TaskOwner("test")
    started = asyncio.Event()
    unwound: list[str] = []

    async def forever(name: str) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            unwound.append(name)

    owner.spawn(forever("a"), "a")
    owner.spawn(forever("b"), "b")
    async with asyncio.timeout(5):
        await started.wait()
        await owner.aclose()
    assert sorted(unwound) == ["a", "b"]
    assert len(owner) == 0
    await owner.aclose()  # idempotent


async def test_unawaited_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("test")

    async def boom() -> None:
        raise ValueError("broken on purpose")

    with caplog.at_level(logging.ERROR, logger="p2p.tasks"):
        task = owner.spawn(boom(), "boom")
        async with asyncio.timeout(5):
            with pytest.raises(ValueError):
                await task
            await owner.aclose()
    assert any("broken on purpose" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_spawn_after_close_is_refused() -> None:
    owner = TaskOwner("test")
    await owner.aclose()

    async def nothing() -> None:
        return None

    with pytest.raises(LocalProtocolError):
        owner.spawn(nothing(), "late")
