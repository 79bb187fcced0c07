"""The views. Each takes plain data (attributes down) and posts messages up; none calls the node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Label, RichLog, Select, Sparkline, Static

from p2p import ContentId, human_bytes, human_rate, human_seconds

from .model import (
    Cell,
    ChunkMapData,
    DhtData,
    LibraryRow,
    PeerRow,
    TransferRow,
    group_cells,
)

HELD_COLOUR = "#808080"
"""Chunks held before this run (a resumed download): nobody to credit."""

GLYPHS = {
    Cell.MISSING: ("·", "#555555"),
    Cell.IN_FLIGHT: ("▒", "#e8d44d"),
    Cell.VERIFIED: ("█", HELD_COLOUR),
    Cell.FAILED: ("✗", "bold #ff3333"),
}


def sync_table(table: DataTable[str | Text], rows: Sequence[tuple[str, Sequence[str | Text]]]) -> None:
    """Show ``rows`` (key, cells) in ``table``, in place when the keys are unchanged.

    Keeps the cursor on the same key across rebuilds, so a refresh never moves the selection.
    """
    keys = [k for k, _ in rows]
    current = [rk.value for rk in table.rows]
    columns = list(table.columns)
    if keys == current:
        for key, cells in rows:
            for col, value in zip(columns, cells, strict=False):
                table.update_cell(key, col, value, update_width=True)
        return
    selected: str | None = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        selected = current[table.cursor_row]
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys:
        table.move_cursor(row=keys.index(selected))


def selected_key(table: DataTable[str | Text]) -> str | None:
    """The key of the row under the cursor, or None for an empty table."""
    if not table.row_count or not 0 <= table.cursor_row < table.row_count:
        return None
    return str(table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value)


# -- library --------------------------------------------------------------------------------


class LibraryView(Vertical):
    """What this node shares and has downloaded."""

    BINDINGS = [
        Binding("c", "copy_ticket", "Copy ticket"),
        Binding("v", "verify", "Verify"),
        Binding("u", "unshare", "Unshare"),
        Binding("l", "lookup", "Look up providers"),
    ]

    rows: reactive[tuple[LibraryRow, ...]] = reactive((), always_update=True)

    @dataclass
    class Action(Message):
        """The person asked for ``action`` on ``content_id`` (copy_ticket, verify, unshare, lookup)."""

        action: str
        content_id: ContentId

    def compose(self) -> ComposeResult:
        table: DataTable[str | Text] = DataTable(id="library-table", cursor_type="row")
        table.add_columns("Name", "Size", "Origin", "Providers", "Content id")
        yield table
        yield Label("s: share a file or folder · c: copy ticket · v: verify · u: unshare",
                    classes="hint")

    def watch_rows(self, rows: tuple[LibraryRow, ...]) -> None:
        table = self.query_one(DataTable)
        sync_table(table, [(str(r.content_id), (
            r.name, human_bytes(r.size), r.origin,
            "-" if r.providers is None else str(r.providers), str(r.content_id)))
            for r in rows])

    def selected(self) -> ContentId | None:
        key = selected_key(self.query_one(DataTable))
        return ContentId.parse(key) if key else None

    def _post(self, action: str) -> None:
        cid = self.selected()
        if cid is None:
            self.notify("Nothing selected", severity="warning")
            return
        self.post_message(self.Action(action, cid))

    def action_copy_ticket(self) -> None:
        self._post("copy_ticket")

    def action_verify(self) -> None:
        self._post("verify")

    def action_unshare(self) -> None:
        self._post("unshare")

    def action_lookup(self) -> None:
        self._post("lookup")


# -- transfers ---------------------------------------------------------------------------------


class ChunkMap(Widget):
    """One cell per chunk (or per group of chunks, to fit the widget), coloured by state and peer."""

    DEFAULT_CSS = """
    ChunkMap { height: 1fr; min-height: 3; }
    """

    data: reactive[ChunkMapData] = reactive(ChunkMapData, layout=False)

    def capacity(self) -> int:
        """How many cells fit (one character each)."""
        return max(1, self.size.width) * max(1, self.size.height)

    def cells(self) -> list[tuple[Cell, str]]:
        """What is drawn: (state, owner label) per cell."""
        return group_cells(self.data, self.capacity())

    def render(self) -> Text:
        colours = dict(self.data.legend)
        width = max(1, self.size.width)
        text = Text(no_wrap=True, overflow="crop")
        cells = self.cells()
        if not cells:
            return Text("no transfer selected", style="dim")
        for i, (state, owner) in enumerate(cells):
            glyph, style = GLYPHS[state]
            if state == Cell.VERIFIED and owner:
                style = colours.get(owner, HELD_COLOUR)
            text.append(glyph, style=style)
            if (i + 1) % width == 0 and i + 1 < len(cells):
                text.append("\n")
        return text


class ChunkLegend(Static):
    """Peer colours of the chunk map, and what the other glyphs mean."""

    data: reactive[ChunkMapData] = reactive(ChunkMapData)

    def watch_data(self, data: ChunkMapData) -> None:
        text = Text()
        for label, colour in data.legend:
            text.append("█ ", style=colour)
            text.append(f"{label}  ")
        for state, name in ((Cell.VERIFIED, "held"), (Cell.IN_FLIGHT, "in flight"),
                            (Cell.MISSING, "missing"), (Cell.FAILED, "failed")):
            glyph, style = GLYPHS[state]
            text.append(f"{glyph} ", style=style)
            text.append(f"{name}  ", style="dim")
        self.update(text)


class TransfersView(Vertical):
    """Every download with progress, rate, ETA and peers; the chunk map of the selected one."""

    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("x", "cancel", "Cancel"),
        Binding("t", "files", "Files"),
    ]

    rows: reactive[tuple[TransferRow, ...]] = reactive((), always_update=True)
    chunk_map: reactive[ChunkMapData] = reactive(ChunkMapData)

    @dataclass
    class Action(Message):
        """The person asked to pause, resume or cancel a download, or to pick its files."""

        action: str
        content_id: ContentId

    @dataclass
    class Selected(Message):
        """The highlighted transfer changed (the app sends its chunk map down)."""

        content_id: ContentId | None

    def compose(self) -> ComposeResult:
        table: DataTable[str | Text] = DataTable(id="transfers-table", cursor_type="row")
        table.add_columns("Name", "Progress", "Done", "Size", "Rate", "ETA", "Peers", "State")
        yield table
        yield Label("rate", id="rate-label", classes="section")
        yield Sparkline([], id="rate")
        yield Label("chunk map", id="chunk-label", classes="section")
        yield ChunkMap(id="chunk-map")
        yield ChunkLegend(id="chunk-legend")

    def watch_rows(self, rows: tuple[TransferRow, ...]) -> None:
        table = self.query_one(DataTable)
        before = self.selected()
        sync_table(table, [(str(r.content_id), (
            r.name, _bar(r.fraction), f"{r.done_chunks}/{r.chunk_count}", human_bytes(r.size),
            human_rate(r.rate), human_seconds(r.eta), str(r.peers),
            r.state if not r.error else f"{r.state}: {r.error}"[:60])) for r in rows])
        now = self.selected()
        row = next((r for r in rows if r.content_id == now), None)
        rates = list(row.rates) if row else []
        self.query_one(Sparkline).data = rates if any(rates) else []
        self.query_one("#rate-label", Label).update(
            f"rate {human_rate(row.rate)}" if row else "rate")
        if now != before:
            self.post_message(self.Selected(now))

    def watch_chunk_map(self, data: ChunkMapData) -> None:
        self.query_one(ChunkMap).data = data
        self.query_one(ChunkLegend).data = data

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.post_message(self.Selected(self.selected()))

    def selected(self) -> ContentId | None:
        key = selected_key(self.query_one(DataTable))
        return ContentId.parse(key) if key else None

    def select(self, cid: ContentId) -> None:
        """Move the cursor to ``cid`` if it is listed."""
        table = self.query_one(DataTable)
        keys = [rk.value for rk in table.rows]
        if str(cid) in keys:
            table.move_cursor(row=keys.index(str(cid)))

    def _post(self, action: str) -> None:
        cid = self.selected()
        if cid is None:
            self.notify("No transfer selected", severity="warning")
            return
        self.post_message(self.Action(action, cid))

    def action_pause(self) -> None:
        self._post("pause")

    def action_resume(self) -> None:
        self._post("resume")

    def action_cancel(self) -> None:
        self._post("cancel")

    def action_files(self) -> None:
        self._post("files")


def _bar(fraction: float, width: int = 20) -> Text:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    text = Text("█" * filled, style="#5fd068")
    text.append("░" * (width - filled), style="#444444")
    text.append(f" {fraction * 100:5.1f}%")
    return text


# -- peers -------------------------------------------------------------------------------------


class PeersView(Vertical):
    """Connected peers (and recently seen ones) with bytes and rates each way."""

    rows: reactive[tuple[PeerRow, ...]] = reactive((), always_update=True)

    def compose(self) -> ComposeResult:
        table: DataTable[str | Text] = DataTable(id="peers-table", cursor_type="row")
        table.add_columns("Peer", "Address", "Dir", "In", "Out", "Rate in", "Rate out",
                          "Strikes", "Status")
        yield table

    def watch_rows(self, rows: tuple[PeerRow, ...]) -> None:
        def status(r: PeerRow) -> Text:
            if r.banned:
                return Text(f"banned: {r.banned}"[:40], style="bold red")
            return Text("connected", style="green") if r.connected else Text("gone", style="dim")

        sync_table(self.query_one(DataTable), [(f"{r.peer}/{r.direction}", (
            r.peer.short(), r.address, r.direction, human_bytes(r.bytes_in),
            human_bytes(r.bytes_out), human_rate(r.rate_in), human_rate(r.rate_out),
            str(r.strikes), status(r))) for r in rows])


# -- DHT ------------------------------------------------------------------------------------------


class DhtView(VerticalScroll):
    """Routing table per bucket, records held, bootstrap status, our addresses."""

    data: reactive[DhtData | None] = reactive(None, always_update=True)

    def compose(self) -> ComposeResult:
        yield Static(id="dht-body")

    def watch_data(self, data: DhtData | None) -> None:
        body = self.query_one("#dht-body", Static)
        if data is None:
            body.update(Text("starting…", style="dim"))
            return
        text = Text()
        text.append("Peer id    ", style="bold")
        text.append(f"{data.peer_id}\n")
        text.append("Node id    ", style="bold")
        text.append(f"{data.node_id}\n")
        text.append("Listening  ", style="bold")
        text.append(f"{data.listen}\n")
        text.append("Announced  ", style="bold")
        text.append((", ".join(data.addresses) or "-") + "\n")
        text.append("Bootstrap  ", style="bold")
        if not data.bootstrap:
            text.append("none configured\n", style="dim")
        elif data.bootstrap_error:
            text.append(f"{', '.join(data.bootstrap)}: failed: {data.bootstrap_error}\n",
                        style="red")
        else:
            text.append(f"{', '.join(data.bootstrap)}: joined\n", style="green")
        text.append("Records    ", style="bold")
        text.append((", ".join(f"{k} {v}" for k, v in data.records) or "none") + "\n")
        text.append(f"\nRouting table: {data.contacts} contacts in {len(data.buckets)} buckets\n",
                    style="bold")
        top = max(data.buckets, default=0) or 1
        for i, n in enumerate(data.buckets):
            text.append(f"  bucket {i:3d} {n:3d} ")
            text.append("■" * max(1 if n else 0, round(40 * n / top)), style="#4e9af1")
            text.append("\n")
        body.update(text)


# -- log --------------------------------------------------------------------------------------------


LEVELS = ("debug", "info", "warning", "error")
LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


@dataclass(frozen=True)
class LogEntry:
    """One line of the log view."""

    at: str
    level: str
    message: str


class LogView(Vertical):
    """The node's events, filterable by level."""

    BINDINGS = [Binding("f", "cycle_level", "Filter level")]

    level: reactive[str] = reactive("info")
    MAX_ENTRIES = 2000

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entries: list[LogEntry] = []

    def compose(self) -> ComposeResult:
        yield Select([(f"{lv} and above", lv) for lv in LEVELS], value="info",
                     allow_blank=False, id="log-level")
        yield RichLog(id="log", wrap=False, markup=False, max_lines=self.MAX_ENTRIES)

    def add(self, entry: LogEntry) -> None:
        """Append a line (shown if at or above the current level)."""
        self.entries.append(entry)
        if len(self.entries) > self.MAX_ENTRIES:
            del self.entries[: len(self.entries) - self.MAX_ENTRIES]
        if self.is_mounted and self._shown(entry):
            self.query_one(RichLog).write(self._line(entry))

    def _shown(self, entry: LogEntry) -> bool:
        return LEVELS.index(entry.level) >= LEVELS.index(self.level) if entry.level in LEVELS else True

    @staticmethod
    def _line(entry: LogEntry) -> Text:
        text = Text(f"{entry.at} ", style="dim")
        text.append(f"{entry.level:7s} ", style=LEVEL_STYLES.get(entry.level, ""))
        text.append(entry.message)
        return text

    def shown_entries(self) -> list[LogEntry]:
        """The entries the current filter shows."""
        return [e for e in self.entries if self._shown(e)]

    def on_mount(self) -> None:
        self._rewrite()

    def watch_level(self, level: str) -> None:
        if self.is_mounted:
            select = self.query_one(Select)
            if select.value != level:
                select.value = level
            self._rewrite()

    def _rewrite(self) -> None:
        log = self.query_one(RichLog)
        log.clear()
        for entry in self.shown_entries():
            log.write(self._line(entry))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self.level = event.value

    def action_cycle_level(self) -> None:
        self.level = LEVELS[(LEVELS.index(self.level) + 1) % len(LEVELS)]
