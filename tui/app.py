"""``p2p-tui``: a node made visible, its swarm too.

The app drives one node through a :class:`~tui.link.NodeLink`: one it starts in-process,
or, when the state directory's node already runs (``p2p serve``), that one, attached
through its control socket. Node work runs in workers; the node's events arrive as
Textual messages from a single reader worker (progress coalesced); the views
only ever get plain data from the app (attributes down) and post requests up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from p2p import (
    BadInput,
    Ban,
    ChunkUploaded,
    ContentId,
    DownloadCompleted,
    DownloadFailed,
    DownloadInfo,
    DownloadPaused,
    DownloadProgress,
    DownloadStarted,
    Event,
    EventsDropped,
    LogMessage,
    Node,
    NodeConfig,
    P2PError,
    PeerBanned,
    PeerConnected,
    PeerDropped,
    PeerId,
    PeerInfo,
    Selection,
    Shared,
    ShareInfo,
    Ticket,
    exit_code_for,
    format_address,
    format_rate,
    human_bytes,
    parse_id_or_ticket,
    plural,
)
from p2p import describe as describe_error

from .link import EventSource, Limits, LocalLink, NodeGone, NodeLink, ShareOutcome, open_link
from .model import DhtData, LibraryRow, Peers, TransferRow, Transfers, counted
from .screens import (
    ConfirmScreen,
    FetchScreen,
    FilesScreen,
    HelpScreen,
    LimitScreen,
    NewLimits,
    PickFiles,
    ShareScreen,
)
from .widgets import (
    DhtView,
    LibraryView,
    LogEntry,
    LogView,
    PeersView,
    StatusLine,
    StatusPart,
    TransfersView,
    fit,
)

BATCH_WINDOW = 0.1
"""Seconds the event reader gathers events before posting one message (keeps the UI light)."""
BATCH_MAX = 5000
PROVIDER_LOOKUP_EVERY = 60.0
"""Seconds between DHT provider lookups for the library's items."""
HEALTH_CHECK_EVERY = 30.0
"""Seconds between checks that shared files are as shared (a ``stat`` per file: cheap, but
not for every one-second refresh of a 100,000-file share)."""

TABS = ("library", "transfers", "peers", "dht", "log")

SHORT_WINDOW = 30
"""Rows below which the header goes (the status line says the same): 24-row terminals keep
their lines for the views."""


# -- messages from workers --------------------------------------------------------------------


class NodeReady(Message):
    """The node listens; views can be filled."""


@dataclass
class NodeFailed(Message):
    """The node could not start."""

    error: BaseException


@dataclass
class NodeStopped(Message):
    """The node the app was attached to stopped."""

    reason: str


@dataclass
class NodeEvents(Message):
    """A batch of node events (progress coalesced to the latest per download)."""

    events: list[Event]


@dataclass
class NodeSnapshot(Message):
    """Periodic local state of the node, read in a worker."""

    at: float
    """``time.monotonic()`` when the reading began (a cancel after it is newer news)."""
    shares: list[ShareInfo]
    downloads: list[DownloadInfo]
    peers: list[PeerInfo]
    bans: list[Ban]
    dht: DhtData
    running: set[ContentId] = field(default_factory=set)
    held: dict[ContentId, tuple[int, list[int]]] = field(default_factory=dict)
    limits: Limits | None = None
    """The node's bandwidth limits (None: they could not be read this time)."""


@dataclass
class HealthChecked(Message):
    """Each share's ``ok``, ``changed`` or ``missing``."""

    status: dict[ContentId, str]


@dataclass
class ProvidersFound(Message):
    """A DHT lookup counted the providers of ``content_id``."""

    content_id: ContentId
    count: int | None


def limits_part(limits: Limits | None) -> StatusPart | None:
    """The status line's figure for the bandwidth limits in force, or None when there are
    none (``limits up 5.0 MiB/s, down 1.0 MiB/s``, short ``↑5.0 MiB/s ↓1.0 MiB/s``)."""
    if limits is None:
        return None
    set_ = [(word, arrow, rate) for word, arrow, rate in
            (("up", "↑", limits.up), ("down", "↓", limits.down)) if rate > 0]
    if not set_:
        return None
    return StatusPart("limits " + ", ".join(f"{w} {format_rate(r)}" for w, _, r in set_),
                      " ".join(f"{a}{format_rate(r)}" for _, a, r in set_))


def status_parts(snap: NodeSnapshot, downloading: int) -> list[StatusPart]:
    """The status line's figures, most important first (a narrow window drops the last)."""
    try:
        peer = PeerId.parse(snap.dht.peer_id).short()
    except BadInput:
        peer = snap.dht.peer_id[:8]
    parts = [
        StatusPart(f"peer {peer}", f"peer {peer}"),
        StatusPart(snap.dht.listen, snap.dht.listen),
        StatusPart(f"{len(snap.shares)} shared", f"{len(snap.shares)} shared"),
        StatusPart(f"{downloading} downloading", f"{downloading} fetching"),
    ]
    limits = limits_part(snap.limits)
    if limits is not None:  # a limit explains a slow transfer: before the counts
        parts.append(limits)
    return [
        *parts,
        StatusPart(plural(len(snap.peers), "connection"), f"{len(snap.peers)} conn"),
        StatusPart(plural(snap.dht.contacts, "DHT contact"), f"{snap.dht.contacts} DHT"),
    ]


