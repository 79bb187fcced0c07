"""The views. Each takes plain data (attributes down) and posts messages up; none calls the node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
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
    counted,
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


def sync_table(table: DataTable[str | Text], rows: Sequence[tuple[str, Sequence[str | Text]]],
               columns: Sequence[tuple[str, int | None]] | None = None) -> None:
    """Show ``rows`` (key, cells) in ``table``, in place when the keys are unchanged.

    Keeps the cursor on the same key across rebuilds, so a refresh never moves the selection.
    ``columns``: the (label, fixed width or None to fit) the table should have; when they
    differ from its own (the view was resized to another layout) the table is rebuilt with
    them, so widths shrink too.
    """
    keys = [k for k, _ in rows]
    current = [rk.value for rk in table.rows]
    relabel = columns is not None and [
        (str(c.label), None if c.auto_width else c.width) for c in table.columns.values()
    ] != list(columns)
    if keys == current and not relabel:
        for key, cells in rows:
            for col, value in zip(list(table.columns), cells, strict=False):
                table.update_cell(key, col, value, update_width=True)
        return
    selected: str | None = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        selected = current[table.cursor_row]
    table.clear(columns=relabel)
    if relabel:
        assert columns is not None
        for label, width in columns:
            table.add_column(label, width=width)
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys:
        table.move_cursor(row=keys.index(selected))


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut (names in narrow tables)."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def selected_key(table: DataTable[str | Text]) -> str | None:
    """The key of the row under the cursor, or None for an empty table."""
    if not table.row_count or not 0 <= table.cursor_row < table.row_count:
        return None
    return str(table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value)


# -- status line ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusPart:
    """One figure of the status line, in a long and a short form (``3 connections``,
    ``3 conn``)."""

    long: str
    short: str


class StatusLine(Widget):
    """One line under the header: the node's peer, address and counts, or a message
    (starting, stopping, failed). Too narrow for the long forms, it uses the short ones;
    still too narrow, it drops figures from the end, most important first."""

    DEFAULT_CSS = """
    StatusLine { height: 1; }
    """

    SEPARATOR = " · "

    message: reactive[str] = reactive("starting…")
    parts: reactive[tuple[StatusPart, ...]] = reactive(())

    def show(self, parts: Sequence[StatusPart]) -> None:
        """Show the node's figures."""
        self.message = ""
        self.parts = tuple(parts)

    def say(self, message: str) -> None:
        """Show a message instead of the figures."""
        self.message = message

    def line(self, width: int) -> str:
        """The text drawn at ``width`` cells."""
        if self.message or not self.parts:
            return self.message
        text = self.SEPARATOR.join(p.long for p in self.parts)
        if len(text) <= width:
            return text
        words = [p.short for p in self.parts]
        while len(words) > 1 and len(self.SEPARATOR.join(words)) > width:
            words.pop()
        return fit(self.SEPARATOR.join(words), width)

    def render(self) -> Text:
        width = self.content_region.width or self.size.width
        return Text(self.line(width), no_wrap=True, overflow="crop")


# -- library --------------------------------------------------------------------------------


CELL_PADDING = 2
"""Columns a data table adds around each cell (one each side)."""
SCROLLBAR = 2
"""Columns a data table's vertical scroll bar takes once its rows outgrow it: kept free, so
the last column is not cut when it appears."""
NAME_MIN = 20
"""Characters a name keeps in a table before the view drops columns or shortens ids."""


def name_width(names: Sequence[str], budget: int) -> int:
    """The width of a table's name column: the longest name, cut to what ``budget`` leaves."""
    return max(len("Name"), min(budget, max((len(n) for n in names), default=0)))


def room_left(width: int, labels: Sequence[str], rows: Sequence[Sequence[str | Text]]) -> int:
    """What a table ``width`` cells wide leaves for one more column (the name), once the
    columns ``labels`` with cells ``rows`` take what their widest cell needs."""
    used = 0
    for i, label in enumerate(labels):
        used += max([cell_len(label), *(_cell_width(r[i]) for r in rows)]) + CELL_PADDING
    return width - used - CELL_PADDING - SCROLLBAR


