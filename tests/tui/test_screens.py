"""Dialogs, help and the command palette, without a node."""

from __future__ import annotations

from textual.command import CommandList
from textual.widgets import Button, Input

from tui.screens import FetchScreen, HelpScreen, check_target

from .conftest import wait_until
from .test_snapshots import MOVIE, feed, fixed_app

SIZE = (120, 36)


async def test_palette_opens_fetch_dialog() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        await feed(pilot)
        names = [name for name, _, _ in app.palette_commands()]
        assert "Share a file or folder" in names and "Fetch by id or ticket" in names
        assert "Pause movie.mkv" in names
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"fetch by id")
        hits = app.screen.query_one(CommandList)
        await wait_until(pilot, lambda: hits.option_count > 0 and hits.highlighted is not None)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, FetchScreen))


async def test_fetch_dialog_enables_on_valid_id() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        screen = app.screen
        assert isinstance(screen, FetchScreen)
        button = screen.query_one("#fetch-ok", Button)
        assert button.disabled
        screen.query_one(Input).value = str(MOVIE)
        await pilot.pause()
        assert not button.disabled
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)


def test_check_target() -> None:
    assert check_target(str(MOVIE)) is None
    assert check_target("") is not None
    assert check_target("hello") is not None