_REFUSED = re.compile(r"^(?P<what>.+ already exists and is not this content); not overwriting it"
                      r"\..*save it as (?P<q>['\"])(?P<name>.+?)(?P=q)", re.DOTALL)
"""A download refused because a different file is where it would go, and the name the
node would give it instead (``NAME (1).EXT``): :meth:`p2p.Node.fetch`'s message."""


RENAME_LABEL = 40
"""Characters of the new name on the rename button (the whole name is in the question):
the button and Cancel stay inside a dialog of 80 columns."""


@dataclass(frozen=True)
class Refusal:
    """A download refused at its destination: a different file is there."""

    what: str
    """``PATH already exists and is not this content``."""
    new_name: str
    """The name it can have beside it instead (``NAME (1).EXT``)."""

    @classmethod
    def of(cls, error: str) -> Refusal | None:
        """The refusal a download failure's ``error`` tells of, or None for another failure."""
        match = _REFUSED.match(error)
        return None if match is None else cls(match["what"], match["name"])

    @property
    def reason(self) -> str:
        """The failure as the app says it: its own way out, not the command line's flags."""
        return f"{self.what}; not overwriting it (r offers to save it as {self.new_name!r})"

    def question(self) -> ConfirmScreen:
        """The dialog offering the new name."""
        return ConfirmScreen(
            "A different file is already there",
            f"{self.what}: it is not overwritten. Save the download beside it as "
            f"{self.new_name!r}?", f"Rename to {fit(self.new_name, RENAME_LABEL)}", back="Cancel")


def left_out_warning(name: str, outcome: ShareOutcome) -> str | None:
    """The warning of a folder share that left things out, or None when it left nothing."""
    if not outcome.left_out.total:
        return None
    return (f"{name}: left out {outcome.left_out.describe()} (a folder share holds readable "
            "regular files only)")


def cancel_question(cid: ContentId, row: TransferRow | None, info: DownloadInfo | None,
                    partial_exists: bool) -> tuple[ConfirmScreen, bool]:
    """The question ``x`` asks before it cancels ``cid``, naming what goes, and whether data
    on disk is deleted (``partial_exists``: the download's partial file or folder is there)."""
    name = row.name if row is not None else cid.short()
    if partial_exists and info is not None:
        held = (f"{row.done_chunks} of {plural(row.chunk_count, 'chunk')}"
                if row is not None and row.size_known else "what it holds")
        body = f"The download stops and its partial data is deleted: {info.partial} ({held})."
        if info.state == "selected":
            body += f" The files already in {info.dest} stay."
        body += " To keep the data, pause instead (p)."
        return ConfirmScreen(f"Cancel {name}?", body, "Delete data", danger=True), True
    body = "Nothing on disk is deleted"
    if info is not None and info.state in ("complete", "selected"):
        body += f": {info.dest} stays"
    return ConfirmScreen(f"Remove {name} from Transfers?", body + ".", "Remove"), False


def coalesce(events: Sequence[Event]) -> list[Event]:
    """Keep every event but only the latest progress of each download, in order."""
    last: dict[ContentId, int] = {}
    for i, event in enumerate(events):
        if isinstance(event, DownloadProgress):
            last[event.content_id] = i
    return [e for i, e in enumerate(events)
            if not isinstance(e, DownloadProgress) or last[e.content_id] == i]


def describe(event: Event) -> tuple[str, str] | None:
    """A log line (level, text) for a notable event, or None."""
    match event:
        case LogMessage(level=level, message=message):
            return level, message
        case Shared(content_id=cid, name=name, size=size):
            return "info", f"shared {name} ({human_bytes(size)}) as {cid}"
        case DownloadStarted(content_id=cid, name=name, chunk_count=count, held=held):
            return "info", f"download {name} [{cid.short()}]: {counted(count, 'chunk')}, {held:,} held"
        case DownloadCompleted(content_id=cid, path=path, seconds=seconds):
            return "info", f"download {cid.short()} complete in {seconds:.1f} s: {path}"
        case DownloadFailed(content_id=cid, error=error):
            return "error", f"download {cid.short()} failed: {error}"
        case DownloadPaused(content_id=cid):
            return "info", f"download {cid.short()} paused"
        case PeerConnected(peer=peer, address=address, inbound=inbound):
            way = "in" if inbound else "out"
            return "debug", f"peer {peer.short()} connected ({way}) from {format_address(address)}"
        case PeerDropped(peer=peer, reason=reason):
            return "debug", f"peer {peer.short()} dropped: {reason}"
        case PeerBanned(peer=peer, reason=reason):
            return "warning", f"peer {peer.short()} banned: {reason}"
        case EventsDropped(count=count):
            return "warning", f"the app fell behind and skipped {counted(count, 'event')}"
        case _:
            return None