def _cell_width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


class LibraryView(Vertical):
    """What this node shares and has downloaded. In a narrow window the content id column
    shows its short form (``c`` copies the whole ticket)."""

    BINDINGS = [
        Binding("c", "copy_ticket", "Ticket", tooltip="Copy the ticket"),
        Binding("v", "verify", "Verify"),
        Binding("u", "unshare", "Unshare"),
        Binding("l", "lookup", "Providers", tooltip="Look up providers in the DHT"),
    ]

    rows: reactive[tuple[LibraryRow, ...]] = reactive((), always_update=True)

    @dataclass
    class Action(Message):
        """The person asked for ``action`` on ``content_id`` (copy_ticket, verify, unshare, lookup)."""

        action: str
        content_id: ContentId

    def compose(self) -> ComposeResult:
        yield DataTable(id="library-table", cursor_type="row")
        yield Label("s: share a file or folder · f: fetch · c: copy ticket · ?: every key",
                    classes="hint")

    def on_resize(self) -> None:
        self.watch_rows(self.rows)

    def watch_rows(self, rows: tuple[LibraryRow, ...]) -> None:
        labels = ["Size", "Origin", "Providers", "Content id"]

        def cells(r: LibraryRow, full_id: bool) -> list[str]:
            origin = r.origin if r.status in ("", "ok") else f"{r.origin}, {r.status}"
            return [human_bytes(r.size), origin, "-" if r.providers is None else str(r.providers),
                    str(r.content_id) if full_id else r.content_id.short()]

        full_id = room_left(self.size.width, labels, [cells(r, True) for r in rows]) >= NAME_MIN
        rest = [cells(r, full_id) for r in rows]
        names = name_width([r.name for r in rows], room_left(self.size.width, labels, rest))
        columns = [("Name", names), *((label, None) for label in labels)]
        sync_table(self.query_one(DataTable), [(str(r.content_id), (fit(r.name, names), *cells_))
                                               for r, cells_ in zip(rows, rest, strict=True)],
                   columns)

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
            # Nothing selected, or a transfer whose list of chunks never arrived.
            return Text("no chunks to show", style="dim")
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


@dataclass(frozen=True)
class TransferLayout:
    """The transfers table's columns for a width: every column with a 20-cell bar when the
    name keeps :data:`NAME_MIN` characters, else a 10-cell bar and no chunk or peer count
    (the detail pane under the table has them), and the name cut to what is left. The state
    column is never cut: it reads whole words."""

    bar: int
    name: int
    wide: bool

    WIDE = ("Progress", "Done", "Size", "Rate", "ETA", "Peers", "State")
    NARROW = ("Progress", "Size", "Rate", "ETA", "State")

    @classmethod
    def for_width(cls, width: int, rows: Sequence[TransferRow]) -> TransferLayout:
        names = [r.name for r in rows]
        wide = cls(20, 0, True)
        room = room_left(width, cls.WIDE, [wide.cells(r)[1:] for r in rows])
        if room >= NAME_MIN:
            return cls(20, name_width(names, room), True)
        narrow = cls(10, 0, False)
        room = room_left(width, cls.NARROW, [narrow.cells(r)[1:] for r in rows])
        return cls(10, name_width(names, room), False)

    def columns(self) -> list[tuple[str, int | None]]:
        """(label, fixed width) of each column."""
        labels = self.WIDE if self.wide else self.NARROW
        return [("Name", self.name), *((label, None) for label in labels)]

    def cells(self, r: TransferRow) -> tuple[str | Text, ...]:
        """One row's cells."""
        known = r.size_known
        done = f"{r.done_chunks}/{r.chunk_count}" if known else "-"
        size = human_bytes(r.size) if known else "-"
        head = (fit(r.name, self.name), _bar(r, self.bar))
        tail = (human_rate(r.rate), human_seconds(r.eta) if r.state == "active" else "-")
        state = Text(r.state, style=STATE_STYLES.get(r.state, ""))
        if self.wide:
            return (*head, done, size, *tail, str(r.peers), state)
        return (*head, size, *tail, state)


