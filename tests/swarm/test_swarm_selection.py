"""Fetching some files of a folder between real nodes (127.0.0.1, port 0, real SQLite): only
their chunks cross the network, a later fetch completes the rest without sending any chunk
twice, and a running download's selection can change."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from p2p.content import manifest as manifest_module
from p2p.content.manifest import LISTED_FORMAT_VERSION
from p2p.content.select import Selection
from p2p.errors import BadInput
from p2p.events import ChunkUploaded, DownloadCompleted, DownloadFailed, DownloadStarted, Event
from p2p.node import Node
from p2p.store.chunks import ChunkMap
from p2p.store.partial import PartialDownload
from p2p.swarm.download import Download

from .conftest import MiB, drain, make_file, node_config, running_nodes, wait_for

FILES = {"docs/a.txt": 300_000, "docs/deep/b.bin": 2 * MiB + 5, "docs/deep/skip.tmp": 200_000,
         "music/c.bin": 3 * MiB, "top.bin": 1 * MiB + 1, "empty": 0}


def make_folder(root: Path) -> Path:
    for i, (rel, size) in enumerate(FILES.items()):
        make_file(root / rel, size, seed=i + 1)
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def uploaded(events: list[Event], cid: bytes) -> list[int]:
    """The chunks of ``cid`` the seeder sent, in order (duplicates kept)."""
    return [e.index for e in events if isinstance(e, ChunkUploaded) and e.content_id == cid]


def chunks_of(seed: Node, cid: Any, paths: set[str]) -> set[int]:
    manifest = seed._store.get_manifest(cid)
    assert manifest is not None
    cmap = ChunkMap(manifest)
    return set(cmap.chunks_of([i for i, e in enumerate(manifest.entries) if e.path in paths]))


async def test_include_exclude_fetch_only_those_files_and_a_second_fetch_only_the_rest(
        tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src" / "album")
    selection = Selection(include=("docs/**", "top.bin"), exclude=("**/*.tmp",))
    picked = {"docs/a.txt", "docs/deep/b.bin", "top.bin"}
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(src)
        cid = shared.content_id
        dest = tmp_path / "out" / "album"
        with seed.events.subscribed() as up:
            first = await dl.fetch(cid, dest, peers=[seed.listen_address()], selection=selection)
            sent_first = uploaded(drain(up), cid.digest)
        assert first.path == dest.resolve() and not first.complete and first.files == 3
        assert files_under(dest) == {rel: (src / rel).read_bytes() for rel in picked}
        assert not (tmp_path / "out" / "album.p2p-partial").exists()
        want = chunks_of(seed, cid, picked)
        assert sorted(sent_first) == sorted(want)  # exactly the selected files' chunks, once each
        assert first.fetched_chunks == len(want)
        [info] = dl.library.downloads()
        assert info.state == "selected"
        assert not dl._store.is_shared(cid)  # some files only: not served as the content

        # Everything now: the three files already here are checked again, not fetched.
        with seed.events.subscribed() as up:
            second = await dl.fetch(cid, peers=[seed.listen_address()])
            sent_second = uploaded(drain(up), cid.digest)
        assert second.path == dest.resolve() and second.complete
        assert files_under(dest) == files_under(src)
        rest = set(range(shared.manifest.chunk_count)) - want
        assert sorted(sent_second) == sorted(rest)  # no chunk sent twice over both fetches
        assert second.fetched_chunks == len(rest)
        [info] = dl.library.downloads()
        assert info.state == "complete" and dl._store.is_shared(cid)


async def test_a_selection_already_in_place_is_not_fetched_again(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src" / "album")
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        cid = (await seed.share(src)).content_id
        dest = tmp_path / "out"  # does not exist: the folder lands at exactly this path
        await dl.fetch(cid, dest, peers=[seed.listen_address()],
                       selection=Selection(include=("music",)))
        assert files_under(dest) == {"music/c.bin": (src / "music/c.bin").read_bytes()}
        with seed.events.subscribed() as up:
            again = await dl.fetch(cid, dest, peers=[seed.listen_address()],
                                   selection=Selection(include=("music/c.bin",)))
            assert uploaded(drain(up), cid.digest) == []
        assert again.local and again.path == dest.resolve() and again.fetched_chunks == 0


async def test_a_pattern_that_matches_nothing_is_refused_and_nothing_is_written(
        tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src" / "album")
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        cid = (await seed.share(src)).content_id
        with pytest.raises(BadInput, match=r"--include '\*\.jpg' matches no file of album"):
            await dl.fetch(cid, tmp_path / "out", peers=[seed.listen_address()],
                           selection=Selection(include=("*.jpg",)))
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.p2p-partial").exists()


async def test_files_ticked_during_a_download_are_fetched_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last chunk of the first selection is held in its check: the download is still
    running when the selection widens, so the new file can only arrive through select()."""
    src = make_folder(tmp_path / "src" / "album")
    release = threading.Event()
    check = Download._check_and_write
    hold = -1

    def held_check(self: Download, index: int, payload: Any) -> bool:
        if index == hold:
            release.wait(30)
        return check(self, index, payload)

    monkeypatch.setattr(Download, "_check_and_write", held_check)
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(src)
        cid = shared.content_id
        hold = max(chunks_of(seed, cid, {"top.bin"}))
        with dl.events.subscribed() as sub, seed.events.subscribed() as up:
            fetch = asyncio.create_task(dl.fetch(cid, tmp_path / "out", peers=[seed.listen_address()],
                                                 selection=Selection.of_paths(["top.bin"])))
            try:
                await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                download = dl.download(cid)
                assert download is not None and download.selected_paths == ["top.bin"]
                with pytest.raises(BadInput, match="has no file 'nope'"):
                    dl.select(cid, ["nope"])
                assert download.selected_paths == ["top.bin"]  # unchanged by the bad one
                dl.select(cid, ["top.bin", "docs/a.txt"])
                assert download.selected_paths == ["docs/a.txt", "top.bin"]
                release.set()
                result = await fetch
            finally:
                release.set()
                fetch.cancel()
            sent = uploaded(drain(up), cid.digest)
    assert files_under(result.path) == {rel: (src / rel).read_bytes()
                                        for rel in ("top.bin", "docs/a.txt")}
    assert sorted(sent) == sorted(chunks_of(seed, cid, {"top.bin", "docs/a.txt"}))


