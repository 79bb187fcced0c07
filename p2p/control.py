"""The local control endpoint of a running node, and its client (:func:`query`).

One node runs per state directory (it holds ``<state_dir>/node.lock``). A long-running
one -- ``p2p serve``, ``p2p share`` while it serves, ``p2p fetch --seed``, the terminal
app -- listens on the Unix socket ``<state_dir>/control.sock`` (mode 0600: only its owner
may talk to it), and while it runs every other command goes through it, as ``ipfs add``
goes through ``ipfs daemon``. The conversation is one JSON object per line, one request
per connection:

1. the client connects and sends one request, ``{"cmd": NAME, ...}`` (:data:`COMMANDS`);
2. during a long operation (``share``, ``fetch``) the node sends zero or more
   interim lines: ``{"node_event": TYPE, ...}`` (a node event of that operation, as the
   client's progress view shows it), ``{"hashed": BYTES}`` (share progress) and
   ``{"alive": true}`` every :data:`HEARTBEAT` seconds;
3. the node answers ``{"ok": true, "result": ...}`` or
   ``{"ok": false, "error": "...", "exit_code": N}`` and closes the connection.

A client that closes the connection before the answer (Ctrl-C) stops what it asked for:
a fetch is paused (``p2p resume ID`` goes on with it), a share stops hashing. The node
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import attach
from .address import format_address, parse_address
from .content import ContentId, parse_id_or_ticket
from .content.select import Selection
from .errors import BadInput, ControlError, NetworkError, NoRunningNode, P2PError, StateDirLocked
from .events import (
    ChunkFailed,
    ChunkVerified,
    DownloadCompleted,
    DownloadFailed,
    DownloadPaused,
    DownloadProgress,
    DownloadStarted,
    Event,
    LogMessage,
    PeerBanned,
)
from .exitcodes import EXIT_INTERRUPTED, EXIT_NETWORK, EXIT_USAGE, describe, exit_code_for
from .identity import PeerId
from .library import Library
from .node import Node
from .units import parse_rate

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
"""A request is one small JSON object; anything longer is refused."""
REPLY_TIMEOUT = 10.0
"""How long the client waits for any line from a running node (a long operation sends a
heartbeat well within it)."""
HEARTBEAT = 2.0
"""Seconds between ``{"alive": true}`` lines during a long operation: the client tells a
busy node from a hung one."""
_MAX_SUN_PATH = 100
"""Unix socket paths longer than this (the kernel allows 107 bytes) are reached through /proc."""

COMMANDS = ("id", "peers", "lan", "dht", "ls", "share", "fetch", "listing", "verify", "unshare",
            "rm", "pause", "resume", "publish", "resolve", "netcheck", "limit",
            *attach.ATTACH_COMMANDS)
"""Every request a running node answers (see :func:`_answer` for their fields, and
:mod:`p2p.attach` for those of a front end attached to the node)."""

_FORWARDED: dict[str, type[Event]] = {cls.__name__: cls for cls in (
    DownloadStarted, ChunkVerified, ChunkFailed, DownloadProgress, DownloadCompleted,
    DownloadFailed, DownloadPaused, PeerBanned, LogMessage)}
"""The node events a fetch streams to its client (what :class:`~p2p.cli.progress.FetchView`
renders)."""


def _line(obj: object) -> str:
    """One compact JSON line; paths, ids and other objects become their text form."""
    return json.dumps(obj, default=str, separators=(",", ":"))


def socket_path(state_dir: Path) -> Path:
    """Where the running node of ``state_dir`` listens."""
    return state_dir / SOCKET_NAME


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """A path to the socket ``path`` short enough for ``connect``/``bind`` (through
    /proc/self/fd for a long one)."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH or not Path("/proc/self/fd").is_dir():
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# -- what the node answers ---------------------------------------------------------------------


def node_identity(node: Node) -> dict[str, Any]:
    """What ``p2p id`` shows of a running node."""
    return {"peer_id": str(node.peer_id), "public_key": node.public_key.hex(),
            "listen": format_address(node.listen_address()),
            "addresses": [format_address(a) for a in node.addresses()]}


