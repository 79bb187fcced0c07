"""The client of a running node's control socket (the protocol: :mod:`p2p.control`).

While a node of the state directory runs, the commands go through it: :func:`query`
sends one request and returns the node's answer, passing interim lines (events,
progress) on as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import (
    NetworkError,
    Node,
    P2PError,
    control_endpoint,
    control_socket,
    control_socket_address,
    decode_event,
    library_rows,
    share_info,
)
from .output import to_json

__all__ = ["ControlError", "NoRunningNode", "control_endpoint", "decode_event", "library_rows",
           "query", "running", "share_info", "socket_path"]

REPLY_TIMEOUT = 10.0
"""How long the client waits for any line from a running node (a long operation sends a
heartbeat well within it)."""

socket_path = control_socket


class NoRunningNode(NetworkError):
    """No node of this state directory is running (nothing answers on its control socket)."""


class ControlError(P2PError):
    """The running node refused a control request; carries the exit code it chose."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

# -- the client ----------------------------------------------------------------------------------


async def query(state_dir: Path, request: dict[str, Any],
                on_line: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Ask the running node of ``state_dir``; interim lines (events, progress) go to
    ``on_line``. Raises :class:`NoRunningNode` if there is none, :class:`ControlError` with
    the node's exit code when it refuses. Cancelling the caller closes the connection, which
    stops the operation on the node (a fetch is paused)."""
    path = socket_path(state_dir)
    try:
        with control_socket_address(path) as where:
            reader, writer = await asyncio.open_unix_connection(where, limit=1 << 24)
    except OSError:
        raise NoRunningNode(
            f"no node is running for the state directory {state_dir} "
            "(start one with `p2p serve`, `p2p share PATH` or `p2p fetch --seed ID`)") from None
    try:
        writer.write(to_json(request).encode() + b"\n")
        await writer.drain()
        while True:
            async with asyncio.timeout(REPLY_TIMEOUT):
                line = await reader.readline()
            if not line:
                raise NetworkError(f"the node of {state_dir} closed the connection without "
                                   "answering (it stopped, or see its log)")
            try:
                reply = json.loads(line)
            except ValueError:
                raise NetworkError(f"the node of {state_dir} sent a malformed answer") from None
            if not isinstance(reply, dict):
                raise NetworkError(f"the node of {state_dir} sent a malformed answer")
            if "ok" in reply:
                break
            if on_line is not None:
                on_line(reply)
    except (OSError, TimeoutError) as exc:
        raise NetworkError(f"the node of {state_dir} did not answer: {exc or 'timed out'}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")), int(reply.get("exit_code", 1)))
    return reply.get("result")


def running(state_dir: Path) -> str | None:
    """Who runs a node of ``state_dir`` (``pid N, p2p serve``), or None: see :meth:`Node.running_holder`."""
    return Node.running_holder(state_dir)