STATE_STYLES = {"failed": "bold red", "complete": "green", "paused": "yellow"}


def transfer_detail(r: TransferRow | None) -> Text:
    """The detail pane of the selected transfer: its name, the whole failure reason, the
    counts the narrow table leaves out, the full content id."""
    if r is None:
        return Text("no transfer selected", style="dim")
    text = Text()
    text.append(r.name, style="bold")
    text.append("\n")
    if r.error:
        text.append(f"{r.state}: {r.error}\n", style="red")
    if r.size_known:
        text.append(f"{r.done_chunks:,} of {counted(r.chunk_count, 'chunk')} · ")
        if r.bytes_done:
            text.append(f"{human_bytes(r.bytes_done)} of ")
        text.append(f"{human_bytes(r.size)} · {counted(r.peers, 'peer')}")
        if r.rate > 0:
            text.append(f" · {human_rate(r.rate)}")
    else:
        text.append("size unknown: its list of chunks never arrived", style="dim")
    text.append(f"  {r.content_id}", style="dim")
    return text


class TransfersView(Vertical):
    """Every download with progress, rate, ETA and state; under the table the selected one's
    detail (the whole failure reason), rate sparkline and chunk map."""

    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("x", "cancel", "Cancel", tooltip="Cancel the selected download"),
        Binding("t", "files", "Files", tooltip="Tick the files to fetch"),
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
        yield DataTable(id="transfers-table", cursor_type="row")
        yield Static(transfer_detail(None), id="transfer-detail")
        yield Label("rate", id="rate-label", classes="section")
        yield Sparkline([], id="rate")
        yield Label("chunk map", id="chunk-label", classes="section")
        yield ChunkMap(id="chunk-map")
        yield ChunkLegend(id="chunk-legend")

    def on_resize(self) -> None:
        self.watch_rows(self.rows)

    def watch_rows(self, rows: tuple[TransferRow, ...]) -> None:
        table = self.query_one(DataTable)
        before = self.selected()
        layout = TransferLayout.for_width(self.size.width, rows)
        sync_table(table, [(str(r.content_id), layout.cells(r)) for r in rows], layout.columns())
        self._show_selected()
        if self.selected() != before:
            self.post_message(self.Selected(self.selected()))

    def _show_selected(self) -> None:
        now = self.selected()
        row = next((r for r in self.rows if r.content_id == now), None)
        self.query_one("#transfer-detail", Static).update(transfer_detail(row))
        rates = list(row.rates) if row else []
        self.query_one(Sparkline).data = rates if any(rates) else []
        self.query_one("#rate-label", Label).update(
            f"rate {human_rate(row.rate)}" if row else "rate")

    def watch_chunk_map(self, data: ChunkMapData) -> None:
        self.query_one(ChunkMap).data = data
        self.query_one(ChunkLegend).data = data

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_selected()
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


def _bar(row: TransferRow, width: int) -> Text:
    """Progress as a bar and a percentage; a transfer of unknown size (its listing never
    arrived: not found, refused) gets an empty bar and no figure, never a full one."""
    if not row.size_known:
        text = Text("░" * width, style="#444444")
        text.append("      -")
        return text
    fraction = row.fraction
    filled = round(max(0.0, min(1.0, fraction)) * width)
    text = Text("█" * filled, style="#5fd068")
    text.append("░" * (width - filled), style="#444444")
    text.append(f" {fraction * 100:5.1f}%")
    return text


# -- peers -------------------------------------------------------------------------------------


ADDRESS_MIN = 15
"""Characters an address keeps (``255.255.255.255``) before the peers table narrows."""


def peer_detail(r: PeerRow | None) -> Text:
    """The detail line of the selected peer: the whole peer id and ban reason, byte totals."""
    if r is None:
        return Text("no peer selected", style="dim")
    text = Text()
    text.append(str(r.peer), style="bold")
    text.append(f"  {r.direction} {r.address}\n", style="dim")
    text.append(f"{r.path_text} · received {human_bytes(r.bytes_in)} · sent {human_bytes(r.bytes_out)} · "
                f"{counted(r.strikes, 'strike')}")
    if r.banned:
        text.append("\n")
        text.append(f"banned: {r.banned}", style="bold red")
    return text


