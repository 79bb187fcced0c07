"""Out of space (a file-size limit in a child process): DiskFull, and the progress made is kept."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from p2p.content import build_manifest
from p2p.errors import DiskFull
from p2p.identity import Identity
from p2p.store import Store

from .storeproc import CHUNK, Child, chunk_bytes, make_bytes, mounted, save_manifest, set_bits

ME = Identity.generate()


@pytest.mark.parametrize("limit_chunks", [3, 8])
def test_write_chunk_raises_disk_full_and_committed_progress_survives(
        tmp_path: Path, limit_chunks: int) -> None:
    src = tmp_path / "big.bin"
    data = make_bytes(16 * CHUNK + 10, seed=9)
    src.write_bytes(data)
    manifest, _ = build_manifest(src, ME)
    mpath = save_manifest(manifest, tmp_path / "manifest")
    # Room for the first chunks and part of the next; the database stays well under it.
    limit = limit_chunks * CHUNK + 1000
    state, dest = tmp_path / "state", tmp_path / "dl" / "big.bin"
    with Child("fill", state, mpath, src, dest, limit, 2) as child:
        rc, _ = child.finish()
        assert rc == 0, child.stderr()  # not killed by SIGXFSZ: the store ignores it
    lines = child.lines
    # Not pre-sized to the full length: the limit is below the file's size.
    assert lines[0] == "opened 0"
    [full] = [line for line in lines if line.startswith("diskfull")]
    _, exit_code, message = full.split(" ", 2)
    assert exit_code == "6" and "space" in message  # a local problem, not a bug
    wrote = [int(line.split()[1]) for line in lines if line.startswith("wrote")]
    assert wrote == list(range(limit_chunks))
    assert lines[-1] == f"committed {limit_chunks}"
    partial_path = dest.resolve().with_name("big.bin.p2p-partial")
    assert os.stat(partial_path).st_size <= limit
    with Store(state) as store:
        info = store.download_info(manifest.content_id)
        assert info.done_chunks == limit_chunks > 0
        partial = store.open_download(manifest, dest)
        recorded = set_bits(bytes(partial.bits))
        assert recorded == set(range(limit_chunks))
        for index in recorded:
            assert partial.chunk_map.verify(index, chunk_bytes(partial.chunk_map, partial_path, index))
        assert partial.recover() == []  # the torn chunk past the limit is not taken
        # Without the limit, the rest goes in and the file is whole.
        for index in range(limit_chunks, manifest.chunk_count):
            span = partial.chunk_map.locate(index)
            partial.write_chunk(index, data[span.offset:span.offset + span.length])
        partial.finalize()
        assert dest.read_bytes() == data


def test_a_new_partial_file_is_preallocated_when_there_is_room(tmp_path: Path) -> None:
    """The control for the test above: without a limit, the partial file has its full size at once."""
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY
    src = tmp_path / "big.bin"
    src.write_bytes(make_bytes(16 * CHUNK + 10, seed=9))
    manifest, _ = build_manifest(src, ME)
    free = os.statvfs(tmp_path)
    if free.f_bavail * free.f_frsize < 1 << 30:
        pytest.skip("less than 1 GiB free here: the store rightly does not preallocate")
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "dl.bin")
        assert os.stat(partial.partial_path).st_size == manifest.total_size
        partial.close()



def test_a_full_disk_under_the_state_dir_is_disk_full(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = make_bytes(20 * CHUNK, seed=4)
    src.write_bytes(data)
    manifest, _ = build_manifest(src, ME)
    with mounted("tmpfs", tmp_path / "small", size="2m") as small:
        state = small / "state"
        with Store(state) as store:
            partial = store.open_download(manifest, tmp_path / "dl.bin")
            partial.write_chunk(0, data[:CHUNK])
            assert partial.commit() == 1
            filler = os.open(small / "filler", os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                with pytest.raises(OSError, match="No space"):
                    while True:
                        os.write(filler, bytes(64 * 1024))
            finally:
                os.close(filler)
            try:
                with pytest.raises(DiskFull):
                    for index in range(1, manifest.chunk_count):
                        partial.write_chunk(index, data[index * CHUNK:(index + 1) * CHUNK])
                        partial.commit()
            finally:
                partial.close()
            (small / "filler").unlink()
        with Store(state) as store:  # the progress recorded before the disk filled is kept
            assert store.download_info(manifest.content_id).done_chunks >= 1
