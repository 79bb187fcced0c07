"""The Library view shows a share whose files changed or vanished as such (its rows carry
the status ``Library.share_health`` found)."""

from __future__ import annotations

import os
from pathlib import Path

from textual.app import App, ComposeResult
from textual.widgets import DataTable

from p2p import ContentId
from tui.model import LibraryRow
from tui.widgets import LibraryView


class _LibraryOnly(App[None]):
    def compose(self) -> ComposeResult:
        yield LibraryView()


def _row_text(table: DataTable[object], key: str) -> str:
    return " ".join(str(cell) for cell in table.get_row(key))


async def test_changed_and_missing_shares_say_so_and_ok_ones_do_not() -> None:
    ok, changed, missing = (ContentId(os.urandom(32)) for _ in range(3))
    app = _LibraryOnly()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(LibraryView)
        view.rows = (LibraryRow(ok, "fine.txt", 10, "shared", status="ok"),
                     LibraryRow(changed, "notes.txt", 10, "shared", status="changed"),
                     LibraryRow(missing, "album", 10, "shared", status="missing"),
                     LibraryRow(ContentId(os.urandom(32)), "old.bin", 10, "downloaded"))
        await pilot.pause()
        table = view.query_one(DataTable)
        assert "shared, changed" in _row_text(table, str(changed))
        assert "shared, missing" in _row_text(table, str(missing))
        fine = _row_text(table, str(ok))
        assert "shared" in fine and "changed" not in fine and "missing" not in fine


async def test_the_app_marks_a_share_whose_file_changed(tmp_path: Path) -> None:
    """The app's own node shares a file; once the file is rewritten (same size, new bytes),
    the app's next health check shows the share as changed in the Library."""
    from tui.app import build_app

    from .conftest import make_file, node_config, wait_until

    source = make_file(tmp_path / "files" / "notes.bin", 64 * 1024)
    app = build_app(node_config(tmp_path, "a"), refresh_interval=0.2)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, app.ready.is_set)
        node = app.node
        assert node is not None
        cid = (await node.share(source)).content_id
        await wait_until(pilot, lambda: app.health.get(cid) == "ok")
        table = app.main.query_one(LibraryView).query_one(DataTable)
        assert "changed" not in _row_text(table, str(cid))
        source.write_bytes(os.urandom(64 * 1024))
        os.utime(source, (1, 1))  # a new mtime, whatever the clock's resolution
        app.check_health()
        await wait_until(pilot, lambda: app.health.get(cid) == "changed")
        await wait_until(pilot, lambda: "shared, changed" in _row_text(table, str(cid)))
