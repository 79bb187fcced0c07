"""Task ownership: every background task belongs to the component that started it.

A component with a lifetime (the node, a download, the chunk server, the DHT) owns
a :class:`TaskOwner`. It spawns its background work there instead of calling
``create_task`` and keeping a set by hand; its ``aclose()`` cancels and awaits
everything it started, and every task that fails is logged with its traceback,
at once and whether or not somebody also awaits it (asyncio would only mention an
unread failure when the task is garbage-collected, if ever). Expected failures
are therefore caught inside the task; what reaches the owner is a bug.

Why not a bare :class:`asyncio.TaskGroup`: a group cancels the task that entered
it when a child fails, so one failed re-announce would tear down the whole node.
Work whose failure must end its owner is awaited by the owner directly; work
spawned here fails alone and loudly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import LocalProtocolError

T = TypeVar("T")

__all__ = ["TaskOwner"]


class TaskOwner:
    """The set of background tasks of one component, closed with it."""

    def __init__(self, owner: str, logger: logging.Logger | None = None) -> None:
        self._owner = owner
        self._log = logger or logging.getLogger(__name__)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun: nothing more may be spawned."""
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` as a task owned here; its failure is logged, never lost."""
        if self._closed:
            coro.close()
            raise LocalProtocolError(f"{self._owner} is closed; cannot start {name!r}")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._owner}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # marks it retrieved: asyncio will not warn about it again
        if exc is not None:
            self._log.error("%s failed: %r", task.get_name(), exc, exc_info=exc)

    async def aclose(self) -> None:
        """Cancel every task still running and wait for all of them. Idempotent.

        Tasks spawned by the tasks being cancelled (while they unwind) are
        cancelled too.
        """
        self._closed = True
        while self._tasks:
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
