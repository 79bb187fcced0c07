"""The file tree of the picker: the pure index (folders as ranges, ticks, counts) and the
widget driven by keys, lazily built for a listing of 100,000 files."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from textual.app import App
from textual.widgets import Button, Static

from tui.picker import PAGE, FileIndex, FileTree, Folder, More
from tui.screens import FilesScreen

FILES = [("music/live/03.flac", 5), ("docs/notes.txt", 20), ("music/01 intro.flac", 300),
         ("a.txt", 1), ("docs/guide.pdf", 10), ("music/02 theme.flac", 400), ("a-b/x", 2)]


def folder(index: FileIndex, path: str) -> Folder:
    node = index.root
    for name in path.split("/"):
        node = next(f for f in node.folders if f.name == name)
    return node


def under(index: FileIndex, f: Folder) -> set[str]:
    return set(index.paths[f.lo:f.hi])


def test_each_folder_is_the_range_of_the_files_under_it() -> None:
    index = FileIndex(FILES)
    assert [f.name for f in index.root.folders] == ["a-b", "docs", "music"]
    assert [index.name(i) for i in index.root.files] == ["a.txt"]
    music = folder(index, "music")
    assert under(index, music) == {"music/live/03.flac", "music/01 intro.flac", "music/02 theme.flac"}
    assert [f.path for f in music.folders] == ["music/live"]
    assert [index.name(i) for i in music.files] == ["01 intro.flac", "02 theme.flac"]
    assert index.size_of(music) == 705
    assert index.size_of(index.root) == sum(size for _, size in FILES)


def test_ticking_a_folder_ticks_everything_under_it_and_shows_partial_state_above() -> None:
    index = FileIndex(FILES, ticked=[])
    music = folder(index, "music")
    live = folder(index, "music/live")
    assert index.state(index.root) == "none"
    index.toggle(live)
    assert index.chosen() == {"music/live/03.flac"}
    assert index.state(live) == "all"
    assert index.state(music) == "some"
    assert index.ticks(music) == (1, 5)
    index.toggle(music)  # some ticked: the folder ticks whole
    assert index.chosen() == under(index, music)
    assert index.ticks(index.root) == (3, 705)
    index.toggle(music)  # all ticked: it unticks whole
    assert index.chosen() == frozenset()
    index.toggle(index.root.files[0])
    assert index.chosen() == {"a.txt"}
    index.set_all(True)
    assert index.chosen() == {p for p, _ in FILES}


def test_ticked_at_first_are_the_given_paths_or_every_file() -> None:
    assert FileIndex(FILES).chosen() == {p for p, _ in FILES}
    assert FileIndex(FILES, ["docs/guide.pdf", "not/there"]).chosen() == {"docs/guide.pdf"}


_names = st.sampled_from(["a", "b", "a.b", "a-b", "a b", "z"])


@given(st.lists(st.lists(_names, min_size=1, max_size=4).map("/".join), max_size=30, unique=True))
def test_the_folders_cover_every_file_once_whatever_the_names(paths: list[str]) -> None:
    # A name cannot be both a file and a folder in one listing.
    paths = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
    index = FileIndex([(p, 1) for p in paths])
    seen: list[str] = []

    def walk(f: Folder) -> None:
        assert under(index, f) == {p for p in paths if p.startswith(f.path + "/") or not f.path}
        seen.extend(index.paths[i] for i in f.files)
        for sub in f.folders:
            walk(sub)

    walk(index.root)
    assert sorted(seen) == sorted(paths)


class Picker(App[None]):
    CSS_PATH = "../../tui/app.tcss"

    def __init__(self, screen: FilesScreen) -> None:
        super().__init__()
        self.picker = screen
        self.result: Any = "not yet"

    def on_mount(self) -> None:
        def done(value: Any) -> None:
            self.result = value
        self.push_screen(self.picker, done)


def summary(screen: FilesScreen) -> str:
    return str(screen.query_one("#files-summary", Static).render())


async def test_keys_open_folders_and_tick_them() -> None:
    screen = FilesScreen("album", FILES, frozenset())
    app = Picker(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        tree = screen.query_one(FileTree)
        assert screen.query_one("#files-ok", Button).disabled  # nothing ticked
        assert [n.data.name for n in tree.root.children if isinstance(n.data, Folder)] == \
            ["a-b", "docs", "music"]
        await pilot.press("down", "down")  # music/
        assert isinstance(tree.cursor_node.data, Folder) and tree.cursor_node.data.name == "music"
        assert not tree.cursor_node.children  # nothing built before it opens
        await pilot.press("right")
        assert [str(n.label) for n in tree.cursor_node.children] == \
            ["live", "01 intro.flac", "02 theme.flac"]
        await pilot.press("down", "space")  # music/live/: everything under it
        assert screen.chosen() == {"music/live/03.flac"}
        assert "1 of 7 files" in summary(screen)
        assert not screen.query_one("#files-ok", Button).disabled
        await pilot.press("left")  # from live/ (closed) to its parent
        assert tree.cursor_node.data.name == "music"
        await pilot.press("space")  # partly ticked: the whole folder
        assert screen.chosen() == {"music/live/03.flac", "music/01 intro.flac", "music/02 theme.flac"}
        await pilot.press("n")
        assert screen.chosen() == frozenset()
        await pilot.press("a")
        assert "7 of 7 files" in summary(screen)
        await pilot.click("#files-ok")
        assert app.result == {p for p, _ in FILES}


@pytest.mark.parametrize("flat", [True, False], ids=["one-folder", "nested"])
async def test_a_listing_of_100000_files_builds_only_what_is_opened(flat: bool) -> None:
    count = 100_000
    files = [(f"all/{i:06d}.bin" if flat else f"d{i % 10}/e{i % 100}/{i:06d}.bin", i % 7)
             for i in range(count)]
    screen = FilesScreen("big", files)
    app = Picker(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        tree = screen.query_one(FileTree)
        assert len(tree.root.children) == (1 if flat else 10)
        await pilot.press("enter")  # open the first folder
        first = tree.root.children[0]
        shown = first.children
        if flat:
            assert len(shown) == PAGE + 1  # one page and a "more" line
            more = shown[-1]
            assert isinstance(more.data, More) and f"{count - PAGE:,} more" in str(more.label)
            tree.move_cursor(more)
            await pilot.press("enter")
            assert len(first.children) == 2 * PAGE + 1
        else:
            assert len(shown) == 10  # its ten folders, none of them opened
            assert all(not n.children for n in shown)
        tree.move_cursor(first)
        await pilot.press("space")  # untick the folder: everything under it
        under_first = count if flat else count // 10
        assert len(screen.chosen()) == count - under_first
        assert f"{count - under_first:,} of {count:,} files" in summary(screen)