def library_rows(library: Library, running: set[ContentId] | None, *,
                 checked: bool = False) -> dict[str, Any]:
    """What ``p2p ls`` lists: shares and downloads, each download with the state a person
    should read. ``running``: the downloads a live node runs now (None when it is not known
    whether one runs; the recorded states are then shown as they are). ``checked``: each
    share also says whether its files are as shared (``status``: ``ok``, ``changed`` or
    ``missing``, with counts; a ``stat`` per file, so call it in a thread)."""
    shares = []
    for s in library.shares():
        row: dict[str, Any] = {"content_id": str(s.content_id), "name": s.name, "kind": s.kind,
                               "size": s.size, "chunks": s.chunks, "path": str(s.root),
                               "origin": s.origin, "publisher": str(s.publisher)}
        if checked:
            health = library.share_health(s.content_id)
            row.update(health.to_json(), note=health.describe())
        shares.append(row)
    downloads = []
    for d in library.downloads():
        state, note = d.state, d.error
        if running is not None and d.content_id in running:
            state = "active"
        elif state in ("active", "interrupted", "paused", "failed") and d.placed is None and not (
                d.partial.exists() or d.partial.is_symlink()):
            # Its partial data was deleted: nothing is held, whatever the record says.
            state, note = "gone", "partial data deleted: `p2p rm ID` forgets it, `p2p resume ID` starts over"
        elif state == "active" and running is not None:
            state = "interrupted"  # recorded as running, but no node runs it: its node was killed
        downloads.append({"content_id": str(d.content_id), "name": d.name, "size": d.size,
                          "chunks": d.chunks, "done_chunks": 0 if state == "gone" else d.done_chunks,
                          "state": state, "recorded_state": d.state, "path": str(d.dest),
                          "partial": str(d.partial), "error": note})
    return {"shares": shares, "downloads": downloads}


def share_info(node: Node, result: Any, seconds: float, serving: bool) -> dict[str, Any]:
    """The result of ``p2p share`` (the same through a running node and from a node of its own)."""
    manifest = result.manifest
    return {"content_id": str(result.content_id), "ticket": str(result.ticket),
            "name": manifest.name, "size": manifest.total_size, "chunks": manifest.chunk_count,
            "publisher": str(manifest.publisher), "peer_id": str(node.peer_id),
            "listen": format_address(node.listen_address()),
            "listening": [format_address(a) for a in node.listen_addresses()],
            "addresses": [format_address(a) for a in node.addresses()],
            "relays": [{"relay": str(h.relay), "address": format_address(h.address)}
                       for h in node.relay_hints()],
            "hash_seconds": round(seconds, 3), "serving": serving,
            "left_out": result.left_out.to_json(),
            "bootstrap_error": None if node.dht_summary().contacts else node.bootstrap_error}


def encode_event(event: Event) -> dict[str, Any]:
    """A node event as one interim line of a fetch."""
    out: dict[str, Any] = {"node_event": type(event).__name__}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def decode_event(obj: dict[str, Any], known: Mapping[str, type[Event]] | None = None) -> Event | None:
    """The node event an interim line carries (None for any other line, or an unknown type).
    ``known``: the event types to read, by name (default: those a fetch forwards)."""
    cls = (_FORWARDED if known is None else known).get(str(obj.get("node_event")))
    if cls is None:
        return None
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in obj:
            continue
        value = obj[f.name]
        if f.name == "content_id":
            value = ContentId.parse(str(value))
        elif f.name == "peer":
            value = PeerId.parse(str(value))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError:
        return None  # a newer node's event with fields this client does not know


