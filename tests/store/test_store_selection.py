"""Some files of a folder: only they are written and put in place; a wider download later
takes them back, checks them again and completes the rest (real files, real SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.content import Manifest, build_manifest
from p2p.content.select import Selection
from p2p.errors import StoreError
from p2p.identity import Identity
from p2p.store import Store

from .storeproc import CHUNK, Child, chunk_bytes, make_bytes, save_manifest, set_bits

ME = Identity.generate()

CONTENT = {"a/big.bin": make_bytes(3 * CHUNK + 7, 1), "a/empty": b"", "b.bin": make_bytes(2 * CHUNK, 2),
           "c/d/e.txt": make_bytes(5 * CHUNK + 1, 3), "z.txt": b"tiny"}


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Manifest]:
    src = tmp_path / "src" / "photos"
    for rel, blob in CONTENT.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(blob)
    manifest, _ = build_manifest(src, ME)
    return src, manifest


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_selected_files_alone_are_put_in_place_and_a_wider_download_reuses_them(
        tmp_path: Path, folder: tuple[Path, Manifest]) -> None:
    src, manifest = folder
    dest = tmp_path / "dl" / "photos"
    selection = Selection(include=("a/**",))
    picked = selection.check(manifest)
    assert [manifest.entries[i].path for i in picked] == ["a/big.bin", "a/empty"]
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest, selected=picked)
        wanted = partial.chunk_map.chunks_of(picked)
        for i in wanted:
            partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
        # A chunk of a file that is not selected (unticked while in flight): not whole, so it
        # must not land at the destination as a torn file, nor be lost.
        [c_entry] = [i for i, e in enumerate(manifest.entries) if e.path == "c/d/e.txt"]
        stray = partial.chunk_map.chunks_of([c_entry])[0]
        partial.write_chunk(stray, chunk_bytes(partial.chunk_map, src, stray))
        partial.commit()
        assert partial.selection_complete and not partial.complete
        assert not (partial.partial_path / "b.bin").exists()  # never created
        assert partial.finalize() == dest.resolve()
        assert files_under(dest) == {"a/big.bin": CONTENT["a/big.bin"], "a/empty": b""}
        assert not (dest / "c").exists() and not (dest / "b.bin").exists()
        # The torn file waits aside, in the partial folder, alone.
        assert set(files_under(partial.partial_path)) == {"c/d/e.txt"}
        [info] = store.downloads()
        assert info.state == "selected" and info.dest == dest.resolve()
        _, bits = store.recorded_bitfield(manifest.content_id)
        assert set_bits(bits) == {*wanted, stray}
        assert store.shares() == []  # some files only: not served as the content

    # A later run wants everything: the files in place stay where they are and are checked
    # again there, the one set aside is checked in the partial folder, and only the rest is
    # written, in the partial folder (which holds nothing else) until it is whole.
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "ignored")
        assert partial.dest == dest.resolve() and partial.resumed
        assert sorted(partial.recover()) == sorted([*wanted, stray])  # checked, not trusted
        assert files_under(dest) == {"a/big.bin": CONTENT["a/big.bin"], "a/empty": b""}
        missing = [i for i in range(partial.chunk_map.count) if not partial.has(i)]
        assert set(missing).isdisjoint([*wanted, stray])
        for i in missing:
            partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
        assert set(files_under(partial.partial_path)) == {"b.bin", "c/d/e.txt", "z.txt"}
        assert files_under(dest) == {"a/big.bin": CONTENT["a/big.bin"], "a/empty": b""}
        # Served while it runs: a chunk of a file in place is read (and checked) there.
        assert store.read_chunk(manifest.content_id.digest, wanted[0]) == \
            chunk_bytes(partial.chunk_map, src, wanted[0])
        partial.finalize()
        assert files_under(dest) == CONTENT
        assert not partial.partial_path.exists()
        [info] = store.downloads()
        assert info.state == "complete"
        [share] = store.shares()
        assert share.root == dest.resolve()


def test_a_selection_whose_folder_was_deleted_resumes_from_what_is_left(
        tmp_path: Path, folder: tuple[Path, Manifest]) -> None:
    """The record says the selected files are in place, but the person deleted them: nothing
    recorded is trusted, the set-aside file is found again, the rest is fetched."""
    src, manifest = folder
    dest = tmp_path / "dl" / "photos"
    picked = Selection(include=("z.txt",)).check(manifest)
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest, selected=picked)
        for i in partial.chunk_map.chunks_of(picked):
            partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
        [b_entry] = [i for i, e in enumerate(manifest.entries) if e.path == "b.bin"]
        b0 = partial.chunk_map.chunks_of([b_entry])[0]
        partial.write_chunk(b0, chunk_bytes(partial.chunk_map, src, b0))
        partial.finalize()
    (dest / "z.txt").unlink()
    dest.rmdir()
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        assert set_bits(bytes(partial.bits)) == set()  # the record is not taken on trust
        assert partial.recover() == [b0]
        partial.close()


def test_a_file_changed_in_place_is_fetched_again_not_trusted(
        tmp_path: Path, folder: tuple[Path, Manifest]) -> None:
    src, manifest = folder
    dest = tmp_path / "dl" / "photos"
    picked = Selection(include=("b.bin", "z.txt")).check(manifest)
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest, selected=picked)
        for i in partial.chunk_map.chunks_of(picked):
            partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
        partial.finalize()
    (dest / "b.bin").write_bytes(b"x" * CHUNK + CONTENT["b.bin"][CHUNK:])  # chunk 0 edited
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        found = partial.recover()
        [b_entry] = [i for i, e in enumerate(manifest.entries) if e.path == "b.bin"]
        b0, b1 = partial.chunk_map.chunks_of([b_entry])
        assert b1 in found and b0 not in found
        partial.close()


def test_finalize_before_the_selected_files_are_whole_is_refused(
        tmp_path: Path, folder: tuple[Path, Manifest]) -> None:
    src, manifest = folder
    picked = Selection(include=("b.bin",)).check(manifest)
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "dl" / "photos", selected=picked)
        first = partial.chunk_map.chunks_of(picked)[0]
        partial.write_chunk(first, chunk_bytes(partial.chunk_map, src, first))
        with pytest.raises(StoreError, match="before every chunk"):
            partial.finalize()
        partial.select(None)
        assert not partial.selection_complete
        partial.close()


def test_a_wider_download_killed_midway_keeps_the_files_in_place_and_resumes(
        tmp_path: Path, folder: tuple[Path, Manifest]) -> None:
    """A real process fetching the rest of a folder whose selected files are in place is
    SIGKILLed: the files in place (and one the person added) are still there, and the next
    run completes the folder without losing them."""
    src, manifest = folder
    dest = tmp_path / "dl" / "photos"
    picked = Selection(include=("a/**",)).check(manifest)
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest, selected=picked)
        for i in partial.chunk_map.chunks_of(picked):
            partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
        partial.finalize()
    (dest / "mine.txt").write_text("mine")
    with Child("widen", tmp_path / "state", save_manifest(manifest, tmp_path / "m"), src, dest) as child:
        assert child.line().startswith("written ")
        child.kill()
    assert (dest / "mine.txt").read_text() == "mine"
    assert (dest / "a" / "big.bin").read_bytes() == CONTENT["a/big.bin"]
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        partial.recover()
        for i in range(partial.chunk_map.count):
            if not partial.has(i):
                partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
        partial.finalize()
        [info] = store.downloads()
        assert info.state == "complete"
    assert files_under(dest) == {**CONTENT, "mine.txt": b"mine"}


def test_deleting_a_cancelled_wider_download_keeps_what_was_in_place(
        tmp_path: Path, folder: tuple[Path, Manifest]) -> None:
    src, manifest = folder
    dest = tmp_path / "dl" / "photos"
    picked = Selection(include=("b.bin",)).check(manifest)
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest, selected=picked)
        for i in partial.chunk_map.chunks_of(picked):
            partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
        partial.finalize()
        partial = store.open_download(manifest, dest)
        partial.recover()
        missing = [i for i in range(partial.chunk_map.count) if not partial.has(i)]
        partial.write_chunk(missing[0], chunk_bytes(partial.chunk_map, src, missing[0]))
        partial.commit()
        (partial.partial_path / "not-mine.txt").write_text("x")
        partial.close()
        assert store.remove_download(manifest.content_id) == partial.partial_path
    assert files_under(dest) == {"b.bin": CONTENT["b.bin"]}
    assert files_under(partial.partial_path) == {"not-mine.txt": b"x"}  # not its own: left