# -- command palette ---------------------------------------------------------------------------


class P2PCommands(Provider):
    """The app's main actions in the command palette."""

    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        app = self.app
        assert isinstance(app, P2PApp)
        return app.palette_commands()

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


# -- the app -----------------------------------------------------------------------------------


class P2PApp(App[None]):
    """The terminal app. Build it with :func:`build_app`."""

    TITLE = "p2p"
    CSS_PATH = "app.tcss"
    VERTICAL_BREAKPOINTS = [(0, "-short"), (SHORT_WINDOW, "-tall")]
    COMMANDS = App.COMMANDS | {P2PCommands}
    BINDINGS = [
        Binding("s", "share", "Share"),
        Binding("f", "fetch", "Fetch"),
        Binding("b", "limits", "Limits", tooltip="Bandwidth limits"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("1", "tab('library')", "Library", show=False),
        Binding("2", "tab('transfers')", "Transfers", show=False),
        Binding("3", "tab('peers')", "Peers", show=False),
        Binding("4", "tab('dht')", "DHT", show=False),
        Binding("5", "tab('log')", "Log", show=False),
    ]

    def __init__(self, config: NodeConfig, *, node: Node | None = None,
                 refresh_interval: float = 1.0, picker_root: Path | None = None,
                 start_node: bool = True) -> None:
        super().__init__()
        self.config = config
        self.link: NodeLink | None = None if node is None else LocalLink(node, owned=False)
        """How the app reaches its node (None until it started or attached, and once an
        attached node stopped)."""
        self.refresh_interval = refresh_interval
        self.picker_root = picker_root
        """Where the share picker opens; None: the current folder when it opens."""
        self._start_node = start_node
        self.transfers = Transfers()
        self.peers = Peers()
        self.providers: dict[ContentId, int | None] = {}
        self.health: dict[ContentId, str] = {}
        """Each share's ``ok``/``changed``/``missing``, from the last health check."""
        self._health_at = -math.inf
        self._looked_up: dict[ContentId, float] = {}
        self._tickets: dict[ContentId, Ticket] = {}
        self._library: list[LibraryRow] = []
        self._cancelled: dict[ContentId, float] = {}
        """When (``time.monotonic()``) each download was cancelled here."""
        self._started: dict[ContentId, tuple[str, Selection | None]] = {}
        """The target and selection of each fetch started from this app (to start again)."""
        self._refused: dict[ContentId, Refusal] = {}
        """Downloads refused at their destination, until renamed or cancelled."""
        self._offered: set[ContentId] = set()
        """Fetches started here whose refusal the rename dialog was shown for."""
        self._stopped = False
        self._stop_signals = 0
        self.failed: BaseException | None = None
        """Why the node could not start, if it could not."""
        self.ready = asyncio.Event()
        self.clock: Callable[[], str] = lambda: time.strftime("%H:%M:%S")
        """Time stamps of log lines (tests fix it)."""

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusLine(id="status")
        with TabbedContent(id="tabs", initial="library"):
            with TabPane("Library [1]", id="library"):
                yield LibraryView(id="library-view")
            with TabPane("Transfers [2]", id="transfers"):
                yield TransfersView(id="transfers-view")
            with TabPane("Peers [3]", id="peers"):
                yield PeersView(id="peers-view")
            with TabPane("DHT [4]", id="dht"):
                yield DhtView(id="dht-view")
            with TabPane("Log [5]", id="log"):
                yield LogView(id="log-view")
        yield Footer(compact=True, show_command_palette=False)

    @property
    def views_gone(self) -> bool:
        """Shutting down: the views are gone (or going). Messages still queued then (a batch
        of node events, a snapshot) are dropped: Textual delivers them after it removed the
        widgets and stopped running."""
        return not self.screen_stack or not self.is_running

    @property
    def main(self) -> Screen[Any]:
        """The screen holding the views (modal dialogs may sit above it)."""
        return self.screen_stack[0]

    @property
    def node(self) -> Node | None:
        """The node, when it runs in this process."""
        return self.link.node if isinstance(self.link, LocalLink) else None

    def on_mount(self) -> None:
        self.main.query_one("#library-table").focus()
        if self._start_node:
            self.run_node()
            # Closing the terminal or `kill` should stop the node cleanly too (downloads
            # paused, terminal restored); a second signal gives up waiting.
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self._on_stop_signal)

    def _on_stop_signal(self) -> None:
        if self._stop_signals:
            os._exit(128 + signal.SIGTERM)
        self._stop_signals += 1
        self.call_later(self.action_quit)

    @on(TabbedContent.TabActivated)
    def _focus_tab(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane
        for widget in pane.query("*"):
            if widget.focusable:
                widget.focus()
                break

    def action_tab(self, tab: str) -> None:
        self.main.query_one(TabbedContent).active = tab

    # -- node lifecycle --------------------------------------------------------------------------

    @work(exclusive=True, group="node", exit_on_error=False)
    async def run_node(self) -> None:
        """Start the node (or attach to the running one; unless given one), then read its
        events until the app stops."""
        if self.link is None:
            try:
                self.link = await open_link(self.config)
            except (P2PError, OSError) as exc:  # the node's own worker: reported, then shown
                self.post_message(NodeFailed(exc))
                return
        link = self.link
        try:
            async with link.serve() as events:
                self.post_message(NodeReady())
                await self._read_events(events)
        except NodeGone as exc:
            self.post_message(NodeStopped(str(exc)))

    async def _read_events(self, sub: EventSource) -> None:
        while True:
            batch = [await sub.get()]
            # Gather for a moment so a fast download costs a few messages a second, not thousands.
            await asyncio.sleep(BATCH_WINDOW)
            try:
                while len(batch) < BATCH_MAX and (event := sub.get_nowait()) is not None:
                    batch.append(event)
            finally:  # what came before the node stopped is still shown
                self.post_message(NodeEvents(coalesce(batch)))

    def on_node_ready(self, _: NodeReady) -> None:
        if self.views_gone:
            return
        link = self.link
        assert link is not None
        listen = ", ".join(link.listen)
        peer = link.peer_id.short()
        if link.attached is None:
            self.sub_title = f"peer {peer} on {listen}"
            self.main.query_one(StatusLine).say(f"peer {peer} listening on {listen}")
            self.log_line("info", f"node {link.peer_id} listening on {listen}")
        else:
            self.sub_title = f"attached to {link.attached} · peer {peer} on {listen}"
            self.main.query_one(StatusLine).say(f"attached to the running node ({link.attached})")
            self.log_line("info", f"attached to the running node of {self.config.state_dir} "
                                  f"({link.attached}): peer {link.peer_id} on {listen}; "
                                  "quitting leaves it running")
        self.set_interval(self.refresh_interval, self.refresh_snapshot)
        self.refresh_snapshot()
        self.ready.set()

    def on_node_stopped(self, message: NodeStopped) -> None:
        self.link = None
        self.sub_title = "not connected: the node stopped"
        if self.views_gone:
            return
        self.main.query_one(StatusLine).say(f"{message.reason} · q quits")
        self.log_line("error", message.reason)
        self.notify(f"{message.reason}. Start it again (p2p serve) and reopen the app.",
                    title="Node stopped", severity="error", timeout=30)

    def on_node_failed(self, message: NodeFailed) -> None:
        self.failed = message.error
        if self.views_gone:
            return
        reason = describe_error(message.error)
        self.main.query_one(StatusLine).say(f"the node could not start: {reason}")
        self.log_line("error", f"the node could not start: {reason}")
        self.notify(reason, title="Node failed", severity="error", timeout=30)

    async def stop_node(self) -> None:
        """Stop the node (downloads paused, resumable). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.link is not None:
            await self.link.aclose()  # first: an own node's downloads are 'interrupted'
        self.workers.cancel_group(self, "node")

    async def action_quit(self) -> None:
        self.main.query_one(StatusLine).say("stopping…")
        await self.stop_node()
        self.exit()

    async def on_unmount(self) -> None:
        await self.stop_node()

    # -- node events ---------------------------------------------------------------------------

    def on_node_events(self, message: NodeEvents) -> None:
        if self.views_gone:
            return
        transfers_changed = peers_changed = library_changed = False
        for event in message.events:
            if isinstance(event, DownloadFailed):
                event = self._refusal(event)
            if self.transfers.apply(event):
                transfers_changed = True
            match event:
                case PeerConnected(peer=peer, address=address, inbound=inbound):
                    self.peers.seen(peer, address, inbound)
                    peers_changed = True
                case Shared() | DownloadCompleted():
                    library_changed = True
                case ChunkUploaded():
                    pass
            line = describe(event)
            if line is not None:
                self.log_line(*line)
        if transfers_changed:
            self.push_transfers()
        if peers_changed:
            self.main.query_one(PeersView).rows = tuple(self.peers.rows())
        if library_changed:
            self.refresh_snapshot()

    def _refusal(self, event: DownloadFailed) -> DownloadFailed:
        """A download refused at its destination: the app's own reason and, for a fetch
        started here, the offer of a new name."""
        refusal = Refusal.of(event.error)
        if refusal is None:
            return event
        cid = event.content_id
        self._refused[cid] = refusal
        if cid in self._started and cid not in self._offered:
            self._offered.add(cid)
            self.offer_rename(cid)
        return dataclasses.replace(event, error=refusal.reason)

    def _stored_refusal(self, info: DownloadInfo) -> DownloadInfo:
        """A download the store records as refused at its destination (in an earlier run,
        or by the command line): the app's own reason, and r offers the new name."""
        refusal = Refusal.of(info.error) if info.state == "failed" and info.error else None
        if refusal is None:
            return info
        self._refused[info.content_id] = refusal
        return dataclasses.replace(info, error=refusal.reason)

    @work(group="rename")
    async def offer_rename(self, cid: ContentId) -> None:
        """Ask whether a download refused at its destination goes beside it under a new name;
        if so, start it again that way."""
        refusal = self._refused.get(cid)
        link = self._linked()
        if refusal is None or link is None:
            return
        if not await self.push_screen_wait(refusal.question()):
            return
        ticket = self._tickets.get(cid)
        target, selection = self._started.get(cid, (str(ticket if ticket is not None else cid), None))
        try:
            await link.start_fetch(target, selection, rename=True)
        except P2PError as exc:
            self.notify(str(exc), title="Cannot fetch", severity="error")
            return
        self._refused.pop(cid, None)
        self.log_line("info", f"fetching {cid.short()} as {refusal.new_name}")
        self.notify(f"Fetching {cid.short()} as {refusal.new_name}…")

    def log_line(self, level: str, message: str) -> None:
        """Add a line to the log view."""
        if self.views_gone:
            return
        self.main.query_one(LogView).add(LogEntry(self.clock(), level, message))

    def push_transfers(self) -> None:
        """Send the transfers' rows and the selected chunk map down to the view."""
        if self.views_gone:
            return
        view = self.main.query_one(TransfersView)
        view.rows = tuple(self.transfers.rows())
        view.chunk_map = self.transfers.chunk_map(view.selected())

    @on(TransfersView.Selected)
    def _transfer_selected(self, message: TransfersView.Selected) -> None:
        if self.views_gone:
            return
        self.main.query_one(TransfersView).chunk_map = self.transfers.chunk_map(message.content_id)

    # -- snapshots --------------------------------------------------------------------------------

    @work(exclusive=True, group="refresh")
    async def refresh_snapshot(self) -> None:
        """Read the node's local state (library, peers, bans, DHT) and post it."""
        link = self.link
        if link is None or self._stopped:
            return
        began = time.monotonic()
        try:
            state = await link.state({row.content_id for row in self.transfers.rows()})
        except NodeGone:
            return  # the event reader says so
        except P2PError as exc:  # a busy or failing state directory: say so, try again later
            self.log_line("warning", f"could not read the library: {describe_error(exc)}")
            return
        dht = DhtData.from_summary(state.dht, str(state.peer_id),
                                   state.listen[0] if state.listen else "")
        try:
            limits: Limits | None = await link.limits()
        except NodeGone:
            return
        except P2PError:  # the status line shows no limits this time
            limits = None
        self.post_message(NodeSnapshot(began, state.shares, state.downloads, state.peers,
                                       state.bans, dht, state.running, state.held, limits))

    def on_node_snapshot(self, snap: NodeSnapshot) -> None:
        if self.views_gone:
            return
        # A reading that began before a cancel still lists the cancelled download: it must
        # not bring it back.
        def current(cid: ContentId) -> bool:
            return self._cancelled.get(cid, -math.inf) < snap.at

        downloads = [self._stored_refusal(d) for d in snap.downloads if current(d.content_id)]
        for cid, (count, held) in snap.held.items():
            if not current(cid):
                continue
            self.transfers.set_held(cid, count, held)
        self.transfers.merge_store(downloads, snap.running)
        self.push_transfers()
        self.peers.update(snap.peers, snap.bans, time.time())
        self.main.query_one(PeersView).rows = tuple(self.peers.rows())
        self.main.query_one(DhtView).data = snap.dht
        rows: list[LibraryRow] = []
        listed: set[ContentId] = set()
        for s in snap.shares:
            rows.append(LibraryRow(s.content_id, s.name, s.size, s.origin,
                                   self.providers.get(s.content_id),
                                   self.health.get(s.content_id, "")))
            listed.add(s.content_id)
        for d in downloads:
            if d.content_id not in listed:
                rows.append(LibraryRow(d.content_id, d.name, d.size, f"download: {d.state}",
                                       self.providers.get(d.content_id)))
                listed.add(d.content_id)
        self._library = rows
        self.main.query_one(LibraryView).rows = tuple(rows)
        now = time.monotonic()
        for cid in listed:
            if now - self._looked_up.get(cid, -PROVIDER_LOOKUP_EVERY) >= PROVIDER_LOOKUP_EVERY:
                self._looked_up[cid] = now
                self.lookup_providers(cid)
        if snap.shares and now - self._health_at >= HEALTH_CHECK_EVERY:
            self._health_at = now
            self.check_health()
        downloading = sum(1 for r in self.transfers.rows() if r.state == "active")
        self.main.query_one(StatusLine).show(status_parts(snap, downloading))

    @work(group="providers")
    async def lookup_providers(self, cid: ContentId) -> None:
        """Count the providers the DHT knows for ``cid``."""
        link = self.link
        if link is None:
            return
        try:
            count = await link.count_providers(cid)
        except P2PError:
            self.post_message(ProvidersFound(cid, None))
            return
        self.post_message(ProvidersFound(cid, count))

    @work(exclusive=True, group="health")
    async def check_health(self) -> None:
        """Whether each share's files are as shared (shown as the Library's status)."""
        link = self.link
        if link is None:
            return
        try:
            found = await link.health()
        except P2PError as exc:  # a busy state directory, a node gone: try again later
            self.log_line("warning", f"could not check the shared files: {describe_error(exc)}")
            return
        self.post_message(HealthChecked(found))

    def on_health_checked(self, message: HealthChecked) -> None:
        if self.views_gone:
            return
        for cid, status in message.status.items():
            if status != "ok" and self.health.get(cid, "ok") == "ok":
                self.log_line("warning", f"{cid.short()}: its shared files are {status}: "
                                         "serving what is intact, `p2p verify` re-hashes")
        self.health = message.status
        self._relist()

    def _relist(self) -> None:
        self._library = [dataclasses.replace(r, providers=self.providers.get(r.content_id),
                                             status=self.health.get(r.content_id, r.status))
                         for r in self._library]
        self.main.query_one(LibraryView).rows = tuple(self._library)

    def on_providers_found(self, message: ProvidersFound) -> None:
        if self.views_gone:
            return
        self.providers[message.content_id] = message.count
        self._relist()

    def _linked(self) -> NodeLink | None:
        """The node's link, or None after saying why there is none."""
        if self.link is None:
            self.notify("The node stopped" if self.ready.is_set() else
                        "The node is not running yet", severity="warning")
        return self.link

    # -- library actions ---------------------------------------------------------------------------

    @on(LibraryView.Action)
    def _library_action(self, message: LibraryView.Action) -> None:
        cid = message.content_id
        match message.action:
            case "copy_ticket":
                self.copy_ticket(cid)
            case "verify":
                self.verify(cid)
            case "unshare":
                self.unshare(cid)
            case "lookup":
                self.lookup_providers(cid)

    @work(group="library")
    async def copy_ticket(self, cid: ContentId) -> None:
        """Copy the ticket of ``cid`` to the clipboard and show it."""
        link = self._linked()
        if link is None:
            return
        try:
            ticket = await link.ticket(cid)
        except P2PError as exc:
            self.notify(str(exc), severity="error")
            return
        self.copy_to_clipboard(ticket)
        self.notify(ticket, title="Ticket copied", timeout=15)

    @work(group="library")
    async def verify(self, cid: ContentId) -> None:
        """Re-hash the local copy of ``cid`` and report."""
        link = self._linked()
        if link is None:
            return
        self.notify(f"Verifying {cid.short()}…")
        try:
            report = await link.verify(cid)
        except P2PError as exc:
            self.notify(str(exc), title="Verify failed", severity="error")
            return
        match report.verdict:
            case "ok":
                self.notify(f"{cid.short()}: all {counted(report.chunks, 'chunk')} good",
                            title="Verified")
            case "incomplete":
                self.notify(report.summary(), title="Verified (download not finished)")
            case _:
                self.notify(report.summary(), title="Verify found problems", severity="warning")

    @work(group="library")
    async def unshare(self, cid: ContentId) -> None:
        """Stop serving ``cid``."""
        link = self._linked()
        if link is None:
            return
        try:
            removed = await link.unshare(cid)
        except P2PError as exc:
            self.notify(str(exc), title="Unshare failed", severity="error")
            return
        self.notify(f"{cid.short()} is no longer shared" if removed else
                    f"{cid.short()} was not shared")
        self.refresh_snapshot()

    # -- share and fetch ---------------------------------------------------------------------------

    def action_share(self) -> None:
        self.push_screen(ShareScreen(self.picker_root or Path.cwd()), self._share_picked)

    def _share_picked(self, path: Path | None) -> None:
        if path is not None:
            self.share(path)

    @work(group="share")
    async def share(self, path: Path) -> None:
        """Hash, sign and announce ``path`` (a failed announce is retried by the node)."""
        link = self._linked()
        if link is None:
            return
        self.notify(f"Hashing {path.name}…")
        try:
            outcome = await link.share(path)
        except (P2PError, OSError) as exc:
            self.notify(str(exc), title="Share failed", severity="error")
            return
        self.notify(outcome.ticket, title=f"Shared {outcome.name}", timeout=15)
        warning = left_out_warning(outcome.name, outcome)
        if warning is not None:
            self.log_line("warning", warning)
            self.notify(warning, title="Left out of the share", severity="warning", timeout=15)
        self.refresh_snapshot()

    def action_fetch(self) -> None:
        self.push_screen(FetchScreen(), self._fetch_entered)

    def _fetch_entered(self, value: str | PickFiles | None) -> None:
        if isinstance(value, PickFiles):
            self.pick_then_fetch(value.target)
        elif value is not None:
            self.start_fetch(value)

    @work(group="listing")
    async def pick_then_fetch(self, text: str) -> None:
        """Fetch and verify only the listing of ``text``, let the person tick files, then
        start the download of those."""
        link = self._linked()
        if link is None:
            return
        self.notify("Fetching the list of files…")
        try:
            name, files = await link.listing(text.strip())
        except P2PError as exc:
            self.notify(str(exc), title="Cannot list the files", severity="error")
            return

        def picked(paths: frozenset[str] | None) -> None:
            if paths is not None:
                self.start_fetch(text, Selection.of_paths(paths))

        self.push_screen(FilesScreen(name, files), picked)

    def start_fetch(self, text: str, selection: Selection | None = None) -> ContentId | None:
        """Start downloading an id or ticket (only the files ``selection`` picks, if given);
        show it in Transfers."""
        if self._linked() is None:
            return None
        try:
            cid, ticket = parse_id_or_ticket(text)
        except BadInput as exc:
            self.notify(str(exc), title="Cannot fetch", severity="error")
            return None
        if ticket is not None:
            self._tickets[cid] = ticket
        self._started[cid] = (text.strip(), selection)
        self._refused.pop(cid, None)
        self._offered.discard(cid)
        self._start(cid, text.strip(), selection)
        self.log_line("info", f"fetching {cid}")
        self.notify(f"Fetching {cid.short()}…")
        self.action_tab("transfers")
        self.call_after_refresh(self.main.query_one(TransfersView).select, cid)
        return cid

    @work(group="fetch")
    async def _start(self, cid: ContentId, target: str, selection: Selection | None) -> None:
        link = self.link
        if link is None:
            return
        try:
            await link.start_fetch(target, selection)
        except P2PError as exc:
            self.notify(str(exc), title="Cannot fetch", severity="error")

    # -- bandwidth limits ---------------------------------------------------------------------------

    def action_limits(self) -> None:
        self.edit_limits()

    @work(exclusive=True, group="limits")
    async def edit_limits(self) -> None:
        """Show the node's bandwidth limits in a dialog and set what the person changes."""
        link = self._linked()
        if link is None:
            return
        try:
            current = await link.limits()
        except P2PError as exc:
            self.notify(str(exc), title="Cannot read the limits", severity="error")
            return
        chosen: NewLimits | None = await self.push_screen_wait(LimitScreen(current))
        if chosen is None:
            return
        if chosen.up is None and chosen.down is None:
            self.notify("Limits unchanged")
            return
        try:
            limits = await link.set_limits(chosen.up, chosen.down)
        except P2PError as exc:
            self.notify(str(exc), title="Cannot set the limits", severity="error")
            return
        text = f"upload {format_rate(limits.up)}, download {format_rate(limits.down)}"
        self.log_line("info", f"limits set: {text}")
        self.notify(text, title="Limits set")
        self.refresh_snapshot()

    # -- transfer actions -------------------------------------------------------------------------

    @on(TransfersView.Action)
    def _transfer_action(self, message: TransfersView.Action) -> None:
        self.transfer_action(message.action, message.content_id)

    @work(group="transfers")
    async def transfer_action(self, action: str, cid: ContentId) -> None:
        """Pause, resume or cancel a download."""
        link = self._linked()
        if link is None:
            return
        try:
            match action:
                case "pause":
                    if not await link.pause(cid):
                        self.notify(f"{cid.short()} is not running", severity="warning")
                case "resume" if cid in self._refused:
                    self.offer_rename(cid)  # as it was, it would be refused again
                case "resume":
                    ticket = self._tickets.get(cid)
                    if not await link.start_fetch(str(ticket if ticket is not None else cid), None):
                        self.notify(f"{cid.short()} is already running")
                        return
                    self.notify(f"Resuming {cid.short()}…")
                case "cancel":
                    question, deletes = await self._cancel_question(link, cid)
                    if not await self.push_screen_wait(question):
                        return
                    await link.cancel(cid)
                    self._cancelled[cid] = time.monotonic()
                    self._refused.pop(cid, None)
                    self.transfers.forget(cid)
                    self.push_transfers()
                    self.notify(f"Cancelled {cid.short()}; partial data deleted" if deletes else
                                f"Removed {cid.short()} from Transfers; nothing deleted")
                case "files":
                    await self.pick_files(link, cid)
        except P2PError as exc:
            self.notify(str(exc), title=f"Cannot {action}", severity="error")
        self.refresh_snapshot()

    async def _cancel_question(self, link: NodeLink, cid: ContentId) -> tuple[ConfirmScreen, bool]:
        # Read now, not from the last snapshot: a download that just started has a partial.
        state = await link.state({cid, *(row.content_id for row in self.transfers.rows())})
        info = next((d for d in state.downloads if d.content_id == cid), None)
        partial = info.partial if info is not None else None
        held = partial is not None and await asyncio.to_thread(partial.exists)
        return cancel_question(cid, self.transfers.row(cid), info, held)

    async def pick_files(self, link: NodeLink, cid: ContentId) -> None:
        """Let the person tick the files of ``cid``: a running download changes what it
        fetches at once; a stopped one resumes with the ticked files."""
        try:
            choice = await link.files(cid)
        except P2PError as exc:
            self.notify(str(exc), severity="warning")
            return

        def picked(paths: frozenset[str] | None) -> None:
            if paths is not None:
                self.apply_files(cid, paths)

        self.push_screen(FilesScreen(choice.name, choice.files, choice.ticked,
                                     running=choice.running), picked)

    @work(group="transfers")
    async def apply_files(self, cid: ContentId, paths: frozenset[str]) -> None:
        """Fetch exactly ``paths`` of ``cid``: now, if it runs; else by resuming it."""
        link = self._linked()
        if link is None:
            return
        ticket = self._tickets.get(cid)
        try:
            running = await link.select(cid, paths, None if ticket is None else str(ticket))
        except P2PError as exc:
            self.notify(str(exc), title="Cannot pick those files", severity="error")
            return
        files = counted(len(paths), "file")
        self.notify(f"{files} of {cid.short()} selected" if running else
                    f"Fetching {files} of {cid.short()}…")

    # -- help and palette ---------------------------------------------------------------------------

    def help_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Every binding, grouped by where it applies."""
        def keys(bindings: Sequence[Any]) -> list[tuple[str, str]]:
            out = []
            for b in bindings:
                if isinstance(b, tuple):
                    b = Binding(*b)
                out.append((self.get_key_display(b), b.tooltip or b.description or b.action))
            return out

        everywhere = [k for k, b in zip(keys(self.BINDINGS), self.BINDINGS, strict=True)
                      if not (isinstance(b, Binding) and b.action.startswith("tab("))]
        return [
            ("Everywhere", [*everywhere, ("1-5", "views, by their tab number"),
                            ("ctrl+p", "command palette"),
                            ("tab", "next widget")]),
            ("Dialogs", [("enter", "confirm"), ("escape", "cancel")]),
            ("Library", keys(LibraryView.BINDINGS)),
            ("Transfers", keys(TransfersView.BINDINGS)),
            ("Log", keys(LogView.BINDINGS)),
        ]

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_sections()))

    def palette_commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        """(name, help, callback) of the actions offered in the command palette."""
        cmds: list[tuple[str, str, Callable[[], Any]]] = [
            ("Share a file or folder", "Hash, sign and announce it", self.action_share),
            ("Fetch by id or ticket", "Download content from the swarm", self.action_fetch),
            ("Bandwidth limits", "Show or change the upload and download limits",
             self.action_limits),
            ("Help: keys", "List every binding", self.action_help),
            ("Refresh", "Re-read library, peers and DHT now", self.refresh_snapshot),
        ]
        for tab in TABS:
            cmds.append((f"Show {tab}", f"Switch to the {tab} view", partial(self.action_tab, tab)))
        for row in self.transfers.rows():
            if row.state == "active":
                cmds.append((f"Pause {row.name}", str(row.content_id),
                             partial(self.transfer_action, "pause", row.content_id)))
            elif row.state in ("paused", "failed"):
                cmds.append((f"Resume {row.name}", str(row.content_id),
                             partial(self.transfer_action, "resume", row.content_id)))
        for lib in self._library:
            cmds.append((f"Copy ticket of {lib.name}", str(lib.content_id),
                         partial(self.copy_ticket, lib.content_id)))
        return cmds


def build_app(config: NodeConfig, *, node: Node | None = None, refresh_interval: float = 1.0,
              picker_root: Path | None = None, start_node: bool = True) -> P2PApp:
    """The one factory: the CLI and the tests build the app here.

    Without ``node`` the app starts (and on quit stops) a node from ``config``; with one,
    it shows that node and leaves its lifetime to the caller. ``start_node=False`` builds the
    views only (snapshot tests feed them fixed data).
    """
    return P2PApp(config, node=node, refresh_interval=refresh_interval, picker_root=picker_root,
                  start_node=start_node)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``p2p-tui``."""
    from .config import config_from_args

    try:
        config = config_from_args(argv)
    except P2PError as exc:
        print(f"p2p-tui: error: {describe_error(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    app = build_app(config)
    app.run()
    if app.failed is not None:
        print(f"p2p-tui: error: the node could not start: {describe_error(app.failed)}", file=sys.stderr)
        return exit_code_for(app.failed)
    return 0
