"""Pause, resume and cancel a running download through the Transfers tab's key bindings,
against a real seeder node on 127.0.0.1. Cancelling asks first (it deletes data)."""

from __future__ import annotations

import filecmp
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from p2p.content import ContentId
from p2p.node import Node
from p2p.store import PARTIAL_SUFFIX
from p2p.swarm.download import Download
from tui.app import P2PApp, build_app
from tui.model import TransferRow
from tui.screens import ConfirmScreen
from tui.widgets import TransfersView

from .conftest import make_file, node_config, wait_until

SIZE = (120, 36)
FILE_SIZE = 128 * 1024 * 1024  # 1024 chunks of 128 KiB: still running when the key is pressed


@asynccontextmanager
async def fetching(base: Path) -> AsyncIterator[tuple[P2PApp, Pilot[None], ContentId, Path]]:
    """A seeder node sharing a large file, and an app that has started fetching it."""
    source = make_file(base / "files" / "big.bin", FILE_SIZE)
    async with Node(node_config(base, "seed")) as seed:
        boot = (("127.0.0.1", seed.port),)
        app = build_app(node_config(base, "b", boot), refresh_interval=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, app.ready.is_set)
            result = await seed.share(source)
            cid = result.content_id
            assert app.start_fetch(str(result.ticket)) == cid
            view = app.main.query_one(TransfersView)
            table = view.query_one(DataTable)

            def running_and_selected() -> bool:
                row = app.transfers.row(cid)
                return (row is not None and row.done_chunks > 0 and view.selected() == cid
                        and table.has_focus)

            await wait_until(pilot, running_and_selected, seconds=30)
            assert app.main.query_one("#tabs").active == "transfers"
            yield app, pilot, cid, source


@contextmanager
def last_chunk_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold the check of the download's last chunk until the event is set (at the latest
    when the block ends), so the download is still running while the question before a
    cancel is open (it would otherwise finish in the meantime on a fast machine). Set it
    before the nodes close: they wait for the held check."""
    release = threading.Event()
    check = Download._check_and_write

    def held_check(self: Download, index: int, payload: Any) -> bool:
        partial = self.partial
        if partial is not None and index == partial.chunk_map.count - 1:
            release.wait(60)
        return check(self, index, payload)

    monkeypatch.setattr(Download, "_check_and_write", held_check)
    try:
        yield release
    finally:
        release.set()


async def wait_for_pushes(app: P2PApp, pilot: Pilot[None], count: int) -> list[tuple[TransferRow, ...]]:
    """Let the app push its transfer rows to the view ``count`` more times (refreshes, events)."""
    view = app.main.query_one(TransfersView)
    pushes: list[tuple[TransferRow, ...]] = []
    view.watch(view, "rows", lambda rows: pushes.append(rows), init=False)
    await wait_until(pilot, lambda: len(pushes) >= count, seconds=30)
    return pushes


async def confirm_cancel(app: P2PApp, pilot: Pilot[None], answer: str) -> str:
    """Press x, wait for the question, answer it (``confirm-ok`` or ``confirm-back``);
    returns the question's text."""
    await pilot.press("x")
    await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    screen = app.screen
    body = str(screen.query_one("#confirm-body", Static).content)
    await pilot.click(f"#{answer}")
    await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
    return body


def row_of(app: P2PApp, cid: ContentId) -> TransferRow:
    row = app.transfers.row(cid)
    assert row is not None
    return row


async def test_pause_stops_chunks_then_resume_completes(base: Path) -> None:
    async with fetching(base) as (app, pilot, cid, source):
        node = app.node
        assert node is not None

        await pilot.press("p")

        def paused() -> bool:
            info = node.library.download(cid)
            row = app.transfers.row(cid)
            return (info is not None and info.state == "paused" and cid not in node.downloading()
                    and row is not None and row.state == "paused")

        await wait_until(pilot, paused, seconds=30)
        info = node.library.download(cid)
        assert info is not None
        held = info.done_chunks
        assert 0 < held < info.chunks, "the download finished before the pause key took effect"

        # No chunk arrives while paused: count several pushes of the rows to the view
        # (one per refresh) and check the progress never moves.
        pushes = await wait_for_pushes(app, pilot, 5)
        seen = [r.done_chunks for rows in pushes for r in rows if r.content_id == cid]
        assert len(seen) == len(pushes) and set(seen) == {held}
        assert row_of(app, cid).state == "paused"
        info = node.library.download(cid)
        assert info is not None and info.state == "paused" and info.done_chunks == held
        assert node.downloading() == set()

        await pilot.press("r")

        def complete() -> bool:
            info = node.library.download(cid)
            row = app.transfers.row(cid)
            return (info is not None and info.state == "complete"
                    and row is not None and row.state == "complete")

        await wait_until(pilot, complete, seconds=60)
        info = node.library.download(cid)
        assert info is not None
        assert filecmp.cmp(info.dest, source, shallow=False)
        assert not info.dest.with_name(info.dest.name + PARTIAL_SUFFIX).exists()
        assert row_of(app, cid).done_chunks == info.chunks


async def test_cancel_deletes_partial_data_and_forgets_the_download(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with last_chunk_held(monkeypatch) as release:
        await cancel_deletes_partial_data(base, release)


async def cancel_deletes_partial_data(base: Path, release: threading.Event) -> None:
    async with fetching(base) as (app, pilot, cid, _):
        node = app.node
        assert node is not None
        info = node.library.download(cid)
        assert info is not None
        partial, dest = info.partial, info.dest
        assert partial == dest.with_name(dest.name + PARTIAL_SUFFIX)
        assert partial.exists()

        body = await confirm_cancel(app, pilot, "confirm-ok")
        assert "partial data is deleted" in body and str(partial) in body

        await wait_until(pilot, lambda: node.library.download(cid) is None
                         and not partial.exists() and cid not in node.downloading(), seconds=30)
        assert not dest.exists()
        assert node.library.downloads() == []

        # Several refreshes later it has not come back on disk or in the store.
        await wait_for_pushes(app, pilot, 5)
        assert node.library.download(cid) is None
        assert node.downloading() == set()
        assert not partial.exists() and not dest.exists()
        release.set()


async def test_cancel_removes_the_transfer_from_the_view(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with last_chunk_held(monkeypatch) as release:
        await cancel_removes_the_row(base, release)


async def cancel_removes_the_row(base: Path, release: threading.Event) -> None:
    async with fetching(base) as (app, pilot, cid, _):
        node = app.node
        assert node is not None

        await confirm_cancel(app, pilot, "confirm-ok")

        await wait_until(pilot, lambda: node.library.download(cid) is None, seconds=30)
        await wait_for_pushes(app, pilot, 5)
        assert app.transfers.row(cid) is None
        assert app.transfers.rows() == []
        assert app.main.query_one(TransfersView).query_one(DataTable).row_count == 0
        release.set()


async def test_cancel_answered_back_keeps_the_download(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with last_chunk_held(monkeypatch) as release:
        await back_keeps_the_download(base, release)


async def back_keeps_the_download(base: Path, release: threading.Event) -> None:
    async with fetching(base) as (app, pilot, cid, _):
        node = app.node
        assert node is not None
        info = node.library.download(cid)
        assert info is not None

        body = await confirm_cancel(app, pilot, "confirm-back")
        assert "big.bin" in body or str(info.partial) in body

        # Still running and its partial data still there, through several refreshes.
        await wait_for_pushes(app, pilot, 3)
        assert cid in node.downloading()
        assert info.partial.exists()
        assert app.transfers.row(cid) is not None
        release.set()
