"""A download's descriptor cache: bounded, never closing what a thread uses, and commits that
sync every file written since the last one, evicted or not."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from p2p.content import build_manifest
from p2p.identity import Identity
from p2p.store import Store
from p2p.store import partial as partial_module
from p2p.store.descriptors import MAX_OPEN_ENTRIES, DescriptorCache
from p2p.store.directio import DIRECT_MIN_BYTES

ME = Identity.generate()


def open_fds_under(path: Path) -> int:
    """This process's open descriptors on files under ``path``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        count += target.startswith(str(path) + "/")
    return count


def test_the_cache_holds_at_most_its_bound_and_never_closes_an_entry_in_use(tmp_path: Path) -> None:
    """Eight threads read 200 files through a cache of 4: a descriptor closed (and its number
    reused by another file) while a thread still used it would read another file's bytes."""
    for i in range(200):
        (tmp_path / f"f{i}").write_bytes(i.to_bytes(2, "big") * 512)
    opened = []

    def opener(entry: int, flags: int) -> int:
        opened.append(entry)
        return os.open(tmp_path / f"f{entry}", flags & ~os.O_CREAT)

    cache = DescriptorCache(opener, capacity=4)
    peak = 0
    peak_lock = threading.Lock()

    def work(seed: int) -> None:
        nonlocal peak
        rng = random.Random(seed)
        for _ in range(300):
            entry = rng.randrange(200)
            with cache.use(entry) as file:
                with peak_lock:
                    peak = max(peak, len(cache), cache.descriptors())
                for _ in range(3):
                    assert os.pread(file.fd, 2, rng.randrange(0, 1024, 2)) == entry.to_bytes(2, "big")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert peak <= 4 and len(cache) <= 4
    assert len(opened) > 200  # entries were evicted and opened again
    assert open_fds_under(tmp_path) == len(cache)
    cache.close()
    assert open_fds_under(tmp_path) == 0 and len(cache) == 0


def test_an_opener_that_fails_leaves_the_cache_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "there").write_bytes(b"x")
    names = {0: "there", 1: "missing"}
    cache = DescriptorCache(lambda entry, flags: os.open(tmp_path / names[entry], flags & ~os.O_CREAT), 1)
    with cache.use(0):
        pass
    with pytest.raises(FileNotFoundError), cache.use(1):
        pass
    assert len(cache) == 0  # the open entry was evicted to make room, and nothing took its place
    with cache.use(0) as file:
        assert os.pread(file.fd, 1, 0) == b"x"
    cache.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for i in range(3 * MAX_OPEN_ENTRIES):
        (root / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 5}" / f"f{i:03d}").write_bytes(bytes([i % 256]) * (1 + i * 37))
    (root / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    return root


def test_a_commit_syncs_exactly_the_files_written_since_the_last_one(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three times more files than the cache holds, written from four threads: the partial
    folder never has more than two descriptors per cache entry open, and each commit
    fdatasyncs every file written since the one before (reopened when evicted) and no other."""
    monkeypatch.setattr(partial_module, "sync_filesystem", lambda fd: False)  # one sync per file
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    monkeypatch.setattr(partial_module.os, "fdatasync", fdatasync)
    data = {rel: path.read_bytes() for rel, path in
            ((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())}
    manifest, _ = build_manifest(folder, ME)
    dest = tmp_path / "got"
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        cmap = partial.chunk_map
        peak = 0

        def write(index: int) -> None:
            nonlocal peak
            span = cmap.locate(index)
            body = data[manifest.entries[span.entry].path]
            partial.write_chunk(index, body[span.offset:span.offset + span.length])
            peak = max(peak, open_fds_under(partial.partial_path))

        def inode(entry: int) -> int:
            return os.stat(partial.partial_path / manifest.entries[entry].path).st_ino

        order = list(range(cmap.count))
        random.Random(5).shuffle(order)
        first, second = order[:len(order) // 2], order[len(order) // 2:]
        for batch in (first, second):
            synced.clear()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(write, batch))
            assert partial.commit() == len(batch)
            written = {inode(cmap.locate(i).entry) for i in batch}
            assert set(synced) == written
            assert len(synced) == len(written)  # once each
        assert peak <= 2 * MAX_OPEN_ENTRIES
        synced.clear()
        assert partial.commit() == 0 and synced == []  # nothing new: nothing synced
        partial.finalize()
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == data


def test_a_commit_of_many_files_syncs_their_file_system_once(
        tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(partial_module, "sync_filesystem", lambda fd: calls.append(fd) or True)
    monkeypatch.setattr(partial_module.os, "fdatasync", lambda fd: pytest.fail("fdatasync per file"))
    manifest, _ = build_manifest(folder, ME)
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "got")
        for index in range(partial.chunk_map.count):
            span = partial.chunk_map.locate(index)
            partial.write_chunk(index, (folder / manifest.entries[span.entry].path).read_bytes()
                                [span.offset:span.offset + span.length])
        assert partial.commit() == partial.chunk_map.count
        assert len(calls) == 1
        partial.close()


def test_a_folder_of_small_files_keeps_few_folders_open_and_writes_them_buffered(tmp_path: Path) -> None:
    """Small files spread over three times more folders than a download keeps open: at most
    MAX_OPEN_FOLDERS folder descriptors at any time, no O_DIRECT descriptor for a chunk under
    DIRECT_MIN_BYTES (a whole small file), the right bytes, and a finished folder served from
    its destination."""
    root = tmp_path / "src"
    count = 3 * partial_module.MAX_OPEN_FOLDERS
    for i in range(4 * count):
        (root / f"d{i % count:02d}" / "sub").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % count:02d}" / "sub" / f"f{i:03d}").write_bytes(os.urandom(4096))
    data = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    manifest, _ = build_manifest(root, ME)
    dest = tmp_path / "got"
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        cmap = partial.chunk_map
        order = list(range(cmap.count))
        random.Random(7).shuffle(order)
        peak_folders = 0
        for index in order:
            span = cmap.locate(index)
            assert span.length < DIRECT_MIN_BYTES
            body = data[manifest.entries[span.entry].path]
            partial.write_chunk(index, body[span.offset:span.offset + span.length])
            peak_folders = max(peak_folders, len(partial._folders))
            assert partial._files.descriptors() == len(partial._files)  # none direct
        assert peak_folders == partial_module.MAX_OPEN_FOLDERS
        assert partial.commit() == cmap.count
        partial.finalize()
        assert partial._folders == {}
        assert open_fds_under(dest) == 0
        last = manifest.entries[-1]
        assert store.read_chunk(manifest.content_id.digest, cmap.count - 1) == data[last.path]
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == data
