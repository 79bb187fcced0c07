"""The one interface the app drives a node through: :class:`NodeLink`.

Two kinds: :class:`LocalLink`, a node in this process (started by the app, or handed to it);
:class:`AttachedLink`, the running node of the same state directory in another process
(``p2p serve``, say), driven through its control socket (:mod:`p2p.attach`). The app's
views and actions are the same for both; quitting an attached app leaves that node running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from p2p import (
    ContentId,
    ControlError,
    Event,
    EventsDropped,
    LeftOut,
    NetworkError,
    Node,
    NodeConfig,
    NoRunningNode,
    P2PError,
    PeerId,
    Selection,
    StateDirLocked,
    VerifyReport,
    attach,
    control_endpoint,
    control_query,
    decode_event,
    format_address,
    parse_id_or_ticket,
)

ATTACH_WAIT = 10.0
"""Seconds to wait for the control socket of a node that holds the state directory but is
still starting (its socket opens once it listens)."""
ATTACH_RETRY = 0.2
"""Seconds between attempts meanwhile."""
QUEUE = 10_000
"""Events held for the app before the oldest are dropped (and counted): as a subscription."""


class NodeGone(NetworkError):
    """The node the app was attached to stopped (or its control socket broke)."""


@dataclass(frozen=True)
class Limits:
    """The node's bandwidth limits in force, bytes per second (0: none)."""

    up: float = 0.0
    """What the node sends to all peers together."""
    down: float = 0.0
    """What it receives from all peers together."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Limits:
        """The node's limits from :meth:`p2p.Node.limits` (or the control socket's ``limit``
        answer, the same object). Raises :class:`NetworkError` for one this app cannot read."""
        try:
            return cls(float(data["up"]["rate"]), float(data["down"]["rate"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise NetworkError(f"the node sent limits this app cannot read: {exc}") from None


@dataclass(frozen=True)
class ShareOutcome:
    """What a share made: the content's name, its ticket, and what a folder share left out."""

    name: str
    ticket: str
    left_out: LeftOut = field(default_factory=LeftOut)


class EventSource(Protocol):
    """Where the app reads node events: a :class:`p2p.Subscription` or its remote twin."""

    async def get(self) -> Event: ...

    def get_nowait(self) -> Event | None: ...


class NodeLink(Protocol):
    """Everything the app asks of a node."""

    attached: str | None
    """Who runs the node when it runs in another process (``pid 12, p2p serve``), else None."""
    @property
    def peer_id(self) -> PeerId:
        """The node's peer id."""

    @property
    def listen(self) -> list[str]:
        """The addresses it listens on, as text."""

    def serve(self) -> contextlib.AbstractAsyncContextManager[EventSource]:
        """For the duration of the block, the node's events (and, for a node the app
        started, its control socket for the command line)."""
        ...

    async def aclose(self) -> None:
        """Stop the node if the app owns it; an attached node goes on."""

    async def state(self, known: set[ContentId]) -> attach.NodeState:
        """The node's local state (see :func:`p2p.attach.read_state`)."""

    async def health(self) -> dict[ContentId, str]:
        """Each share's ``ok``, ``changed`` or ``missing`` (a ``stat`` per shared file, off
        the event loop: call it now and then, not every refresh)."""

    async def count_providers(self, cid: ContentId) -> int:
        """How many providers the DHT names for ``cid``."""

    async def ticket(self, cid: ContentId) -> str:
        """A ticket for ``cid``."""

    async def verify(self, cid: ContentId) -> VerifyReport:
        """Re-hash the local copy of ``cid``."""

    async def unshare(self, cid: ContentId) -> bool:
        """Stop serving ``cid``; False if it was not shared."""

    async def share(self, path: Path) -> ShareOutcome:
        """Share ``path``: its name, its ticket and what it left out (a folder's links,
        empty folders, unreadable and special files)."""

    async def limits(self) -> Limits:
        """The node's bandwidth limits in force."""

    async def set_limits(self, up: float | None, down: float | None) -> Limits:
        """Change the node's upload and/or download limit now (None: unchanged, 0: none);
        the limits then in force."""

    async def listing(self, target: str) -> tuple[str, list[tuple[str, int]]]:
        """The verified listing of ``target``: (name, [(path, size)])."""

    async def start_fetch(self, target: str, selection: Selection | None, *,
                          rename: bool = False) -> bool:
        """Start downloading ``target``; False when it was running already. ``rename``: a
        different file where it goes stays, and the download goes beside it as
        ``NAME (1).EXT`` (else it fails, refused)."""

    async def pause(self, cid: ContentId) -> bool:
        """Pause a running download; False when none ran."""

    async def cancel(self, cid: ContentId) -> None:
        """Stop a download and delete its partial data."""

    async def files(self, cid: ContentId) -> attach.FileChoice:
        """The files of a folder download and which are ticked."""

    async def select(self, cid: ContentId, paths: frozenset[str], target: str | None) -> bool:
        """Fetch exactly ``paths``; True when the download was running (it changed at once)."""


