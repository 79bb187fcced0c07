"""The Library view shows a share whose files changed or vanished as such (its rows carry
the status ``Library.share_health`` found)."""

from __future__ import annotations

import os

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
