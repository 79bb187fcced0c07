"""The local control endpoint of a running node, and its client.

A running ``p2p share``, ``p2p serve`` or ``p2p fetch --seed`` listens on the Unix
socket ``<state_dir>/control.sock`` (mode 0600: only its owner may talk to it).
The conversation is one JSON object per line, one request per connection:

1. the client connects and sends ``{"cmd": "peers"}`` (or ``dht``, ``id``, ``verify``,
   ``unshare``; the last two with ``"content_id"``);
2. the node answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...", "exit_code": N}``
   and closes the connection.

``p2p peers`` and ``p2p dht`` use it to show the live state of that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from .. import ContentId, NetworkError, Node, P2PError, StateDirLocked, format_address
from .output import to_json

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
"""A request is one small JSON object; anything longer is refused."""
REPLY_TIMEOUT = 10.0
"""How long the client waits for a running node to answer."""
_MAX_SUN_PATH = 100
"""Unix socket paths longer than this (the kernel allows 107 bytes) are reached through /proc."""


class NoRunningNode(NetworkError):
    """No node of this state directory is running (nothing answers on its control socket)."""


def socket_path(state_dir: Path) -> Path:
    """Where the running node of ``state_dir`` listens."""
    return state_dir / SOCKET_NAME


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path to ``path`` short enough for a Unix socket (through /proc/self/fd for a long one)."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH or not Path("/proc/self/fd").is_dir():
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def node_identity(node: Node) -> dict[str, Any]:
    """What ``p2p id`` shows of a running node."""
    return {"peer_id": str(node.peer_id), "public_key": node.public_key.hex(),
            "listen": format_address(node.listen_address()),
            "addresses": [format_address(a) for a in node.addresses()]}


async def _answer(node: Node, request: dict[str, Any]) -> Any:
    match request.get("cmd"):
        case "peers":
            return [p.to_json() for p in node.peers()]
        case "dht":
            return node.dht_summary().to_json()
        case "id":
            return node_identity(node)
        case "verify":
            cid = ContentId.parse(str(request.get("content_id", "")))
            return (await node.verify(cid)).to_json()
        case "unshare":
            cid = ContentId.parse(str(request.get("content_id", "")))
            return {"content_id": str(cid), "removed": node.unshare(cid)}
        case other:
            raise ValueError(f"unknown control command {other!r}")


@contextlib.asynccontextmanager
async def control_endpoint(node: Node) -> AsyncIterator[Path | None]:
    """Serve the control socket of ``node`` for the duration of the block; yields its path.

    If another live node of the same state directory already holds the socket, raises
    :class:`~p2p.errors.StateDirLocked`: two nodes serving one library would disagree.
    """
    path = socket_path(node.config.state_dir)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
            if len(line) > MAX_REQUEST:
                raise ValueError("request too long")
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            reply: dict[str, Any] = {"ok": True, "result": await _answer(node, request)}
        except P2PError as exc:
            reply = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        except (ValueError, TimeoutError) as exc:
            reply = {"ok": False, "error": f"bad control request: {exc}", "exit_code": 2}
        with contextlib.suppress(OSError):
            writer.write(to_json(reply).encode() + b"\n")
            await writer.drain()
            writer.close()
            await writer.wait_closed()

    if await _is_live(path):
        raise StateDirLocked(f"a node of {node.config.state_dir} is already running (its control "
                             "socket answers); stop it first, or use another --state-dir")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o177)  # the socket is created 0600, never briefly open to others
    try:
        with _short_path(path) as where:
            server = await asyncio.start_unix_server(handle, path=where)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    try:
        yield path
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        await server.wait_closed()


async def _is_live(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with _short_path(path) as where:
            _, writer = await asyncio.open_unix_connection(where)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def query(state_dir: Path, request: dict[str, Any]) -> Any:
    """Ask the running node of ``state_dir``. Raises :class:`NoRunningNode` if there is none."""
    path = socket_path(state_dir)
    try:
        with _short_path(path) as where:
            reader, writer = await asyncio.open_unix_connection(where)
    except OSError:
        raise NoRunningNode(
            f"no node is running for the state directory {state_dir} "
            "(start one with `p2p serve`, `p2p share PATH` or `p2p fetch --seed ID`)") from None
    try:
        writer.write(to_json(request).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(REPLY_TIMEOUT):
            line = await reader.readline()
    except (OSError, TimeoutError) as exc:
        raise NetworkError(f"the node of {state_dir} did not answer: {exc or 'timed out'}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    try:
        reply = json.loads(line)
    except ValueError:
        raise NetworkError(f"the node of {state_dir} sent a malformed answer") from None
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")), int(reply.get("exit_code", 1)))
    return reply.get("result")


class ControlError(P2PError):
    """The running node refused a control request; carries the exit code it chose."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