class LocalLink:
    """A node in this process. ``owned``: the app started it, serves its control socket and
    stops it on quit."""

    attached: str | None = None

    def __init__(self, node: Node, *, owned: bool) -> None:
        self.node = node
        self.owned = owned

    @property
    def peer_id(self) -> PeerId:
        """The node's peer id."""
        return self.node.peer_id

    @property
    def listen(self) -> list[str]:
        """The addresses it listens on."""
        return [format_address(a) for a in self.node.listen_addresses()]

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[EventSource]:
        with self.node.events.subscribed() as sub:
            # A node the app started serves the control socket: the command line's
            # `p2p share`, `fetch`, `ls` of this state directory go through it.
            async with control_endpoint(self.node) if self.owned else contextlib.nullcontext():
                yield sub

    async def aclose(self) -> None:
        if self.owned:
            await self.node.aclose()  # its downloads (and its clients') are 'interrupted'

    async def state(self, known: set[ContentId]) -> attach.NodeState:
        return await attach.read_state(self.node, known)

    async def health(self) -> dict[ContentId, str]:
        library = self.node.library

        def check() -> dict[ContentId, str]:
            return {s.content_id: library.share_health(s.content_id).status
                    for s in library.shares()}

        return await asyncio.to_thread(check)

    async def count_providers(self, cid: ContentId) -> int:
        return await self.node.count_providers(cid)

    async def ticket(self, cid: ContentId) -> str:
        return str(self.node.ticket(cid))

    async def verify(self, cid: ContentId) -> VerifyReport:
        return await self.node.verify(cid)

    async def unshare(self, cid: ContentId) -> bool:
        return self.node.unshare(cid)

    async def share(self, path: Path) -> ShareOutcome:
        result = await self.node.share(path)
        return ShareOutcome(result.manifest.name, str(result.ticket), result.left_out)

    async def limits(self) -> Limits:
        return Limits.from_json(self.node.limits())

    async def set_limits(self, up: float | None, down: float | None) -> Limits:
        self.node.set_limits(up=up, down=down)
        return await self.limits()

    async def listing(self, target: str) -> tuple[str, list[tuple[str, int]]]:
        manifest = await self.node.listing(target)
        return manifest.name, [(e.path, e.info.size) for e in manifest.entries]

    async def start_fetch(self, target: str, selection: Selection | None, *,
                          rename: bool = False) -> bool:
        return attach.start(self.node, target, selection, rename=rename)[1]

    async def pause(self, cid: ContentId) -> bool:
        return await self.node.pause(cid)

    async def cancel(self, cid: ContentId) -> None:
        await self.node.cancel(cid)

    async def files(self, cid: ContentId) -> attach.FileChoice:
        return await attach.file_choice(self.node, cid)

    async def select(self, cid: ContentId, paths: frozenset[str], target: str | None) -> bool:
        return attach.select(self.node, cid, paths, target)


