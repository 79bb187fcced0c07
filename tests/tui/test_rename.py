"""A fetch refused at its destination (a different file is already there) offers the app's
own way out: a dialog to save it beside as ``NAME (1).EXT``, or cancel. Against a real
seeder node on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path

from textual.widgets import Button

from p2p.node import Node
from tui.app import P2PApp, Refusal, build_app
from tui.screens import ConfirmScreen

from .conftest import make_file, node_config, wait_until

SIZE = (80, 24)


def test_the_refusal_is_read_from_the_nodes_message() -> None:
    error = ("/dl/notes.bin already exists and is not this content; not overwriting it. Fetch "
             "with --rename to save it as 'notes (1).bin', or give another place with -o")
    refusal = Refusal.of(error)
    assert refusal == Refusal("/dl/notes.bin already exists and is not this content",
                              "notes (1).bin")
    assert "--rename" not in refusal.reason and "-o" not in refusal.reason
    assert refusal.reason.endswith("(r offers to save it as 'notes (1).bin')")
    quoted = Refusal.of(error.replace("'notes (1).bin'", '"it\'s (1).bin"'))
    assert quoted is not None and quoted.new_name == "it's (1).bin"
    assert Refusal.of("not found: no peer provides it") is None
    assert Refusal.of("/dl/x appeared while this download was stopped and holds something "
                      "else; move it away and fetch again") is None


def dialog_of(app: P2PApp) -> ConfirmScreen | None:
    screen = app.screen
    return screen if isinstance(screen, ConfirmScreen) else None


async def test_a_refused_fetch_offers_a_new_name(tmp_path: Path) -> None:
    """The app's download folder holds a different notes.bin: the fetch is refused, the
    Transfers detail gives the app's way out (no command-line flags), the dialog offers
    "Rename to notes (1).bin"; Cancel leaves it failed and r asks again; the rename then
    downloads beside the other file, which stays as it was."""
    source = make_file(tmp_path / "files" / "notes.bin", 256 * 1024)
    config = node_config(tmp_path, "b")
    other = make_file(config.download_dir / "notes.bin", 1000, seed=2)
    async with Node(node_config(tmp_path, "seed")) as seed:
        result = await seed.share(source)
        cid = result.content_id
        app = build_app(config, refresh_interval=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, app.ready.is_set)
            assert app.start_fetch(str(result.ticket)) == cid
            await wait_until(pilot, lambda: dialog_of(app) is not None, seconds=30)
            dialog = dialog_of(app)
            assert dialog is not None
            await wait_until(pilot, lambda: bool(dialog.query("#confirm-back")))  # composed
            back = dialog.query_one("#confirm-back", Button)
            assert str(dialog.query_one("#confirm-ok", Button).label) == "Rename to notes (1).bin"
            assert str(back.label) == "Cancel"
            row = app.transfers.row(cid)
            assert row is not None and row.state == "failed" and row.error is not None
            assert "--rename" not in row.error and "r offers to save it as" in row.error
            await wait_until(pilot, lambda: app.focused is back)  # a stray enter renames nothing
            await pilot.press("enter")
            await wait_until(pilot, lambda: dialog_of(app) is None)
            await pilot.pause(0.5)  # a refresh or two: the store's row says the app's reason too
            row = app.transfers.row(cid)
            assert row is not None and row.error is not None and "--rename" not in row.error
            assert not (config.download_dir / "notes (1).bin").exists()

            await pilot.press("2", "r")  # resume: as it was it would be refused, so it asks
            await wait_until(pilot, lambda: dialog_of(app) is not None)
            again = dialog_of(app)
            assert again is not None
            await wait_until(pilot, lambda: bool(again.query("#confirm-back"))
                             and app.focused is again.query_one("#confirm-back"))
            await pilot.press("shift+tab", "enter")  # from Cancel to the rename
            renamed = config.download_dir / "notes (1).bin"

            def done() -> bool:
                row = app.transfers.row(cid)
                return row is not None and row.state == "complete"

            await wait_until(pilot, done, seconds=30)
            assert filecmp.cmp(renamed, source, shallow=False)
            assert other.stat().st_size == 1000  # the other file is untouched
            await app.action_quit()


def test_a_stored_refusal_reads_as_the_apps_own() -> None:
    """A download the store records as refused (a resumed one whose place was taken): the
    app's reason in Transfers, and r offers the new name."""
    from p2p import ContentId, DownloadInfo, NodeConfig

    cid = ContentId(bytes([4]) * 32)
    error = ("/dl/a.bin already exists and is not this content; not overwriting it. Fetch "
             "with --rename to save it as 'a (1).bin', or give another place with -o")
    info = DownloadInfo(cid, "a.bin", 10, 1, 0, "failed", Path("/dl/a.bin"),
                        Path("/dl/a.bin.part"), error)
    app = build_app(NodeConfig(state_dir=Path("/nonexistent/state")), start_node=False)
    shown = app._stored_refusal(info)
    assert shown.error is not None and "--rename" not in shown.error
    assert app._refused[cid].new_name == "a (1).bin"
    other = dataclasses.replace(info, error="integrity: chunk 0 failed")
    assert app._stored_refusal(other) is other
