"""What a front end attached to a running node asks through its control socket.

The terminal app started on a state directory whose node already runs (``p2p serve``,
``p2p share``, ``p2p fetch --seed``) drives that node instead of starting a second one. Its
views need more than the command line's requests (:data:`p2p.control.COMMANDS`), and these
are the requests it adds, each answered by one function below (the conversation is the
control socket's: one JSON request, interim lines, one answer):

``snapshot`` ``{"known": [ID...]}``
    the node's local state in one answer: identity, shares, downloads, connected peers,
    bans, the DHT summary, the running downloads and, for each download neither running nor
    ``known`` to the client, the chunks held (:func:`encode_snapshot`).
``events``
    every node event of :data:`STREAMED` as an interim line
    (:func:`p2p.control.encode_event`), until the client leaves or the node stops; no answer.
``start`` ``{"target": ID-or-TICKET, "paths": [...]?, "download_dir": ABS?, "rename": BOOL?}``
    start a download owned by the node and answer at once: ``{"content_id", "started"}``
    (``started`` false: it was running already). ``rename``: a different file where it would
    go is kept and the download goes beside it as ``NAME (1).EXT`` (else it fails, refused).
``select`` ``{"content_id", "target"?, "paths": [...], "download_dir"?}``
    fetch exactly these files: the running download changes at once, a stopped one starts
    with them; answers ``{"content_id", "running"}`` (true: it was running).
``files`` ``{"content_id"}``
    the files of a held listing, what is ticked and whether it runs (:func:`file_choice`).
``cancel`` ``{"content_id"}``
    stop a download and delete its partial data (:meth:`Node.cancel`).
``stop`` ``{"content_id"}``
    pause a running download, progress kept; answers ``{"was_running"}`` (:meth:`Node.pause`).
``ticket`` ``{"content_id"}`` and ``providers`` ``{"content_id"}``
    a ticket with the node's addresses; how many providers the DHT names.

Decoders for every answer sit beside their encoders; the client is
:func:`p2p.control.query`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .address import format_address, parse_address
from .content import ContentId, parse_id_or_ticket
from .content.select import Selection
from .errors import BadInput, NotFound
from .events import (
    ChunkFailed,
    ChunkRequested,
    ChunkVerified,
    DownloadCompleted,
    DownloadFailed,
    DownloadPaused,
    DownloadProgress,
    DownloadStarted,
    Event,
    EventsDropped,
    LogMessage,
    PeerBanned,
    PeerConnected,
    PeerDropped,
    Shared,
    ShareWithdrawn,
)
from .identity import PeerId
from .library import Ban
from .node import Node
from .results import DHTSummary, PeerInfo
from .store import DownloadInfo, ShareInfo

ATTACH_COMMANDS = ("snapshot", "events", "start", "select", "files", "cancel", "stop",
                   "ticket", "providers")
"""The requests this module answers (the control socket dispatches them here)."""

STREAMED: dict[str, type[Event]] = {cls.__name__: cls for cls in (
    PeerConnected, PeerDropped, PeerBanned, DownloadStarted, ChunkRequested, ChunkVerified,
    ChunkFailed, DownloadProgress, DownloadCompleted, DownloadFailed, DownloadPaused,
    Shared, ShareWithdrawn, LogMessage, EventsDropped)}
"""The node events an ``events`` stream carries: what the terminal app's views show.
Uploads (one event per chunk served, nothing the views draw) stay home."""
BURST = 1000
"""Events sent before waiting for the client to take them: one flush per burst, not per
event, and a bounded amount written ahead of a slow reader."""


# -- the snapshot ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NodeState:
    """A running node's local state, as the terminal app's views read it every second."""

    peer_id: PeerId
    listen: tuple[str, ...]
    """Every address it listens on, as text."""
    shares: list[ShareInfo]
    downloads: list[DownloadInfo]
    peers: list[PeerInfo]
    bans: list[Ban]
    dht: DHTSummary
    running: set[ContentId]
    """The downloads it runs now."""
    held: dict[ContentId, tuple[int, list[int]]]
    """(chunk count, indexes held) of the stopped downloads the client did not know."""


async def read_state(node: Node, known: Iterable[ContentId] = ()) -> NodeState:
    """The state of ``node``; held chunks only for stopped downloads not in ``known``.
    The store is read in worker threads, the node's live state on the event loop."""
    library = node.library
    shares = await asyncio.to_thread(library.shares)
    downloads = await asyncio.to_thread(library.downloads)
    bans = await asyncio.to_thread(library.bans)
    running = node.downloading()
    skip = set(known) | running
    held = {d.content_id: await asyncio.to_thread(library.held_chunks, d.content_id)
            for d in downloads if d.content_id not in skip}
    return NodeState(node.peer_id, tuple(format_address(a) for a in node.listen_addresses()),
                     shares, downloads, node.peers(), bans, node.dht_summary(), running, held)