class _Channel:
    """The node's side of one connection: interim lines go out as they come."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def send(self, obj: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # the client left: its op is cancelled
            self._writer.write(_line(obj).encode() + b"\n")

    async def drain(self) -> None:
        """Wait until the client took what was sent (or left)."""
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.drain()

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            self.send({"alive": True})
            with contextlib.suppress(OSError):
                await self._writer.drain()


def _cid(request: dict[str, Any]) -> ContentId:
    return ContentId.parse(str(request.get("content_id", "")))


def _path(request: dict[str, Any], key: str) -> Path | None:
    value = request.get(key)
    if value is None:
        return None
    path = Path(str(value))
    if not path.is_absolute():
        raise BadInput(f"{key} must be an absolute path (the client resolves it), got {value!r}")
    return path


async def _answer(node: Node, request: dict[str, Any], channel: _Channel) -> Any:
    match request.get("cmd"):
        case "peers":
            return [p.to_json() for p in node.peers()]
        case "lan":
            contacts = node.lan_contacts()
            return {"status": node.lan_status,
                    "peers": [{**p.to_json(), "dht_contact": p.peer in contacts}
                              for p in node.lan_peers()]}
        case "dht":
            return node.dht_summary().to_json()
        case "id":
            return node_identity(node)
        case "ls":
            return await asyncio.to_thread(library_rows, node.library, node.downloading(),
                                           checked=True)
        case "verify":
            return (await node.verify(_cid(request))).to_json()
        case "unshare":
            cid = _cid(request)
            return {"content_id": str(cid), "removed": node.unshare(cid)}
        case "share":
            return await _share(node, request, channel)
        case "fetch":
            return await _fetch(node, request, channel)
        case "listing":
            manifest = await node.listing(str(request.get("target", "")), **_finding(request))
            return {"name": manifest.name, "kind": manifest.kind, "size": manifest.total_size,
                    "publisher": str(manifest.publisher),
                    "entries": [{"path": e.path, "size": e.info.size, "content_id": str(e.content_id)}
                                for e in manifest.entries]}
        case "rm":
            return (await node.remove(_cid(request), delete=bool(request.get("delete")))).to_json()
        case "pause":
            cid = _cid(request)
            return {"content_id": str(cid), "was": await node.hold(cid)}
        case "resume":
            cid = _cid(request)
            return {"content_id": str(cid), "was": node.resume(cid)}
        case "publish":
            record = await node.publish(str(request.get("name", "")), _cid(request))
            return {"publisher": str(record.publisher), "name": record.name,
                    "content_id": str(ContentId(record.content_id)), "seq": record.seq}
        case "limit":
            return node_limits(node, request)
        case "resolve":
            record = await node.resolve(PeerId.parse(str(request.get("publisher", ""))),
                                        str(request.get("name", "")))
            return {"publisher": str(record.publisher), "name": record.name,
                    "content_id": str(ContentId(record.content_id)), "seq": record.seq}
        case "netcheck":
            return (await node.netcheck()).to_json()
        case cmd if cmd in attach.ATTACH_COMMANDS:
            return await attach.answer(node, request, lambda e: channel.send(encode_event(e)),
                                       channel.drain)
        case other:
            raise BadInput(f"unknown control command {other!r} (known: {', '.join(COMMANDS)})")


def _rate(request: dict[str, Any], key: str) -> float | None:
    """A rate field of a request: bytes per second (a number, or text as typed), or None."""
    value = request.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadInput(f"{key}: expected a rate, got {value!r}")
    return parse_rate(str(value), key)


def node_limits(node: Node, request: dict[str, Any]) -> dict[str, Any]:
    """``limit``: change what the request gives (``up``, ``down``; with ``content_id``, that
    download's own ``down``), then answer the limits in force (:meth:`Node.limits`)."""
    up, down = _rate(request, "up"), _rate(request, "down")
    if request.get("content_id"):
        if up is not None:
            raise BadInput("a download has no upload limit of its own: --up is the node's "
                           "(give it without an ID)")
        if down is not None:
            node.set_download_limit(_cid(request), down)
    else:
        node.set_limits(up=up, down=down)
    return node.limits()


def _finding(request: dict[str, Any]) -> dict[str, Any]:
    publisher = request.get("publisher")
    return {"publisher": PeerId.parse(str(publisher)) if publisher else None,
            "peers": [parse_address(str(p), what="peer address") for p in request.get("peers", [])],
            "timeout": float(request.get("timeout", 30.0))}


async def _share(node: Node, request: dict[str, Any], channel: _Channel) -> dict[str, Any]:
    path = _path(request, "path")
    if path is None:
        raise BadInput("share needs a path")
    hashed = 0

    def progress(n: int) -> None:
        nonlocal hashed
        hashed += n
        channel.send({"hashed": hashed})

    started = time.monotonic()
    result = await node.share(path, progress)
    return share_info(node, result, time.monotonic() - started, serving=True)


async def _fetch(node: Node, request: dict[str, Any], channel: _Channel) -> dict[str, Any]:
    target = str(request.get("target", ""))
    content_id, _ = parse_id_or_ticket(target)
    selection = Selection(tuple(request.get("include", [])), tuple(request.get("exclude", [])))
    if request.get("file") is not None:
        selection = Selection.of_paths([str(request["file"])])

    def forward(event: Event) -> None:
        if type(event).__name__ in _FORWARDED and getattr(event, "content_id", content_id) == content_id:
            channel.send(encode_event(event))

    with node.events.subscribed() as sub:
        async def pump() -> None:
            async for event in sub:
                forward(event)

        pumping = asyncio.get_running_loop().create_task(pump(), name="control events")
        try:
            await node.join(content_id)  # already running here (resumed at start, say): follow it
            result = await node.fetch(target, _path(request, "dest"), **_finding(request),
                                      selection=selection, download_dir=_path(request, "download_dir"),
                                      rename=bool(request.get("rename")),
                                      sequential=bool(request.get("sequential")),
                                      max_download_rate=_rate(request, "max_download_rate") or 0.0)
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
            while (event := sub.get_nowait()) is not None:
                forward(event)
    return result.to_json()


@contextlib.asynccontextmanager
async def control_endpoint(node: Node) -> AsyncIterator[Path | None]:
    """Serve the control socket of ``node`` for the duration of the block; yields its path.

    If another live node of the same state directory already holds the socket, raises
    :class:`~p2p.errors.StateDirLocked`: two nodes serving one library would disagree.
    On exit, operations still running for clients are stopped (a fetch is paused) and
    their clients told the node is stopping.
    """
    path = socket_path(node.config.state_dir)
    running: set[asyncio.Task[Any]] = set()
    stopping = False

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_one(reader, writer)
        finally:
            with contextlib.suppress(OSError):
                writer.close()
                await writer.wait_closed()

    async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
            if len(line) > MAX_REQUEST:
                raise ValueError("request too long")
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except (ValueError, TimeoutError) as exc:
            _reply(writer, {"ok": False, "error": f"bad control request: {exc}", "exit_code": EXIT_USAGE})
            return
        channel = _Channel(writer)
        loop = asyncio.get_running_loop()
        op = loop.create_task(_answer(node, request, channel), name=f"control {request.get('cmd')}")
        running.add(op)
        gone = loop.create_task(reader.read(1), name="control eof")  # b"" once the client left
        beat = loop.create_task(channel.heartbeat(), name="control heartbeat")
        try:
            await asyncio.wait([op, gone], return_when=asyncio.FIRST_COMPLETED)
            if not op.done():  # the client left (Ctrl-C): stop what it asked for, not the node
                op.cancel()
                with contextlib.suppress(asyncio.CancelledError, P2PError, OSError, ValueError):
                    await op
                return
        finally:
            running.discard(op)
            for task in (gone, beat):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        _reply(writer, _outcome(node, op, request, stopping or node.closing))
        with contextlib.suppress(OSError):
            await writer.drain()

    if await _is_live(path):
        raise StateDirLocked(f"a node of {node.config.state_dir} is already running (its control "
                             "socket answers); stop it first, or use another --state-dir")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o177)  # the socket is created 0600, never briefly open to others
    try:
        with socket_address(path) as where:
            server = await asyncio.start_unix_server(handle, path=where)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    try:
        yield path
    finally:
        stopping = True
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for op in list(running):
            op.cancel()
        for op in list(running):
            with contextlib.suppress(asyncio.CancelledError, P2PError, OSError, ValueError):
                await op
        await server.wait_closed()


