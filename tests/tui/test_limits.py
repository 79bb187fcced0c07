"""Bandwidth limits in the terminal app: the rate flags through the one settings builder,
the limits dialog (b) on the app's own node, and the limits in the status line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Static

from p2p import BadInput, ConfigFile, config_path, load_config, save_config, set_config_value
from tui.app import P2PApp, build_app, limits_part
from tui.config import config_from_args
from tui.link import Limits
from tui.screens import LimitScreen, check_rate
from tui.widgets import StatusLine

from .conftest import node_config, wait_until

KIB = 1024
MIB = 1024 * 1024
SIZE = (80, 24)


async def open_limits(app: P2PApp, pilot: Pilot[None]) -> LimitScreen:
    """Press b and wait for the limits dialog, its upload field focused (composed)."""
    await pilot.press("b")
    await wait_until(pilot, lambda: isinstance(app.screen, LimitScreen)
                     and app.focused is not None and app.focused.id == "limit-up")
    dialog = app.screen
    assert isinstance(dialog, LimitScreen)
    return dialog


def test_rate_flags_win_over_environment_over_the_config_file(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    path = config_path(env)
    save_config(set_config_value(ConfigFile(path, {}), "max_upload_rate", "1MiB/s"), path)
    save_config(set_config_value(load_config(path), "max_download_rate", "2MiB/s"), path)
    state = ["--state-dir", str(tmp_path / "s")]
    from_file = config_from_args(state, env)
    assert (from_file.max_upload_rate, from_file.max_download_rate) == (1 * MIB, 2 * MIB)
    from_env = config_from_args(state, env | {"P2P_MAX_UPLOAD_RATE": "3M"})
    assert (from_env.max_upload_rate, from_env.max_download_rate) == (3 * MIB, 2 * MIB)
    flagged = config_from_args([*state, "--max-upload-rate", "5MiB/s", "--max-download-rate", "0"],
                               env | {"P2P_MAX_UPLOAD_RATE": "3M"})
    assert (flagged.max_upload_rate, flagged.max_download_rate) == (5 * MIB, 0)
    with pytest.raises(BadInput, match=r"^--max-upload-rate: expected a rate"):
        config_from_args([*state, "--max-upload-rate", "fast"], env)


def test_rates_as_typed_in_the_dialog() -> None:
    assert check_rate("5MiB/s", "upload") == (5 * MIB, None)
    assert check_rate("0", "upload") == (0.0, None)
    assert check_rate("unlimited", "download") == (0.0, None)
    rate, error = check_rate("fast", "download")
    assert rate is None and error is not None and error.startswith("download: expected a rate")
    rate, error = check_rate("  ", "upload")
    assert rate is None and error == "upload: type a rate such as 5MiB/s, or 0 for no limit"


def test_the_status_line_names_only_the_limits_that_are_set() -> None:
    assert limits_part(None) is None
    assert limits_part(Limits()) is None
    up = limits_part(Limits(up=5 * MIB))
    assert up is not None and up.long == "limits up 5.0 MiB/s" and up.short == "↑5.0 MiB/s"
    both = limits_part(Limits(up=5 * MIB, down=512 * KIB))
    assert both is not None
    assert both.long == "limits up 5.0 MiB/s, down 512.0 KiB/s"
    assert both.short == "↑5.0 MiB/s ↓512.0 KiB/s"


async def test_the_limit_dialog_shows_and_sets_the_nodes_limits(tmp_path: Path) -> None:
    """b opens the dialog with the node's limits (the upload one from its config); a bad
    rate is named inline and not sent; a good one applies to the node at once and shows in
    the status line; 0 removes it."""
    config = dataclasses.replace(node_config(tmp_path, "a"), max_upload_rate=1 * MIB)
    app = build_app(config, refresh_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, app.ready.is_set)
        node = app.node
        assert node is not None
        status = app.main.query_one(StatusLine)
        await wait_until(pilot, lambda: "↑1.0 MiB/s" in status.line(78))

        dialog = await open_limits(app, pilot)
        up, down = dialog.query_one("#limit-up", Input), dialog.query_one("#limit-down", Input)
        assert (up.value, down.value) == ("1.0 MiB/s", "unlimited")
        down.value = "fast"
        await pilot.pause()
        error = dialog.query_one("#limit-error", Static)
        assert "download: expected a rate" in str(error.render())
        assert dialog.query_one("#limit-ok", Button).disabled
        down.focus()
        await wait_until(pilot, lambda: app.focused is down)
        await pilot.press("enter")  # refused: the dialog stays, nothing is sent
        await pilot.pause()
        assert app.screen is dialog and node.limits()["down"]["rate"] == 0
        down.value = "512K"
        await pilot.pause()
        assert str(error.render()) == "" and not dialog.query_one("#limit-ok", Button).disabled
        await pilot.press("enter")  # the field's enter is Set's
        await wait_until(pilot, lambda: node.limits()["down"]["rate"] == 512 * KIB)
        assert node.limits()["up"]["rate"] == 1 * MIB  # left as it was: not changed
        await wait_until(pilot, lambda: "limits up 1.0 MiB/s, down 512.0 KiB/s" in status.line(200))
        assert any("limits set: upload 1.0 MiB/s, download 512.0 KiB/s" in e.message
                   for e in app.main.query_one("#log-view").entries)  # type: ignore[attr-defined]

        dialog = await open_limits(app, pilot)
        dialog.query_one("#limit-up", Input).value = "0"
        await pilot.press("enter")
        await wait_until(pilot, lambda: node.limits()["up"]["rate"] == 0)
        assert node.limits()["down"]["rate"] == 512 * KIB
        await wait_until(pilot, lambda: "↑" not in status.line(200) and "↓512.0" in status.line(78))


async def test_escape_leaves_the_limits_as_they_were(tmp_path: Path) -> None:
    app = build_app(node_config(tmp_path, "a"), refresh_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, app.ready.is_set)
        assert isinstance(app, P2PApp) and app.node is not None
        dialog = await open_limits(app, pilot)
        dialog.query_one("#limit-up", Input).value = "5M"
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, LimitScreen))
        assert app.node.limits()["up"]["rate"] == 0