class PeersView(Vertical):
    """Connected peers (and recently seen ones) with bytes and rates each way. A narrow
    window leaves out the byte totals and the direction column (an arrow marks outgoing and
    incoming addresses); the detail line under the table has the rest."""

    rows: reactive[tuple[PeerRow, ...]] = reactive((), always_update=True)

    def compose(self) -> ComposeResult:
        yield DataTable(id="peers-table", cursor_type="row")
        yield Static(peer_detail(None), id="peer-detail")

    def on_resize(self) -> None:
        self.watch_rows(self.rows)

    WIDE = ("Peer", "Dir", "Path", "In", "Out", "Rate in", "Rate out", "Strikes", "Status")
    NARROW = ("Peer", "Rate in", "Rate out", "Strikes", "Status")

    @staticmethod
    def cells(r: PeerRow, wide: bool) -> list[str | Text]:
        """A row's cells but the address."""
        if r.banned:
            status = Text(fit(f"banned: {r.banned}", 40) if wide else "banned", style="bold red")
        else:
            status = Text("connected", style="green") if r.connected else Text("gone", style="dim")
        rates: list[str | Text] = [human_rate(r.rate_in), human_rate(r.rate_out), str(r.strikes),
                                   status]
        if wide:
            return [r.peer.short(), r.direction, r.path_text, human_bytes(r.bytes_in),
                    human_bytes(r.bytes_out), *rates]
        return [r.peer.short(), *rates]

    def watch_rows(self, rows: tuple[PeerRow, ...]) -> None:
        width = self.size.width
        wide = True
        room = room_left(width, self.WIDE, [self.cells(r, True) for r in rows])
        if room < ADDRESS_MIN:
            wide = False
            room = room_left(width, self.NARROW, [self.cells(r, False) for r in rows]) - 2
        address = max(len("Address"), min(room, max((len(r.address) for r in rows), default=0)))

        def cells(r: PeerRow) -> tuple[str | Text, ...]:
            peer, *rest = self.cells(r, wide)
            if wide:
                return (peer, fit(r.address, address), *rest)
            arrow = {"in": "← ", "out": "→ "}.get(r.direction, "  ")
            return (peer, arrow + fit(r.address, address), *rest)

        labels = self.WIDE if wide else self.NARROW
        columns = [(labels[0], None), ("Address" if wide else "  Address", address + (0 if wide else 2)),
                   *((label, None) for label in labels[1:])]
        sync_table(self.query_one(DataTable), [(f"{r.peer}/{r.direction}", cells(r))
                                               for r in rows], columns)
        self._show_selected()

    def _show_selected(self) -> None:
        key = selected_key(self.query_one(DataTable))
        row = next((r for r in self.rows if f"{r.peer}/{r.direction}" == key), None)
        self.query_one("#peer-detail", Static).update(peer_detail(row))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_selected()


# -- DHT ------------------------------------------------------------------------------------------


def routing_summary(data: DhtData) -> str:
    """'68 contacts in 8 buckets', '1 contact in 1 bucket'."""
    return f"{counted(data.contacts, 'contact')} in {counted(len(data.buckets), 'bucket')}"


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
        text.append(f"\nRouting table: {routing_summary(data)}\n", style="bold")
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


LEVEL_KEY = "e"
"""Cycles the log's level filter. Not ``f``: that key fetches, in every view."""


class LogView(Vertical):
    """The node's events, filterable by level; long lines wrap (a narrow window reads them
    whole)."""

    BINDINGS = [Binding(LEVEL_KEY, "cycle_level", "Level", tooltip="Cycle the level filter")]

    level: reactive[str] = reactive("info")
    MAX_ENTRIES = 2000

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.entries: list[LogEntry] = []

    def compose(self) -> ComposeResult:
        yield Select([(f"{lv} and above", lv) for lv in LEVELS], value="info",
                     allow_blank=False, id="log-level")
        yield RichLog(id="log", wrap=True, markup=False, max_lines=self.MAX_ENTRIES)

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
