"""Shares are served in place, re-verified on every read, and dropped once they change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.content import FileEntry, FileInfo, build_manifest, hash_bytes, sign_manifest
from p2p.errors import ContentChanged, NotFound
from p2p.identity import Identity
from p2p.store import ChunkMap, Store, bit_count, full_bitfield

from .storeproc import CHUNK, make_bytes

ME = Identity.generate()


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture
def shared_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = make_bytes(4 * 1024 * 1024 + 777, seed=3)
    path = tmp_path / "data" / "movie.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    return path, data


@pytest.fixture
def shared_dir(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "album"
    content = {
        "a.bin": make_bytes(3 * CHUNK + 5, seed=10),
        "empty.txt": b"",
        "sub/b.bin": make_bytes(CHUNK, seed=11),
        "sub/deeper/c.bin": make_bytes(2 * CHUNK - 1, seed=12),
        "sub/deeper/zz-empty": b"",
    }
    for rel, data in content.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, content


def test_a_shared_file_is_served_in_place_chunk_by_chunk(tmp_path: Path, shared_file) -> None:
    path, data = shared_file
    manifest, files = build_manifest(path, ME)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        assert store.bitfield(cid) is None
        store.add_share(manifest, files, root=path)
        count, bits = store.bitfield(cid)
        assert count == manifest.chunk_count == 65
        assert bits == full_bitfield(count) and bit_count(bits) == count
        served = b"".join(store.read_chunk(cid, i) for i in range(count))
        assert served == data
        with pytest.raises(NotFound):
            store.read_chunk(cid, count)
        [info] = store.shares()
        assert (info.content_id, info.origin, info.size, info.root) == (
            manifest.content_id, "shared", len(data), path.resolve())
        assert store.manifest(cid) == manifest.encode()
    # Served in place: nothing the size of the file was copied into the state directory.
    assert tree_size(tmp_path / "state") < 512 * 1024 < len(data)


def test_a_shared_directory_is_served_whole_and_file_by_file(tmp_path: Path, shared_dir) -> None:
    root, content = shared_dir
    manifest, files = build_manifest(root, ME)
    assert [e.path for e in manifest.entries] == sorted(content)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=root)
        count, bits = store.bitfield(cid)
        assert count == 4 + 1 + 2 and bits == full_bitfield(count)
        whole = b"".join(store.read_chunk(cid, i) for i in range(count))
        assert whole == b"".join(content[e.path] for e in manifest.entries)
        for entry in manifest.entries:
            fid = entry.content_id.digest
            n, fbits = store.bitfield(fid)
            assert n == entry.info.chunk_count and fbits == full_bitfield(n)
            assert b"".join(store.read_chunk(fid, i) for i in range(n)) == content[entry.path]
    assert tree_size(tmp_path / "state") < 512 * 1024


def rewrite_keeping_mtime(path: Path, offset: int) -> None:
    """Change one byte in place, same size, and put the old timestamps back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def change_size(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def change_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))


@pytest.mark.parametrize("change", ["bytes", "size", "mtime"])
def test_a_changed_file_raises_content_changed_and_the_share_is_dropped(
        tmp_path: Path, shared_file, change: str) -> None:
    path, data = shared_file
    manifest, files = build_manifest(path, ME)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=path)
        assert store.read_chunk(cid, 7) == data[7 * CHUNK:8 * CHUNK]
        {"bytes": lambda p: rewrite_keeping_mtime(p, 7 * CHUNK + 100),
         "size": change_size, "mtime": change_mtime}[change](path)
        with pytest.raises(ContentChanged, match="changed since it was shared"):
            store.read_chunk(cid, 7)
        assert store.shares() == []
        assert not store.is_shared(cid)
        assert store.bitfield(cid) is None
        assert store.manifest(cid) is None
        with pytest.raises(NotFound):
            store.read_chunk(cid, 0)
    with Store(tmp_path / "state") as store:  # dropped for good, not only in memory
        assert store.shares() == []


class HashCount:
    """Counts the chunk hashes the store computes while serving (FileInfo.verify_chunk)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = FileInfo.verify_chunk

        def counted(info: FileInfo, index: int, data: bytes) -> bool:
            self.calls += 1
            return real(info, index, data)

        monkeypatch.setattr(FileInfo, "verify_chunk", counted)


def test_an_untouched_shared_file_is_served_without_hashing_it_again(
        tmp_path: Path, shared_file, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = shared_file
    manifest, files = build_manifest(path, ME)
    cid = manifest.content_id.digest
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=path)
        hashes = HashCount(monkeypatch)
        n = manifest.entries[0].info.chunk_count
        assert b"".join(store.read_chunk(cid, i) for i in range(n)) == data
        assert hashes.calls == 0
        # A chmod moves the ctime, not the bytes: still served, each chunk checked first.
        path.chmod(0o600)
        assert store.read_chunk(cid, 3) == data[3 * CHUNK:4 * CHUNK]
        assert hashes.calls == 1 and store.is_shared(cid)


def test_a_file_of_a_shared_directory_that_changes_drops_the_directory(tmp_path: Path, shared_dir) -> None:
    root, content = shared_dir
    manifest, files = build_manifest(root, ME)
    entry = next(e for e in manifest.entries if e.path == "sub/deeper/c.bin")
    with Store(tmp_path / "state") as store:
        store.add_share(manifest, files, root=root)
        rewrite_keeping_mtime(root / entry.path, CHUNK + 3)
        assert store.read_chunk(entry.content_id.digest, 0) == content[entry.path][:CHUNK]
        with pytest.raises(ContentChanged):
            store.read_chunk(entry.content_id.digest, 1)
        assert store.shares() == []
        assert store.bitfield(entry.content_id.digest) is None
        assert store.bitfield(manifest.content_id.digest) is None


def test_sharing_a_file_that_is_not_what_was_hashed_is_refused(tmp_path: Path, shared_file) -> None:
    path, _ = shared_file
    manifest, files = build_manifest(path, ME)
    change_size(path)
    with Store(tmp_path / "state") as store:
        with pytest.raises(ContentChanged):
            store.add_share(manifest, files, root=path)
        assert store.shares() == []


# -- the pure part: chunk numbering ---------------------------------------------------------


@given(st.lists(st.integers(0, 3 * CHUNK + 1), min_size=1, max_size=6))
def test_chunk_map_covers_every_byte_once(sizes: list[int]) -> None:
    entries = [FileEntry(f"f{i}", hash_bytes(b"\0" * size)) for i, size in enumerate(sizes)]
    cmap = ChunkMap(sign_manifest(ME, "dir", "d", entries))
    assert cmap.count == sum(e.info.chunk_count for e in entries)
    covered: dict[int, int] = {}
    for index in range(cmap.count):
        span = cmap.locate(index)
        entry, local = cmap.local(index)
        assert entry == span.entry and span.offset == local * entries[entry].info.chunk_size
        assert sizes[span.entry] > 0 and span.length > 0
        assert covered.get(span.entry, 0) == span.offset
        covered[span.entry] = span.offset + span.length
        assert cmap.verify(index, b"\0" * span.length)
        assert not cmap.verify(index, b"\1" * span.length)
    assert covered == {i: s for i, s in enumerate(sizes) if s}
    for outside in (-1, cmap.count):
        with pytest.raises(IndexError):
            cmap.locate(outside)