_STOPPED = {
    "paused": "the download was paused (`p2p resume ID` goes on with it)",
    "removed": "the download was removed (`p2p rm`): nothing more is fetched",
    "cancelled": "the download was cancelled and its partial data deleted",
}
"""What a client following a fetch is told when a request stopped it (:meth:`Node.stopped_why`)."""


def _outcome(node: Node, op: asyncio.Task[Any], request: dict[str, Any],
             stopping: bool) -> dict[str, Any]:
    """The answer line for a finished operation."""
    if op.cancelled():
        if stopping:
            return {"ok": False, "exit_code": EXIT_NETWORK,
                    "error": "the running node is stopping; its downloads resume when it starts again"}
        target = request.get("target", "")
        if request.get("cmd") != "fetch":
            return {"ok": False, "exit_code": EXIT_INTERRUPTED,
                    "error": f"stopped: {request.get('cmd')} {target}".strip()}
        why = None
        with contextlib.suppress(P2PError, ValueError):
            why = node.stopped_why(parse_id_or_ticket(str(target))[0])
        return {"ok": False, "exit_code": EXIT_INTERRUPTED, "stopped": why or "paused",
                "error": _STOPPED.get(why or "paused", _STOPPED["paused"])}
    exc = op.exception()
    if exc is None:
        return {"ok": True, "result": op.result()}
    if isinstance(exc, P2PError | OSError):
        return {"ok": False, "error": describe(exc), "exit_code": exit_code_for(exc)}
    if isinstance(exc, ValueError | TypeError | KeyError):
        return {"ok": False, "error": f"bad control request: {exc}", "exit_code": EXIT_USAGE}
    log.error("control request %s failed", request.get("cmd"), exc_info=exc)
    return {"ok": False, "error": describe(exc), "exit_code": exit_code_for(exc)}


def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(_line(reply).encode() + b"\n")


async def _is_live(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket_address(path) as where:
            _, writer = await asyncio.open_unix_connection(where)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# -- the client --------------------------------------------------------------------------------


async def query(state_dir: Path, request: dict[str, Any],
                on_line: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Ask the running node of ``state_dir``; interim lines (events, progress) go to
    ``on_line``. Raises :class:`NoRunningNode` if there is none, :class:`ControlError` with
    the node's exit code when it refuses. Cancelling the caller closes the connection, which
    stops the operation on the node (a fetch is paused)."""
    path = socket_path(state_dir)
    try:
        with socket_address(path) as where:
            reader, writer = await asyncio.open_unix_connection(where, limit=1 << 24)
    except OSError:
        raise NoRunningNode(
            f"no node is running for the state directory {state_dir} "
            "(start one with `p2p serve`, `p2p share PATH` or `p2p fetch --seed ID`)") from None
    try:
        writer.write(_line(request).encode() + b"\n")
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
