"""Modal screens: share picker, fetch dialog, file picker, limits, confirmation, help. They return
plain values to the app. Each fits a window of 80x24 (the smallest common terminal): lists
and trees take the height that is left, buttons stay on screen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, Static

from p2p import BadInput, Manifest, format_rate, human_bytes, parse_id_or_ticket, parse_rate

from .link import Limits
from .model import counted
from .picker import FileIndex, FileTree


def home_contracted(path: Path) -> str:
    """``path`` with the home folder written ``~`` (shorter in a narrow dialog)."""
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except ValueError:
        return str(path)


class ShareScreen(ModalScreen[Path | None]):
    """Pick a file or folder to share: browse the tree (it opens at ``root``, the current
    folder; "Parent" climbs) or type a path."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog share"):
            yield Label("Share a file or folder", id="share-title", classes="title", markup=False)
            yield DirectoryTree(self.root, id="share-tree")
            yield Input(placeholder="path to a file or folder", id="share-path")
            yield Static("", id="share-error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Parent", id="share-up", classes="left")
                yield Button("Share", variant="primary", id="share-ok")
                yield Button("Cancel", id="share-cancel")

    def on_mount(self) -> None:
        self.query_one("#share-path", Input).focus()
        self._show_folder()

    def folder(self) -> Path:
        """The folder the tree shows."""
        return Path(self.query_one(DirectoryTree).path)

    def _show_folder(self) -> None:
        self.query_one("#share-title", Label).update(
            f"Share a file or folder in {home_contracted(self.folder())}")

    @on(Button.Pressed, "#share-up")
    def _climb(self) -> None:
        tree = self.query_one(DirectoryTree)
        here = self.folder().resolve()
        if here.parent != here:
            tree.path = here.parent
            self._show_folder()

    @on(DirectoryTree.FileSelected)
    @on(DirectoryTree.DirectorySelected)
    def _picked(self, event: DirectoryTree.FileSelected | DirectoryTree.DirectorySelected) -> None:
        self.query_one("#share-path", Input).value = str(event.path)

    def _check(self) -> Path | None:
        text = self.query_one("#share-path", Input).value.strip()
        error = self.query_one("#share-error", Static)
        if not text:
            error.update("Type a path or pick one in the tree")
            return None
        path = Path(text).expanduser()
        if not path.exists():
            error.update(f"{path}: no such file or folder")
            return None
        error.update("")
        return path

    @on(Input.Submitted, "#share-path")
    @on(Button.Pressed, "#share-ok")
    def _confirm(self) -> None:
        path = self._check()
        if path is not None:
            self.dismiss(path)

    @on(Button.Pressed, "#share-cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def check_target(text: str) -> str | None:
    """The error for a fetch target, or None when it parses as an id or a ticket."""
    if not text.strip():
        return "Paste a content id (p2p…) or a ticket"
    try:
        parse_id_or_ticket(text)
    except BadInput as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class PickFiles:
    """What the fetch dialog returns for "Pick files…": list ``target``'s files first."""

    target: str


class FetchScreen(ModalScreen[str | PickFiles | None]):
    """Paste a content id or a ticket; validated as you type. "Fetch" starts the download,
    "Pick files…" shows the files first (:class:`FilesScreen`)."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label("Fetch by content id or ticket", classes="title")
            yield Input(placeholder="p2p… id or ticket", id="fetch-input")
            yield Static("", id="fetch-error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Fetch", variant="primary", id="fetch-ok", disabled=True)
                yield Button("Pick files…", id="fetch-pick", disabled=True)
                yield Button("Cancel", id="fetch-cancel")

    def on_mount(self) -> None:
        self.query_one("#fetch-input", Input).focus()

    @on(Input.Changed, "#fetch-input")
    def _validate(self, event: Input.Changed) -> None:
        error = check_target(event.value)
        self.query_one("#fetch-error", Static).update(
            "" if error is None or not event.value.strip() else error)
        self.query_one("#fetch-ok", Button).disabled = error is not None
        self.query_one("#fetch-pick", Button).disabled = error is not None

    @on(Input.Submitted, "#fetch-input")
    @on(Button.Pressed, "#fetch-ok")
    def _confirm(self) -> None:
        text = self.query_one("#fetch-input", Input).value
        error = check_target(text)
        if error is not None:
            self.query_one("#fetch-error", Static).update(error)
            return
        self.dismiss(text.strip())

    @on(Button.Pressed, "#fetch-cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#fetch-pick")
    def _pick(self) -> None:
        text = self.query_one("#fetch-input", Input).value
        if check_target(text) is None:
            self.dismiss(PickFiles(text.strip()))


def check_rate(text: str, what: str) -> tuple[float | None, str | None]:
    """A limit as typed in the limits dialog: (bytes per second, None), or (None, the error)."""
    if not text.strip():
        return None, f"{what}: type a rate such as 5MiB/s, or 0 for no limit"
    try:
        return parse_rate(text, what), None
    except BadInput as exc:
        return None, str(exc)


@dataclass(frozen=True)
class NewLimits:
    """What the limits dialog returns: each limit to set (bytes per second, 0: none), or
    None where the person left it as it was."""

    up: float | None
    down: float | None


class LimitScreen(ModalScreen[NewLimits | None]):
    """Show the node's upload and download limits and change them: a rate per field
    (``5MiB/s``, ``500K``, ``0`` or ``unlimited`` for none), checked as you type."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    FIELDS = (("limit-up", "Upload"), ("limit-down", "Download"))

    def __init__(self, current: Limits) -> None:
        super().__init__()
        self.current = current
        self.shown = {"limit-up": format_rate(current.up), "limit-down": format_rate(current.down)}
        """The text each field opened with (left as it was: that limit is not changed)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog limits"):
            yield Label("Bandwidth limits", classes="title")
            for field_id, label in self.FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label, classes="label")
                    yield Input(self.shown[field_id], id=field_id, select_on_focus=True)
            yield Static("", id="limit-error", classes="error", markup=False)
            yield Static("All peers together, at once · e.g. 5MiB/s, 500K; 0 = none",
                         classes="hint", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Set", variant="primary", id="limit-ok")
                yield Button("Cancel", id="limit-cancel")

    def on_mount(self) -> None:
        self.query_one("#limit-up", Input).focus()

    def _read(self) -> tuple[NewLimits | None, str | None]:
        values: dict[str, float | None] = {}
        for field_id, label in self.FIELDS:
            text = self.query_one(f"#{field_id}", Input).value
            if text.strip() == self.shown[field_id]:
                values[field_id] = None
                continue
            rate, error = check_rate(text, label.lower())
            if error is not None:
                return None, error
            values[field_id] = rate
        return NewLimits(values["limit-up"], values["limit-down"]), None

    @on(Input.Changed)
    def _validate(self) -> None:
        _, error = self._read()
        self.query_one("#limit-error", Static).update(error or "")
        self.query_one("#limit-ok", Button).disabled = error is not None

    @on(Input.Submitted)
    @on(Button.Pressed, "#limit-ok")
    def _confirm(self) -> None:
        chosen, error = self._read()
        if chosen is None:
            self.query_one("#limit-error", Static).update(error or "")
            return
        self.dismiss(chosen)

    @on(Button.Pressed, "#limit-cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)


FILES_CHROME = 10
"""Rows of the file picker around its tree: border, padding, title, summary, buttons."""
FILES_MIN = 4
"""Rows the file tree keeps however small the window (two lines and its border)."""


class FilesScreen(ModalScreen[frozenset[str] | None]):
    """Tick the files of a folder to fetch, before or during its download, in a tree:
    folders open and close, ticking a folder ticks everything under it. Returns the ticked
    relative paths (never none: a download wants at least one file), or None."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel"),
                Binding("a", "all", "All", show=False),
                Binding("n", "none", "None", show=False)]

    def __init__(self, name: str, files: Sequence[tuple[str, int]],
                 ticked: frozenset[str] | None = None, *, running: bool = False) -> None:
        super().__init__()
        self.folder_name = name
        self.index = FileIndex(files, ticked)
        """The files and their ticks (None ticked at first: every file)."""
        self.running = running
        """The download runs: the choice applies to it at once (else it starts with it)."""

    @classmethod
    def of(cls, manifest: Manifest, ticked: frozenset[str] | None = None, *,
           running: bool = False) -> FilesScreen:
        """The picker for the files of ``manifest``."""
        return cls(manifest.name, [(e.path, e.info.size) for e in manifest.entries], ticked,
                   running=running)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(f"Files of {self.folder_name}", classes="title", markup=False)
            yield FileTree(self.index, id="files-list")
            yield Static("", id="files-summary", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Apply" if self.running else "Fetch", variant="primary",
                             id="files-ok")
                yield Button("All", id="files-all")
                yield Button("None", id="files-none")
                yield Button("Cancel", id="files-cancel")

    def on_mount(self) -> None:
        self.query_one("#files-list", FileTree).focus()
        self._summarize()

    def on_resize(self) -> None:
        # The tree takes what the window leaves (a height: auto dialog cannot give it 1fr),
        # so the summary and the buttons stay on screen however many files there are.
        room = self.size.height - FILES_CHROME
        self.query_one("#files-list", FileTree).styles.max_height = max(FILES_MIN, room)

    def chosen(self) -> frozenset[str]:
        """The paths ticked now."""
        return self.index.chosen()

    @on(FileTree.Changed)
    def _summarize(self) -> None:
        index = self.index
        count, size = index.ticks(index.root)
        self.query_one("#files-summary", Static).update(
            f"{count:,} of {counted(len(index), 'file')}, {human_bytes(size)} of "
            f"{human_bytes(index.size_of(index.root))} · space ticks")
        self.query_one("#files-ok", Button).disabled = not count

    @on(Button.Pressed, "#files-all")
    def action_all(self) -> None:
        self.index.set_all(True)
        self.query_one("#files-list", FileTree).changed()

    @on(Button.Pressed, "#files-none")
    def action_none(self) -> None:
        self.index.set_all(False)
        self.query_one("#files-list", FileTree).changed()

    @on(Button.Pressed, "#files-ok")
    def _confirm(self) -> None:
        chosen = self.chosen()
        if chosen:
            self.dismiss(chosen)

    @on(Button.Pressed, "#files-cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Ask before something that cannot be undone (deleting a download's data) or that the
    person should choose (a new name). Back has the focus, so a stray enter does nothing."""

    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, title: str, body: str, confirm: str, *, danger: bool = False,
                 back: str = "Back") -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm = confirm
        self.danger = danger
        self.back = back

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog confirm"):
            yield Label(self.title_text, classes="title", markup=False)
            yield Static(self.body, id="confirm-body", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(self.confirm, variant="error" if self.danger else "primary",
                             id="confirm-ok")
                yield Button(self.back, id="confirm-back")

    def on_mount(self) -> None:
        self.query_one("#confirm-back", Button).focus()

    @on(Button.Pressed, "#confirm-ok")
    def _confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-back")
    def action_back(self) -> None:
        self.dismiss(False)


HELP_KEY_WIDTH = 7
"""Room for the widest key name shown (``ctrl+p``, ``escape``), right-aligned."""


class HelpScreen(ModalScreen[None]):
    """Every binding, by view, in two columns (the whole list fits 80x24)."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    @staticmethod
    def column(sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> Text:
        """Sections one under the other: a title, then key and description per line."""
        text = Text()
        for i, (title, bindings) in enumerate(sections):
            if i:
                text.append("\n")
            text.append(f"{title}\n", style="bold underline")
            for key, description in bindings:
                text.append(f"{key:>{HELP_KEY_WIDTH}}  ", style="bold #4e9af1")
                text.append(f"{description}\n")
        text.rstrip()
        return text

    def compose(self) -> ComposeResult:
        # Split where the two columns come out closest in height.
        heights = [len(b) + 2 for _, b in self.sections]
        split = min(range(1, len(self.sections) + 1),
                    key=lambda n: abs(sum(heights[:n]) - sum(heights[n:])))
        with Vertical(id="dialog", classes="dialog help"):
            yield Label("Keys", classes="title")
            with VerticalScroll(), Horizontal(id="help-columns"):
                yield Static(self.column(self.sections[:split]), id="help-left")
                yield Static(self.column(self.sections[split:]), id="help-right")
            yield Label("escape closes · ctrl+p opens the command palette", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