def _ranges(indexes: Sequence[int]) -> list[list[int]]:
    """Ascending indexes as [start, end) runs: a held map of 100,000 chunks is a few runs."""
    out: list[list[int]] = []
    for i in indexes:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _unranges(runs: Iterable[Sequence[int]], count: int) -> list[int]:
    out: list[int] = []
    for start, end in runs:
        start, end = int(start), int(end)
        if not 0 <= start <= end <= count:
            raise BadInput(f"held chunks {start}-{end} outside 0-{count}")
        out.extend(range(start, end))
    return out


def encode_snapshot(state: NodeState) -> dict[str, Any]:
    """The ``snapshot`` answer."""
    return {
        "peer_id": str(state.peer_id), "listen": list(state.listen),
        "shares": [{"content_id": str(s.content_id), "kind": s.kind, "name": s.name,
                    "size": s.size, "chunks": s.chunks, "root": str(s.root), "added": s.added,
                    "origin": s.origin, "publisher": str(s.publisher)} for s in state.shares],
        "downloads": [{"content_id": str(d.content_id), "name": d.name, "size": d.size,
                       "chunks": d.chunks, "done_chunks": d.done_chunks, "state": d.state,
                       "dest": str(d.dest), "partial": str(d.partial), "error": d.error}
                      for d in state.downloads],
        "peers": [p.to_json() for p in state.peers],
        "bans": [{"peer_id": str(b.peer), "reason": b.reason, "since": b.since,
                  "until": b.until} for b in state.bans],
        "dht": state.dht.to_json(),
        "running": sorted(str(c) for c in state.running),
        "held": {str(c): [count, _ranges(indexes)] for c, (count, indexes) in state.held.items()},
    }


def decode_snapshot(data: dict[str, Any]) -> NodeState:
    """Read back what :func:`encode_snapshot` wrote. Raises :class:`BadInput` (or
    ``KeyError``/``ValueError``/``TypeError``) for an answer of another shape."""
    cid = ContentId.parse
    shares = [ShareInfo(cid(str(s["content_id"])), str(s["kind"]), str(s["name"]), int(s["size"]),
                        int(s["chunks"]), Path(str(s["root"])), float(s["added"]),
                        str(s["origin"]), PeerId.parse(str(s["publisher"])))
              for s in data["shares"]]
    downloads = [DownloadInfo(cid(str(d["content_id"])), str(d["name"]), int(d["size"]),
                              int(d["chunks"]), int(d["done_chunks"]), str(d["state"]),
                              Path(str(d["dest"])), Path(str(d["partial"])),
                              None if d.get("error") is None else str(d["error"]))
                 for d in data["downloads"]]
    peers = [PeerInfo(PeerId.parse(str(p["peer_id"])),
                      parse_address(str(p["address"]), resolve=False),
                      "in" if p["direction"] == "in" else "out", int(p["bytes_in"]),
                      int(p["bytes_out"]), float(p.get("rate_in", 0.0)),
                      float(p.get("rate_out", 0.0)), int(p.get("strikes", 0)),
                      None if p.get("via") is None else PeerId.parse(str(p["via"])),
                      punched=p.get("path") == "punched", lan=p.get("source") == "lan")
             for p in data["peers"]]
    bans = [Ban(PeerId.parse(str(b["peer_id"])), str(b["reason"]), float(b["since"]),
                None if b.get("until") is None else float(b["until"])) for b in data["bans"]]
    held = {}
    for key, (count, runs) in dict(data.get("held", {})).items():
        held[cid(str(key))] = (int(count), _unranges(runs, int(count)))
    return NodeState(PeerId.parse(str(data["peer_id"])), tuple(str(a) for a in data["listen"]),
                     shares, downloads, peers, bans, DHTSummary.from_json(dict(data["dht"])),
                     {cid(str(c)) for c in data["running"]}, held)


# -- the files of a folder download ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileChoice:
    """What the file picker shows for a folder download."""

    name: str
    files: list[tuple[str, int]]
    """(relative path, size) of every file, in manifest order."""
    ticked: frozenset[str] | None
    """The files it fetches now (running), or has in place (stopped after a selection);
    None: every file."""
    running: bool


async def file_choice(node: Node, content_id: ContentId) -> FileChoice:
    """The files of ``content_id`` (its listing must be held here) and which are ticked.
    Raises :class:`NotFound` when the listing is not known yet."""
    library = node.library
    manifest = await asyncio.to_thread(library.manifest, content_id)
    if manifest is None:
        raise NotFound("the list of files is not known yet")
    download = node.download(content_id)
    ticked: frozenset[str] | None = None
    if download is not None and download.selected_paths is not None:
        ticked = frozenset(download.selected_paths)
    elif download is None:
        info = await asyncio.to_thread(library.download, content_id)
        if info is not None and info.state == "selected":
            # Stopped with some files in place: those are ticked (the rest is to pick).
            held = set((await asyncio.to_thread(library.held_chunks, content_id))[1])
            first, whole = 0, set()
            for entry in manifest.entries:
                count = entry.info.chunk_count
                if count and all(i in held for i in range(first, first + count)):
                    whole.add(entry.path)
                first += count
            ticked = frozenset(whole)
    return FileChoice(manifest.name, [(e.path, e.info.size) for e in manifest.entries],
                      ticked, running=download is not None)


