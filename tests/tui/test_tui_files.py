"""Ticking the files of a folder in the terminal app, before and during its download, against
a real seeder node on 127.0.0.1."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.widgets import Button, Input

from p2p.content.select import Selection
from p2p.node import Node
from p2p.store.chunks import ChunkMap
from p2p.swarm.download import Download
from tui.app import build_app
from tui.screens import FetchScreen, FilesScreen

from .conftest import make_file, node_config, wait_until

SIZE = (120, 36)
FILES = {"docs/a.txt": 300_000, "music/c.bin": 2 * 1024 * 1024, "top.bin": 1024 * 1024 + 1}
"""In manifest order (sorted paths): the picker lists them so."""


def make_folder(root: Path) -> Path:
    for i, (rel, size) in enumerate(FILES.items()):
        make_file(root / rel, size, seed=i + 1)
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_files_ticked_during_a_download_change_what_it_fetches(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last chunk of top.bin is held in its check, so the download still runs when the
    person opens the picker (t), ticks docs/a.txt (space) and applies."""
    src = make_folder(base / "files" / "album")
    release = threading.Event()
    check = Download._check_and_write
    hold = -1

    def held_check(self: Download, index: int, payload: Any) -> bool:
        if index == hold:
            release.wait(30)
        return check(self, index, payload)

    monkeypatch.setattr(Download, "_check_and_write", held_check)
    async with Node(node_config(base, "seed")) as seed:
        shared = await seed.share(src)
        cid = shared.content_id
        cmap = ChunkMap(shared.manifest)
        top = [i for i, e in enumerate(shared.manifest.entries) if e.path == "top.bin"]
        hold = max(cmap.chunks_of(top))
        app = build_app(node_config(base, "b"), refresh_interval=0.2)
        try:
            async with app.run_test(size=SIZE) as pilot:
                await wait_until(pilot, app.ready.is_set)
                assert app.node is not None
                assert app.start_fetch(str(shared.ticket), Selection.of_paths(["top.bin"])) == cid

                def running_one_file() -> bool:
                    download = app.node.download(cid) if app.node else None
                    return download is not None and download.selected_paths == ["top.bin"] \
                        and app.transfers.row(cid) is not None
                await wait_until(pilot, running_one_file, seconds=30)
                await pilot.pause()
                await pilot.press("t")
                await wait_until(pilot, lambda: isinstance(app.screen, FilesScreen))
                picker = app.screen
                assert isinstance(picker, FilesScreen)
                assert picker.chosen() == {"top.bin"}  # what the download wants now
                assert picker.query_one("#files-ok", Button).label.plain == "Apply"
                await pilot.press("space")  # the first row: the folder docs/, with a.txt in it
                assert picker.chosen() == {"docs/a.txt", "top.bin"}
                await pilot.click("#files-ok")
                download = app.node.download(cid)
                assert download is not None
                await wait_until(pilot, lambda: download.selected_paths == ["docs/a.txt", "top.bin"])
                release.set()

                def complete() -> bool:
                    info = app.node.library.download(cid) if app.node else None
                    return info is not None and info.state == "selected"
                await wait_until(pilot, complete, seconds=30)
                info = app.node.library.download(cid)
                assert info is not None
                assert files_under(info.dest) == {rel: (src / rel).read_bytes()
                                                  for rel in ("docs/a.txt", "top.bin")}

                # Stopped with two files in place: the picker ticks those; ticking the rest
                # resumes the download, which completes the folder.
                await wait_until(pilot, lambda: cid not in app.node.downloading() if app.node else False)
                await pilot.press("t")
                await wait_until(pilot, lambda: isinstance(app.screen, FilesScreen))
                assert isinstance(app.screen, FilesScreen)
                assert app.screen.chosen() == {"docs/a.txt", "top.bin"}
                assert app.screen.query_one("#files-ok", Button).label.plain == "Fetch"
                await pilot.click("#files-all")
                await pilot.click("#files-ok")

                def whole() -> bool:
                    done = app.node.library.download(cid) if app.node else None
                    return done is not None and done.state == "complete"
                await wait_until(pilot, whole, seconds=30)
                assert files_under(info.dest) == files_under(src)
        finally:
            release.set()


async def test_files_picked_before_the_download_are_the_only_ones_fetched(base: Path) -> None:
    src = make_folder(base / "files" / "album")
    async with Node(node_config(base, "seed")) as seed:
        shared = await seed.share(src)
        cid = shared.content_id
        app = build_app(node_config(base, "b"), refresh_interval=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, app.ready.is_set)
            assert app.node is not None
            await pilot.press("f")
            await wait_until(pilot, lambda: isinstance(app.screen, FetchScreen))
            app.screen.query_one("#fetch-input", Input).post_message(events.Paste(str(shared.ticket)))
            await wait_until(pilot, lambda: not app.screen.query_one("#fetch-pick", Button).disabled)
            await pilot.click("#fetch-pick")
            await wait_until(pilot, lambda: isinstance(app.screen, FilesScreen), seconds=30)
            picker = app.screen
            assert isinstance(picker, FilesScreen)
            assert picker.chosen() == set(FILES)  # every file ticked at first
            assert app.node.library.download(cid) is None  # only the listing so far
            await pilot.click("#files-none")
            assert picker.query_one("#files-ok", Button).disabled  # nothing ticked: no fetch
            picker.query_one("#files-list").focus()  # back from the button to the tree
            await pilot.press("down", "space")  # the second row: the folder music/
            assert picker.chosen() == {"music/c.bin"}
            await pilot.click("#files-ok")

            def done() -> bool:
                info = app.node.library.download(cid) if app.node else None
                return info is not None and info.state == "selected"
            await wait_until(pilot, done, seconds=30)
            info = app.node.library.download(cid)
            assert info is not None
            assert files_under(info.dest) == {"music/c.bin": (src / "music/c.bin").read_bytes()}
