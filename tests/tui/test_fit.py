"""The terminal app at 80x24, the smallest common terminal: every dialog on screen with its
buttons, footers that keep Help and Quit, whole state words, keys that mean one thing."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Button, DirectoryTree, Label

from p2p import DownloadFailed, DownloadInfo
from tui.app import NodeEvents, P2PApp, cancel_question
from tui.model import Transfers
from tui.screens import FetchScreen, FilesScreen, HelpScreen, ShareScreen
from tui.widgets import LibraryView, LogView, StatusLine, StatusPart, TransfersView, transfer_detail

from .conftest import wait_until
from .test_snapshots import (
    BROKEN,
    BROKEN_REASON,
    LOST,
    MIB,
    MOVIE,
    album,
    failed_events,
    feed,
    fixed_app,
)

SMALL = (80, 24)


def screen_lines(app: App[Any]) -> list[str]:
    """The screen as plain text, one string per row."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().rstrip("\n").split("\n")


def assert_buttons_on_screen(app: App[Any]) -> None:
    """Every button of the top screen is drawn whole inside the window."""
    width, height = app.size
    buttons = list(app.screen.query(Button))
    assert buttons
    for button in buttons:
        region = button.region
        assert region.width > 0 and region.height > 0, button
        assert region.x >= 0 and region.y >= 0, button
        assert region.right <= width and region.bottom <= height, (button, region)


def test_keys_mean_one_thing_everywhere() -> None:
    """No key does one thing in one view and another elsewhere (f fetched in one tab and
    filtered the log in another)."""
    actions: dict[str, set[str]] = {}
    for owner in (P2PApp, LibraryView, TransfersView, LogView):
        for binding in owner.BINDINGS:
            assert not isinstance(binding, tuple)
            for key in binding.key.split(","):
                actions.setdefault(key, set()).add(binding.action)
    clashes = {key: acts for key, acts in actions.items() if len(acts) > 1}
    assert clashes == {}
    assert actions["f"] == {"fetch"}


@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5"])
async def test_footer_keeps_help_and_quit(key: str) -> None:
    app = fixed_app()
    async with app.run_test(size=SMALL) as pilot:
        await feed(pilot)
        await pilot.press(key)
        await pilot.pause()
        lines = screen_lines(app)
        footer = lines[-1]
        for part in ("s Share", "f Fetch", "? Help", "q Quit"):
            assert part in footer, footer
        view_keys = {"1": "c Ticket", "2": "x Cancel", "5": "e Level"}
        if key in view_keys:
            assert view_keys[key] in footer, footer
        # The status line keeps every figure, in short forms.
        assert lines[0].strip() == ("peer aeaqcaib · 0.0.0.0:7473 · 2 shared · 1 fetching · "
                                    "3 conn · 68 DHT")


def test_status_line_shortens_then_drops_from_the_end() -> None:
    status = StatusLine()
    status.show([StatusPart("peer abc", "peer abc"), StatusPart("2 shared", "2 shared"),
                 StatusPart("3 connections", "3 conn"), StatusPart("68 DHT contacts", "68 DHT")])
    assert status.line(200) == "peer abc · 2 shared · 3 connections · 68 DHT contacts"
    assert status.line(40) == "peer abc · 2 shared · 3 conn · 68 DHT"
    assert status.line(30) == "peer abc · 2 shared · 3 conn"
    assert status.line(5) == "peer…"
    status.say("stopping…")
    assert status.line(80) == "stopping…"


async def test_transfer_states_are_whole_words_and_not_found_is_no_full_bar() -> None:
    app = fixed_app()
    async with app.run_test(size=SMALL) as pilot:
        await feed(pilot)
        app.on_node_events(NodeEvents(failed_events()))
        await pilot.press("2")
        view = app.main.query_one(TransfersView)
        view.select(BROKEN)
        await pilot.pause()
        lines = screen_lines(app)
        header = next(i for i, line in enumerate(lines) if "State" in line and "Name" in line)
        rows = lines[header + 1: header + 4]
        assert [r.split()[-1] for r in rows] == ["active", "failed", "failed"]
        lost = next(r for r in rows if LOST.short() in r)
        assert "█" not in lost and "100" not in lost
        # The detail pane has the failed transfer's whole reason, wrapped, not cut.
        text = " ".join(line.strip() for line in lines[header + 4:])
        assert f"failed: {BROKEN_REASON}" in text


