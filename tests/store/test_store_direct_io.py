"""Direct I/O where the file system allows it, buffered writes where it does not, right bytes either way."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from p2p.buffers import AlignedPool
from p2p.content import build_manifest
from p2p.identity import Identity
from p2p.store import Store

from .storeproc import CHUNK, make_bytes, mounted

ME = Identity.generate()


def direct_fds(path: Path) -> list[int]:
    """This process's open descriptors on ``path`` that have O_DIRECT set (from /proc/self/fdinfo)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") != str(path):
                continue
            with open(f"/proc/self/fdinfo/{name}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
            if flags & os.O_DIRECT:
                found.append(int(name))
    return found


def accepts_o_direct(directory: Path) -> bool:
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
    except OSError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()
    os.close(fd)
    return True


def download_all(state: Path, src: Path, dest: Path) -> tuple[bytes, list[int]]:
    """Download ``src`` into ``dest`` chunk by chunk; return the result and the O_DIRECT fds seen."""
    data = src.read_bytes()
    manifest, _ = build_manifest(src, ME)
    with Store(state) as store:
        partial = store.open_download(manifest, dest)
        seen: list[int] = []
        for index in range(manifest.chunk_count):
            span = partial.chunk_map.locate(index)
            partial.write_chunk(index, data[span.offset:span.offset + span.length])
            seen = seen or direct_fds(partial.partial_path)  # opened with the first aligned write
        assert partial.commit() == manifest.chunk_count
        partial.finalize()
        assert store.read_chunk(manifest.content_id.digest, 0) == data[:CHUNK]
    return dest.read_bytes(), seen


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(make_bytes(9 * CHUNK + 1717, seed=21))  # the short last chunk is unaligned
    return path


def test_writes_are_direct_on_a_disk_file_system(tmp_path: Path, src: Path) -> None:
    if not accepts_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    got, seen = download_all(tmp_path / "state", src, tmp_path / "dl.bin")
    assert seen, "no O_DIRECT descriptor on the partial file"
    assert got == src.read_bytes()


@pytest.mark.parametrize("fstype", ["tmpfs", "ramfs"])
def test_a_download_onto_a_memory_file_system_writes_the_right_bytes(
        tmp_path: Path, src: Path, fstype: str) -> None:
    """tmpfs takes O_DIRECT on recent kernels (6.6+) and refuses it on older ones; ramfs always
    refuses it, so there the buffered fallback is what writes every chunk."""
    with mounted(fstype, tmp_path / "mnt") as mnt:
        direct_ok = accepts_o_direct(mnt)
        got, seen = download_all(tmp_path / "state", src, mnt / "dl.bin")
        assert got == src.read_bytes()
        assert bool(seen) == direct_ok
        if fstype == "ramfs":
            assert not direct_ok and not seen


def test_an_aligned_chunk_is_written_straight_from_its_buffer(tmp_path: Path, src: Path) -> None:
    """A received chunk sits page-aligned in its frame buffer (p2p.buffers): the direct write
    takes it as it is; only an unaligned one is copied into the writer's aligned buffer."""
    if not accepts_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    data = src.read_bytes()
    manifest, _ = build_manifest(src, ME)
    pool = AlignedPool()
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "dl.bin")
        writer = partial._writer
        for index in range(manifest.chunk_count - 1):  # the whole, aligned chunks
            span = partial.chunk_map.locate(index)
            view = pool.take(span.length)
            view[:] = data[span.offset:span.offset + span.length]
            partial.write_chunk(index, view)
        assert getattr(writer._buffers, "buf", None) is None, "an aligned chunk was copied"
        span = partial.chunk_map.locate(0)
        partial.write_chunk(0, data[span.offset:span.offset + span.length])  # bytes: copied
        assert getattr(writer._buffers, "buf", None) is not None
        last = manifest.chunk_count - 1
        span = partial.chunk_map.locate(last)
        partial.write_chunk(last, data[span.offset:span.offset + span.length])
        assert partial.commit() == manifest.chunk_count
        partial.finalize()
    assert (tmp_path / "dl.bin").read_bytes() == data
