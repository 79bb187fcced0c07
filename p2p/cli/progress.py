"""Renderers of node events: progress bars, upload lines and JSON progress records.

Each view is one subscriber of the node's event stream; none holds protocol logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .. import (
    ChunkFailed,
    ChunkUploaded,
    ChunkVerified,
    ContentId,
    DownloadProgress,
    DownloadStarted,
    Event,
    LogMessage,
    PeerBanned,
    PeerConnected,
    PeerDropped,
    ShareWithdrawn,
    Subscription,
    format_address,
    human_bytes,
    human_rate,
    human_seconds,
    plural,
)
from .output import Output

JSON_PROGRESS_INTERVAL = 0.25
"""Seconds between JSON progress records (the first verified chunk is always reported)."""


@contextlib.asynccontextmanager
async def following(sub: Subscription, handle: Callable[[Event], None]) -> AsyncIterator[None]:
    """Feed every event of ``sub`` to ``handle`` while the block runs, then the ones left over."""

    async def pump() -> None:
        async for event in sub:
            handle(event)

    task = asyncio.get_running_loop().create_task(pump(), name="cli events")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while (event := sub.get_nowait()) is not None:
            handle(event)


@contextlib.contextmanager
def hashing_bar(out: Output, label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar for hashing ``total`` bytes; yields the ``progress(n)`` callback."""
    if not out.live or out.json:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=out.err,
                  transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def describe_paths(peers: int, paths: dict[str, str]) -> str:
    """'3' when every peer is direct; '3 (2 direct, 1 relayed)' when some are not."""
    counts = Counter(paths.values())
    if set(counts) <= {"direct"}:
        return str(peers)
    order = ("direct", "punched", "relayed")
    parts = sorted(counts.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                   else len(order), kv[0]))
    return f"{peers} ({', '.join(f'{n} {label}' for label, n in parts)})"


class FetchView:
    """Shows one download: a bar with rate, ETA and peers (or JSON progress lines), and its totals."""

    def __init__(self, out: Output, content_id: ContentId) -> None:
        self.out = out
        self.content_id = content_id
        self.chunk_count = 0
        self.resumed = 0
        self.fetched = 0
        self.failed = 0
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_json = 0.0

    def __enter__(self) -> FetchView:
        if self.out.live and not self.out.json:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"),
                TextColumn("peers {task.fields[peers]}"), console=self.out.err, transient=True)
            self._bar.start()
            self._task = self._bar.add_task("finding peers", total=None, rate="", eta="?", peers=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def handle(self, event: Event) -> None:
        """Render one node event."""
        match event:
            case DownloadStarted(content_id=cid) if cid == self.content_id:
                # With a selection of files, the figures are theirs.
                size = event.size if event.wanted_size is None else event.wanted_size
                count = event.chunk_count if event.wanted_chunks is None else event.wanted_chunks
                held = event.held if event.wanted_held is None else event.wanted_held
                self.chunk_count, self.resumed = count, held
                if self._bar is not None and self._task is not None:
                    done = size * held // max(1, count)
                    self._bar.update(self._task, description=event.name, total=size,
                                     completed=done)
                elif not self.out.json:
                    self.out.note(f"downloading {event.name} ({human_bytes(size)}, "
                                  f"{plural(count, 'chunk')}, {held} already here)",
                                  level=1)
                self._json({"event": "started", "content_id": str(cid), "name": event.name,
                            "size": size, "chunks": count, "resumed_chunks": held}, force=True)
            case ChunkVerified(content_id=cid) if cid == self.content_id:
                first = self.fetched == 0
                self.fetched += 1
                if self._bar is not None and self._task is not None:
                    self._bar.advance(self._task, event.size)
                self._json(self._progress_record(), force=first)
            case DownloadProgress(content_id=cid) if cid == self.content_id:
                if self._bar is not None and self._task is not None:
                    self._bar.update(self._task, completed=event.bytes_done,
                                     rate=human_rate(event.rate),
                                     eta=human_seconds(event.eta),
                                     peers=describe_paths(event.peers, event.paths))
                self._json({**self._progress_record(), "rate": event.rate, "eta": event.eta,
                            "peers": event.peers, "paths": dict(event.paths)})
            case ChunkFailed(content_id=cid) if cid == self.content_id:
                self.failed += 1
                self.out.note(f"chunk {event.index} from {event.peer.short()} failed its hash check; "
                              "discarded", level=1)
            case PeerBanned():
                self.out.note(f"peer {event.peer.short()} banned: {event.reason}")
            case PeerDropped(peer=peer, reason=reason, notable=True):
                self.out.note(f"peer {peer.short()} dropped: {reason}")
            case PeerConnected() | PeerDropped() if self.out.verbosity >= 2:
                self.out.note(f"peer event: {event}", level=2)
            case LogMessage(level=level, message=message) if level in ("warning", "error"):
                self.out.note(f"p2p: {level}: {message}", level=1)
            case _:
                pass

    def _progress_record(self) -> dict[str, Any]:
        return {"event": "progress", "content_id": str(self.content_id),
                "done_chunks": self.resumed + self.fetched, "chunks": self.chunk_count,
                "fetched_chunks": self.fetched}

    def _json(self, record: dict[str, Any], *, force: bool = False) -> None:
        if not self.out.json:
            return
        now = time.monotonic()
        if force or now - self._last_json >= JSON_PROGRESS_INTERVAL:
            self._last_json = now
            self.out.emit(record)


class UploadView:
    """Shows what a serving node uploads: a line per peer on a terminal, a summary at the end."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.chunks: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self._last_line = 0.0

    def handle(self, event: Event) -> None:
        """Render one node event."""
        match event:
            case ChunkUploaded(peer=peer, index=index, size=size):
                key = peer.short()
                first = key not in self.chunks
                self.chunks[key] += 1
                self.bytes[key] += size
                if self.out.json:
                    return
                if first:
                    self.out.note(f"uploading to {key}")
                self.out.note(f"sent chunk {index} ({human_bytes(size)}) to {key}", level=2)
                now = time.monotonic()
                if now - self._last_line >= 2.0:
                    self._last_line = now
                    self.out.note("uploaded " + self.summary(), level=1)
            case PeerConnected(peer=peer, address=address) if not self.out.json:
                self.out.note(f"peer {peer.short()} connected from {format_address(address)}", level=1)
            case PeerBanned() if not self.out.json:
                self.out.note(f"peer {event.peer.short()} banned: {event.reason}")
            case ShareWithdrawn(content_id=cid, reason=reason):
                self.out.note(f"p2p: warning: {reason} (content {cid.short()})")
            case LogMessage(level=level, message=message) if level in ("warning", "error"):
                if not self.out.json:
                    self.out.note(f"p2p: {level}: {message}", level=1)
            case _:
                pass

    def summary(self) -> str:
        """'12 chunks (3.0 MiB) to 2 peers'."""
        return (f"{plural(sum(self.chunks.values()), 'chunk')} "
                f"({human_bytes(sum(self.bytes.values()))}) to {plural(len(self.chunks), 'peer')}")