async def test_a_file_of_a_folder_is_streamed_alone(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src" / "album")
    out = bytearray()

    async def write(data: Any) -> None:
        out.extend(data)

    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        cid = (await seed.share(src)).content_id
        with seed.events.subscribed() as up:
            result = await dl.stream(str(cid), write, tmp_path / "kept",
                                     peers=[seed.listen_address()], file="docs/deep/b.bin")
            sent = uploaded(drain(up), cid.digest)
        with pytest.raises(BadInput, match="has no file 'docs/nope'"):
            await dl.stream(str(cid), write, tmp_path / "kept2", peers=[seed.listen_address()],
                            file="docs/nope")
    assert bytes(out) == (src / "docs/deep/b.bin").read_bytes()
    assert sorted(sent) == sorted(chunks_of(seed, cid, {"docs/deep/b.bin"}))
    assert files_under(result.path) == {"docs/deep/b.bin": bytes(out)}


async def test_some_files_of_a_listed_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder too large for one manifest (its listing fetched in chunks): the globs pick from
    the listing's paths, and only those files' chunks are sent."""
    monkeypatch.setattr(manifest_module, "INLINE_ENTRIES_MAX_BYTES", 1024)
    src = tmp_path / "src" / "many"
    for i in range(400):
        make_file(src / f"d{i % 4}" / f"f{i:03d}.bin", 1000 + i, seed=i + 1)
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        shared = await seed.share(src)
        manifest = seed._store.get_manifest(shared.content_id)
        assert manifest is not None and manifest.version == LISTED_FORMAT_VERSION
        cid = shared.content_id
        with seed.events.subscribed() as up:
            result = await dl.fetch(cid, tmp_path / "out", peers=[seed.listen_address()],
                                    selection=Selection(include=("d1/**",), exclude=("**/f0*",)))
            sent = uploaded(drain(up), cid.digest)
    picked = {p.relative_to(src).as_posix() for p in src.glob("d1/*") if not p.name.startswith("f0")}
    assert len(picked) == 100 - 25
    assert files_under(result.path) == {rel: (src / rel).read_bytes() for rel in picked}
    assert sorted(sent) == sorted(chunks_of(seed, cid, picked))


async def test_files_ticked_while_a_resumed_download_checks_its_files_are_the_ones_put_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed download checks every file on disk again before its transfer starts (seconds
    for a large folder); the person may change the ticks meanwhile. The files put in place
    are the ones ticked last, and the download completes with them."""
    src = make_folder(tmp_path / "src" / "album")
    entered, release = threading.Event(), threading.Event()
    recover = PartialDownload.recover

    def held_recover(self: PartialDownload) -> list[int]:
        entered.set()
        release.wait(30)
        return recover(self)

    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        cid = (await seed.share(src)).content_id
        peers = [seed.listen_address()]
        dest = tmp_path / "out" / "album"
        await dl.fetch(cid, dest, peers=peers, selection=Selection.of_paths(["music/c.bin"]))
        monkeypatch.setattr(PartialDownload, "recover", held_recover)
        fetch = asyncio.create_task(dl.fetch(cid, dest, peers=peers,
                                             selection=Selection.of_paths(["docs/a.txt"])))
        try:
            await asyncio.to_thread(entered.wait, 30)
            assert entered.is_set()
            dl.select(cid, ["top.bin"])  # while the files are checked
            release.set()
            result = await fetch
        finally:
            release.set()
            fetch.cancel()
    assert not result.complete
    assert files_under(result.path) == {rel: (src / rel).read_bytes()
                                        for rel in ("music/c.bin", "top.bin")}


async def test_a_selection_deleted_or_cut_short_since_it_was_placed_is_fetched_again(
        tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src" / "album")
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        cid = (await seed.share(src)).content_id
        peers = [seed.listen_address()]
        dest = tmp_path / "out" / "album"
        picked = Selection.of_paths(["docs/a.txt", "music/c.bin"])
        await dl.fetch(cid, dest, peers=peers, selection=picked)
        (dest / "music" / "c.bin").unlink()  # the person deleted one,
        os.truncate(dest / "docs" / "a.txt", 1000)  # and cut another short
        again = await dl.fetch(cid, dest, peers=peers, selection=picked)
    assert not again.local and again.fetched_chunks > 0
    assert files_under(dest) == {rel: (src / rel).read_bytes() for rel in ("docs/a.txt", "music/c.bin")}


async def test_cancelling_a_wider_fetch_keeps_the_files_an_earlier_fetch_put_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_folder(tmp_path / "src" / "album")
    release = threading.Event()
    check = Download._check_and_write
    hold = -1

    def held_check(self: Download, index: int, payload: Any) -> bool:
        if index == hold:
            release.wait(30)
        return check(self, index, payload)

    monkeypatch.setattr(Download, "_check_and_write", held_check)
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        cid = (await seed.share(src)).content_id
        peers = [seed.listen_address()]
        dest = tmp_path / "out" / "album"
        await dl.fetch(cid, dest, peers=peers, selection=Selection.of_paths(["music/c.bin"]))
        (dest / "notes.txt").write_text("mine")  # the folder is the person's now
        hold = min(chunks_of(seed, cid, {"top.bin"}))
        with dl.events.subscribed() as sub:
            fetch = asyncio.create_task(dl.fetch(cid, dest, peers=peers,
                                                 selection=Selection.of_paths(["top.bin"])))
            try:
                await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                await dl.cancel(cid)
            finally:
                release.set()
                fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
    assert (dest / "notes.txt").read_text() == "mine"
    assert (dest / "music" / "c.bin").read_bytes() == (src / "music" / "c.bin").read_bytes()


async def test_ticks_changed_while_the_files_are_put_in_place_are_not_reported_as_fetched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wanted chunk is in and the files are being moved into place: a change of ticks
    now cannot change what lands, so the result says what did land."""
    src = make_folder(tmp_path / "src" / "album")
    entered, release = threading.Event(), threading.Event()
    finalize = PartialDownload.finalize

    def held_finalize(self: PartialDownload) -> Path:
        entered.set()
        release.wait(30)
        return finalize(self)

    monkeypatch.setattr(PartialDownload, "finalize", held_finalize)
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed", "dl"]) as (seed, dl):
        cid = (await seed.share(src)).content_id
        fetch = asyncio.create_task(dl.fetch(cid, tmp_path / "out", peers=[seed.listen_address()],
                                             selection=Selection.of_paths(["top.bin"])))
        try:
            await asyncio.to_thread(entered.wait, 30)
            assert entered.is_set()
            dl.select(cid, ["top.bin", "music/c.bin"])
            release.set()
            result = await fetch
        finally:
            release.set()
            fetch.cancel()
    assert files_under(result.path) == {"top.bin": (src / "top.bin").read_bytes()}
    assert (result.files, result.size) == (1, FILES["top.bin"])


async def test_a_selected_download_resumed_by_a_restarted_node_fetches_only_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The selection is recorded with the download: a node that starts again and resumes it
    (issue 15's resume at start) asks for those files only, not the whole folder."""
    src = make_folder(tmp_path / "src" / "album")
    release = threading.Event()
    check = Download._check_and_write
    hold = -1

    def held_check(self: Download, index: int, payload: Any) -> bool:
        if index == hold:
            release.wait(30)
        return check(self, index, payload)

    monkeypatch.setattr(Download, "_check_and_write", held_check)
    picked = {"docs/a.txt", "top.bin"}
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed"]) as (seed,):
        cid = (await seed.share(src)).content_id
        dest = tmp_path / "out" / "album"
        hold = max(chunks_of(seed, cid, {"top.bin"}))
        async with Node(node_config(tmp_path, "dl")) as dl:
            with dl.events.subscribed() as sub:
                fetch = asyncio.create_task(dl.fetch(cid, dest, peers=[seed.listen_address()],
                                                     selection=Selection.of_paths(picked)))
                try:
                    await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                    assert await dl.pause(cid)
                finally:
                    release.set()
                    fetch.cancel()
            dl.mark_resumable(cid)
        with seed.events.subscribed() as up:
            dl = Node(node_config(tmp_path, "dl", resume_downloads=True))
            with dl.events.subscribed() as sub:
                async with dl:
                    assert dl.resumed == [cid]
                    await wait_for(sub, lambda e: isinstance(e, DownloadCompleted | DownloadFailed))
                    await dl.join(cid)
                    [info] = dl.library.downloads()
            sent = uploaded(drain(up), cid.digest)
    assert info.state == "selected"
    assert files_under(dest) == {rel: (src / rel).read_bytes() for rel in picked}
    assert set(sent) <= chunks_of(seed, cid, picked)  # nothing of the other files


async def test_p2p_resume_of_a_paused_selected_download_on_a_restarted_node_fetches_only_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``p2p resume ID`` (Node.resume, what the control socket calls) on a node started again
    asks for the recorded selection, not the whole folder."""
    src = make_folder(tmp_path / "src" / "album")
    release = threading.Event()
    check = Download._check_and_write
    hold = -1

    def held_check(self: Download, index: int, payload: Any) -> bool:
        if index == hold:
            release.wait(30)
        return check(self, index, payload)

    monkeypatch.setattr(Download, "_check_and_write", held_check)
    picked = {"docs/a.txt", "top.bin"}
    async with asyncio.timeout(60), running_nodes(tmp_path, ["seed"]) as (seed,):
        cid = (await seed.share(src)).content_id
        dest = tmp_path / "out" / "album"
        hold = max(chunks_of(seed, cid, {"top.bin"}))
        async with Node(node_config(tmp_path, "dl")) as dl:
            with dl.events.subscribed() as sub:
                fetch = asyncio.create_task(dl.fetch(cid, dest, peers=[seed.listen_address()],
                                                     selection=Selection.of_paths(picked)))
                try:
                    await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                    assert await dl.pause(cid)
                finally:
                    release.set()
                    fetch.cancel()
        with seed.events.subscribed() as up:
            dl = Node(node_config(tmp_path, "dl", resume_downloads=True))
            with dl.events.subscribed() as sub:
                async with dl:
                    assert dl.resumed == []  # paused: not resumed by itself
                    assert dl.resume(cid) == "paused"
                    await wait_for(sub, lambda e: isinstance(e, DownloadCompleted | DownloadFailed))
                    await dl.join(cid)
                    [info] = dl.library.downloads()
            sent = uploaded(drain(up), cid.digest)
    assert info.state == "selected"
    assert files_under(dest) == {rel: (src / rel).read_bytes() for rel in picked}
    assert set(sent) <= chunks_of(seed, cid, picked)  # nothing of the other files