def encode_file_choice(choice: FileChoice) -> dict[str, Any]:
    """The ``files`` answer."""
    return {"name": choice.name, "files": [[p, s] for p, s in choice.files],
            "ticked": None if choice.ticked is None else sorted(choice.ticked),
            "running": choice.running}


def decode_file_choice(data: dict[str, Any]) -> FileChoice:
    """Read back what :func:`encode_file_choice` wrote."""
    ticked = data.get("ticked")
    return FileChoice(str(data["name"]), [(str(p), int(s)) for p, s in data["files"]],
                      None if ticked is None else frozenset(str(p) for p in ticked),
                      bool(data["running"]))


# -- downloads --------------------------------------------------------------------------------


def start(node: Node, target: str, selection: Selection | None = None,
          download_dir: Path | None = None, *, rename: bool = False) -> tuple[ContentId, bool]:
    """Start downloading ``target`` (an id or a ticket) on ``node``; (its id, False when it
    was running already). ``rename``: beside a different file already at the destination,
    as ``NAME (1).EXT``. Raises :class:`BadInput` for a malformed target."""
    cid, _ = parse_id_or_ticket(target)
    if cid in node.downloading():
        return cid, False
    node.start_fetch(target, selection=selection, download_dir=download_dir, rename=rename)
    return cid, True


def select(node: Node, content_id: ContentId, paths: Iterable[str], target: str | None = None,
           download_dir: Path | None = None) -> bool:
    """Fetch exactly ``paths`` of ``content_id``: the running download changes at once (True),
    a stopped one starts with them, from ``target`` (a ticket) if given (False)."""
    selection = Selection.of_paths(paths)
    if content_id in node.downloading():
        node.select(content_id, selection)
        return True
    node.start_fetch(target if target is not None else content_id, selection=selection,
                     download_dir=download_dir)
    return False


# -- the control requests ---------------------------------------------------------------------


def _cid(request: dict[str, Any]) -> ContentId:
    return ContentId.parse(str(request.get("content_id", "")))


def _dir(request: dict[str, Any]) -> Path | None:
    value = request.get("download_dir")
    if value is None:
        return None
    path = Path(str(value))
    if not path.is_absolute():
        raise BadInput(f"download_dir must be an absolute path, got {value!r}")
    return path


def _paths(request: dict[str, Any]) -> list[str] | None:
    value = request.get("paths")
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadInput("paths must be a list of relative paths")
    return [str(p) for p in value]


async def answer(node: Node, request: dict[str, Any], send_event: Callable[[Event], None],
                 flush: Callable[[], Awaitable[None]]) -> Any:
    """Answer one of :data:`ATTACH_COMMANDS`. ``send_event`` sends an interim event line,
    ``flush`` waits until the client took what was sent."""
    match request.get("cmd"):
        case "snapshot":
            known = [ContentId.parse(str(c)) for c in request.get("known", [])]
            return encode_snapshot(await read_state(node, known))
        case "events":
            await _stream(node, send_event, flush)
            return None
        case "start":
            paths = _paths(request)
            cid, started = start(node, str(request.get("target", "")),
                                 None if paths is None else Selection.of_paths(paths),
                                 _dir(request), rename=bool(request.get("rename")))
            return {"content_id": str(cid), "started": started}
        case "select":
            cid = _cid(request)
            target = request.get("target")
            running = select(node, cid, _paths(request) or [],
                             None if target is None else str(target), _dir(request))
            return {"content_id": str(cid), "running": running}
        case "files":
            return encode_file_choice(await file_choice(node, _cid(request)))
        case "cancel":
            cid = _cid(request)
            await node.cancel(cid)
            return {"content_id": str(cid)}
        case "stop":
            cid = _cid(request)
            return {"content_id": str(cid), "was_running": await node.pause(cid)}
        case "ticket":
            return {"ticket": str(node.ticket(_cid(request)))}
        case "providers":
            return {"count": await node.count_providers(_cid(request))}
        case other:
            raise BadInput(f"unknown control command {other!r}")


async def _stream(node: Node, send_event: Callable[[Event], None],
                  flush: Callable[[], Awaitable[None]]) -> None:
    with node.events.subscribed() as sub:
        while True:
            burst = [await sub.get()]
            while len(burst) < BURST and (event := sub.get_nowait()) is not None:
                burst.append(event)
            for event in burst:
                if type(event).__name__ in STREAMED:
                    send_event(event)
            # A client that reads slowly slows this stream (its subscription then drops
            # the oldest events and says how many), never the node.
            await flush()