def test_not_found_row_knows_nothing() -> None:
    transfers = Transfers()
    assert transfers.apply(DownloadFailed(LOST, "not found: nobody has it", 3))
    row = transfers.row(LOST)
    assert row is not None
    assert not row.size_known and row.fraction == 0.0 and row.name == LOST.short()
    assert "not found: nobody has it" in transfer_detail(row).plain


async def test_x_asks_about_the_selected_row() -> None:
    """x on the second of two transfers names the second (the app's question follows)."""
    app = fixed_app()
    asked: list[Any] = []
    async with app.run_test(size=SMALL) as pilot:
        await feed(pilot)
        app.on_node_events(NodeEvents(failed_events()))
        app.transfer_action = lambda action, cid: asked.append((action, cid))  # type: ignore[method-assign]
        await pilot.press("2")
        view = app.main.query_one(TransfersView)
        view.select(BROKEN)
        await pilot.pause()
        await pilot.press("x")
        await wait_until(pilot, lambda: bool(asked))
        assert asked == [("cancel", BROKEN)]


def test_cancel_question_says_what_goes() -> None:
    info = DownloadInfo(MOVIE, "movie.mkv", 300 * MIB, 300, 200, "active",
                        Path("/dl/movie.mkv"), Path("/dl/movie.mkv.p2p-partial"), None)
    question, deletes = cancel_question(MOVIE, None, info, True)
    assert deletes and question.danger and "/dl/movie.mkv.p2p-partial" in question.body
    done = DownloadInfo(MOVIE, "movie.mkv", 300 * MIB, 300, 300, "complete",
                        Path("/dl/movie.mkv"), Path("/dl/movie.mkv.p2p-partial"), None)
    question, deletes = cancel_question(MOVIE, None, done, False)
    assert not deletes and not question.danger
    assert question.body == "Nothing on disk is deleted: /dl/movie.mkv stays."


async def open_dialog(pilot: Pilot[Any], which: str) -> None:
    app = pilot.app
    if which == "files":
        app.push_screen(FilesScreen.of(album(40)[1]))
    elif which == "question":
        info = DownloadInfo(MOVIE, "movie.mkv", 300 * MIB, 300, 200, "active",
                            Path("/dl/movie.mkv"), Path("/dl/movie.mkv.p2p-partial"), None)
        app.push_screen(cancel_question(MOVIE, None, info, True)[0])
    else:
        await pilot.press(which)
    await pilot.pause()


@pytest.mark.parametrize("which", ["s", "f", "files", "question"])
async def test_dialog_buttons_fit(which: str, tmp_path: Path) -> None:
    app = fixed_app(tmp_path)
    async with app.run_test(size=SMALL) as pilot:
        await feed(pilot)
        await open_dialog(pilot, which)
        assert_buttons_on_screen(app)


async def test_help_fits_whole() -> None:
    app = fixed_app()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = "\n".join(screen_lines(app))
        for section, _ in app.help_sections():
            assert section in text
        for line in ("x  Cancel the selected download", "e  Cycle the level filter",
                     "escape closes"):
            assert line in text


async def test_share_picker_opens_at_the_current_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here)
    app = fixed_app()  # no picker root: the current folder when the picker opens
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ShareScreen))
        screen = app.screen
        assert isinstance(screen, ShareScreen)
        assert screen.folder() == here
        await pilot.click("#share-up")
        assert screen.folder() == tmp_path
        assert Path(screen.query_one(DirectoryTree).path) == tmp_path
        title = screen.query_one("#share-title", Label).content
        assert str(title).endswith(str(tmp_path)), title
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ShareScreen))
        assert not isinstance(app.screen, FetchScreen)


async def test_log_level_key_works_with_the_level_select_focused() -> None:
    app = fixed_app()
    async with app.run_test(size=SMALL) as pilot:
        await feed(pilot)
        await pilot.press("5")
        await pilot.pause()
        log = app.main.query_one(LogView)
        assert log.level == "info"
        await pilot.press("e")
        assert log.level == "warning"
        assert [e.level for e in log.shown_entries()] == ["warning"]