class RemoteEvents:
    """The events of an attached node, fed by its ``events`` stream."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event | NodeGone] = asyncio.Queue(QUEUE)
        self._dropped = 0

    def put(self, item: Event | NodeGone) -> None:
        """Queue an event (or the news that the node is gone); drops the oldest when full."""
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self._dropped += 1
        self._queue.put_nowait(item)

    def _unwrap(self, item: Event | NodeGone) -> Event:
        if isinstance(item, NodeGone):
            self._queue.put_nowait(item)  # every later read says so too
            raise item
        return item

    async def get(self) -> Event:
        """The next event; raises :class:`NodeGone` once the node stopped."""
        if self._dropped:
            count, self._dropped = self._dropped, 0
            return EventsDropped(count)
        return self._unwrap(await self._queue.get())

    def get_nowait(self) -> Event | None:
        """The next event if one is queued; raises :class:`NodeGone` once the node stopped."""
        try:
            return self._unwrap(self._queue.get_nowait())
        except asyncio.QueueEmpty:
            return None


class AttachedLink:
    """The running node of ``config.state_dir``, in another process, through its control
    socket. Downloads go to the app's download folder (``config.download_dir``)."""

    def __init__(self, config: NodeConfig, holder: str, identity: dict[str, Any]) -> None:
        self.config = config
        self.attached: str | None = holder
        self.peer_id = PeerId.parse(str(identity["peer_id"]))
        self.listen = [str(identity["listen"])]

    @classmethod
    async def open(cls, config: NodeConfig) -> AttachedLink:
        """Attach to the running node of ``config.state_dir``. Raises :class:`NoRunningNode`
        when none answers (within :data:`ATTACH_WAIT` while one is starting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ATTACH_WAIT
        while True:
            holder = Node.running_holder(config.state_dir)
            try:
                identity = await control_query(config.state_dir, {"cmd": "id"})
            except NoRunningNode:
                if holder is None or loop.time() >= deadline:
                    raise
                await asyncio.sleep(ATTACH_RETRY)  # it holds the lock but does not listen yet
                continue
            return cls(config, holder or "another process", identity)

    async def _ask(self, request: dict[str, Any]) -> Any:
        try:
            return await control_query(self.config.state_dir, request)
        except NoRunningNode as exc:
            raise NodeGone(f"the node ({self.attached}) is no longer running") from exc

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[EventSource]:
        events = RemoteEvents()

        def line(obj: dict[str, Any]) -> None:
            event = decode_event(obj, attach.STREAMED)
            if event is not None:
                events.put(event)

        async def pump() -> None:
            try:
                await control_query(self.config.state_dir, {"cmd": "events"}, line)
                reason = "it ended the event stream"
            except ControlError as exc:
                reason = str(exc)
            except P2PError as exc:
                reason = str(exc)
            events.put(NodeGone(f"the node ({self.attached}) stopped: {reason}"))

        async with asyncio.TaskGroup() as tasks:
            pumping = tasks.create_task(pump(), name="attached node events")
            try:
                yield events
            finally:
                pumping.cancel()  # closes the stream; the node goes on

    async def aclose(self) -> None:
        return  # the node is not ours: it keeps running

    async def state(self, known: set[ContentId]) -> attach.NodeState:
        data = await self._ask({"cmd": "snapshot", "known": sorted(str(c) for c in known)})
        try:
            return attach.decode_snapshot(data)
        except (KeyError, ValueError, TypeError) as exc:
            raise NetworkError(f"the node sent a snapshot this app cannot read: {exc}") from None

    async def health(self) -> dict[ContentId, str]:
        rows = await self._ask({"cmd": "ls"})
        try:
            return {ContentId.parse(r["content_id"]): str(r.get("status", ""))
                    for r in rows["shares"]}
        except (KeyError, ValueError, TypeError) as exc:
            raise NetworkError(f"the node sent a library this app cannot read: {exc}") from None

    async def count_providers(self, cid: ContentId) -> int:
        return int((await self._ask({"cmd": "providers", "content_id": str(cid)}))["count"])

    async def ticket(self, cid: ContentId) -> str:
        return str((await self._ask({"cmd": "ticket", "content_id": str(cid)}))["ticket"])

    async def verify(self, cid: ContentId) -> VerifyReport:
        return VerifyReport.from_json(await self._ask({"cmd": "verify", "content_id": str(cid)}))

    async def unshare(self, cid: ContentId) -> bool:
        return bool((await self._ask({"cmd": "unshare", "content_id": str(cid)}))["removed"])

    async def share(self, path: Path) -> ShareOutcome:
        info = await self._ask({"cmd": "share", "path": str(Path(path).expanduser().resolve())})
        return ShareOutcome(str(info["name"]), str(info["ticket"]),
                            LeftOut.from_json(info.get("left_out") or {}))

    async def limits(self) -> Limits:
        return Limits.from_json(await self._ask({"cmd": "limit"}))

    async def set_limits(self, up: float | None, down: float | None) -> Limits:
        request: dict[str, Any] = {"cmd": "limit"}
        if up is not None:
            request["up"] = up
        if down is not None:
            request["down"] = down
        return Limits.from_json(await self._ask(request))

    async def listing(self, target: str) -> tuple[str, list[tuple[str, int]]]:
        info = await self._ask({"cmd": "listing", "target": target})
        return str(info["name"]), [(str(e["path"]), int(e["size"])) for e in info["entries"]]

    def _download_dir(self) -> str:
        return str(Path(self.config.download_dir).expanduser().resolve())

    async def start_fetch(self, target: str, selection: Selection | None, *,
                          rename: bool = False) -> bool:
        parse_id_or_ticket(target)  # a malformed one is refused here, as in-process
        request: dict[str, Any] = {"cmd": "start", "target": target,
                                   "download_dir": self._download_dir()}
        if rename:
            request["rename"] = True
        if selection is not None and selection.paths is not None:
            request["paths"] = sorted(selection.paths)
        return bool((await self._ask(request))["started"])

    async def pause(self, cid: ContentId) -> bool:
        return bool((await self._ask({"cmd": "stop", "content_id": str(cid)}))["was_running"])

    async def cancel(self, cid: ContentId) -> None:
        await self._ask({"cmd": "cancel", "content_id": str(cid)})

    async def files(self, cid: ContentId) -> attach.FileChoice:
        return attach.decode_file_choice(await self._ask({"cmd": "files", "content_id": str(cid)}))

    async def select(self, cid: ContentId, paths: frozenset[str], target: str | None) -> bool:
        request: dict[str, Any] = {"cmd": "select", "content_id": str(cid), "paths": sorted(paths),
                                   "download_dir": self._download_dir()}
        if target is not None:
            request["target"] = target
        return bool((await self._ask(request))["running"])


async def open_link(config: NodeConfig) -> NodeLink:
    """Start a node of ``config`` in this process or, when the state directory's node already
    runs, attach to it. Raises what :meth:`Node.start` raises otherwise."""
    node = Node(config)
    try:
        await node.start()
    except StateDirLocked:
        await node.aclose()
        return await AttachedLink.open(config)
    return LocalLink(node, owned=True)
