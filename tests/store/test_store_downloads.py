"""Downloads: record, reopen, finalize, lock, cancel; bans that survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.content import Manifest, build_manifest
from p2p.errors import StateDirLocked, StoreError
from p2p.identity import Identity
from p2p.store import PARTIAL_SUFFIX, Store, full_bitfield

from .storeproc import CHUNK, Child, Clock, chunk_bytes, make_bytes, save_manifest, set_bits

ME = Identity.generate()


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes, Manifest]:
    data = make_bytes(20 * CHUNK + 4321, seed=5)
    path = tmp_path / "src" / "report.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    manifest, _ = build_manifest(path, ME)
    return path, data, manifest


def chunk(manifest: Manifest, data: bytes, index: int) -> bytes:
    size = manifest.entries[0].info.chunk_size
    return data[index * size:(index + 1) * size]


def test_committed_chunks_are_what_a_new_store_object_sees(tmp_path: Path, source) -> None:
    _, data, manifest = source
    cid = manifest.content_id.digest
    dest = tmp_path / "dl" / "report.bin"
    written = [0, 3, 4, 20]
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        assert partial.partial_path == dest.resolve().with_name("report.bin" + PARTIAL_SUFFIX)
        assert not partial.resumed and partial.done == 0
        for i in written:
            partial.write_chunk(i, chunk(manifest, data, i))
        assert partial.commit() == 4
        assert partial.commit() == 0  # nothing new
        partial.write_chunk(9, chunk(manifest, data, 9))  # written, never committed
        # Another Store object on the same directory reads only what was committed.
        with Store(tmp_path / "state") as other:
            count, bits = other.recorded_bitfield(cid)
            assert count == 21 and set_bits(bits) == set(written)
            info = other.download_info(manifest.content_id)
            assert (info.done_chunks, info.chunks, info.state) == (4, 21, "active")
        partial.close()
    with Store(tmp_path / "state") as store:
        assert set_bits(store.recorded_bitfield(cid)[1]) == set(written)
        [info] = store.downloads()
        assert (info.done_chunks, info.partial) == (4, partial.partial_path)
        resumed = store.open_download(manifest, tmp_path / "elsewhere.bin")
        assert resumed.resumed and resumed.dest == dest.resolve()
        assert set_bits(bytes(resumed.bits)) == set(written)
        assert resumed.recover() == [9]  # the uncommitted chunk is on disk and verifies
        resumed.close()


def test_finalize_renames_into_place_and_shares_the_result(tmp_path: Path, source) -> None:
    _, data, manifest = source
    cid = manifest.content_id.digest
    dest = tmp_path / "dl" / "report.bin"
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        with pytest.raises(StoreError, match="before every chunk"):
            partial.finalize()
        for i in reversed(range(manifest.chunk_count)):
            partial.write_chunk(i, chunk(manifest, data, i))
        assert partial.complete
        assert partial.finalize() == dest.resolve()
        assert dest.read_bytes() == data
        assert not partial.partial_path.exists()
        [share] = store.shares()
        assert (share.content_id, share.origin, share.root) == (manifest.content_id, "downloaded", dest.resolve())
        [info] = store.downloads()
        assert (info.state, info.done_chunks) == ("complete", manifest.chunk_count)
        assert store.bitfield(cid) == (21, full_bitfield(21))
        assert store.read_chunk(cid, 20) == chunk(manifest, data, 20)
    with Store(tmp_path / "state") as store:
        assert [s.origin for s in store.shares()] == ["downloaded"]
        assert store.download_info(cid).state == "complete"


def test_finalize_does_not_overwrite_an_existing_destination(tmp_path: Path, source) -> None:
    _, data, manifest = source
    dest = tmp_path / "report.bin"
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        for i in range(manifest.chunk_count):
            partial.write_chunk(i, chunk(manifest, data, i))
        partial.commit()
        dest.write_bytes(b"somebody else's file")
        with pytest.raises(StoreError, match="already exists"):
            partial.finalize()
        assert dest.read_bytes() == b"somebody else's file"
        assert partial.partial_path.read_bytes() == data
        assert store.shares() == []
        assert store.download_info(manifest.content_id).state == "active"
        # Once the way is clear, the same download finishes.
        dest.unlink()
        partial.finalize()
        assert dest.read_bytes() == data and not partial.partial_path.exists()


def test_a_directory_download(tmp_path: Path) -> None:
    src = tmp_path / "src" / "photos"
    content = {"2024/a.jpg": make_bytes(2 * CHUNK + 9, 1), "2024/empty": b"",
               "b.raw": make_bytes(CHUNK, 2), "notes/deep/c.txt": b"tiny"}
    for rel, blob in content.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(blob)
    manifest, _ = build_manifest(src, ME)
    dest = tmp_path / "dl" / "photos"
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, dest)
        assert partial.partial_path.is_dir()
        order = list(range(partial.chunk_map.count))
        for i in order[::2] + order[1::2]:
            partial.write_chunk(i, chunk_bytes(partial.chunk_map, src, i))
            if i == 0:
                partial.commit()
        assert set_bits(store.bitfield(manifest.content_id.digest)[1]) == set(order)
        partial.finalize()
        got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        assert got == content
        assert not partial.partial_path.exists()
        [share] = store.shares()
        assert share.origin == "downloaded" and share.kind == "dir"
        for entry in manifest.entries:
            n, bits = store.bitfield(entry.content_id.digest)
            assert bits == full_bitfield(n)


def test_one_download_open_twice_in_one_process_is_locked(tmp_path: Path, source) -> None:
    _, _, manifest = source
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "x.bin")
        with pytest.raises(StateDirLocked, match="already being downloaded"):
            store.open_download(manifest, tmp_path / "x.bin")
        with Store(tmp_path / "state") as other, pytest.raises(StateDirLocked, match="another process"):
            other.open_download(manifest, tmp_path / "x.bin")
        partial.close()
        store.open_download(manifest, tmp_path / "x.bin").close()


def test_a_download_held_by_another_process_is_locked(tmp_path: Path, source) -> None:
    _, data, manifest = source
    state, dest = tmp_path / "state", tmp_path / "x.bin"
    mpath = save_manifest(manifest, tmp_path / "manifest")
    with Store(state) as store:
        partial = store.open_download(manifest, dest)
        partial.write_chunk(2, chunk(manifest, data, 2))
        partial.commit()
        with Child("hold", state, mpath, dest) as child:
            line = child.line()
            assert line.startswith("locked ") and "another process" in line
            assert str(partial.partial_path) in line
            assert child.finish()[0] == 0
        assert set_bits(store.bitfield(manifest.content_id.digest)[1]) == {2}
        partial.close()
        with Child("hold", state, mpath, dest) as child:  # and the other way round
            assert child.line() == "holding"
            with pytest.raises(StateDirLocked, match="another process"):
                store.open_download(manifest, dest)
            child.close_stdin()
            assert child.finish()[0] == 0
        resumed = store.open_download(manifest, dest)  # released when the holder closed
        assert set_bits(bytes(resumed.bits)) == {2}
        resumed.close()


def test_remove_download_deletes_partial_data_and_sources(tmp_path: Path, source) -> None:
    _, data, manifest = source
    cid = manifest.content_id
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "x.bin")
        partial.write_chunk(1, chunk(manifest, data, 1))
        partial.commit()
        partial.close()
        store.add_sources(cid, [("127.0.0.1", 4001), ("10.0.0.2", 4002)])
        assert sorted(store.sources(cid)) == [("10.0.0.2", 4002), ("127.0.0.1", 4001)]
        assert partial.partial_path.exists()
        store.remove_download(cid)
        assert not partial.partial_path.exists()
        assert store.sources(cid) == [] and store.downloads() == []
        assert store.bitfield(cid.digest) is None
    with Store(tmp_path / "state") as store:
        assert store.downloads() == [] and store.sources(cid) == []
        fresh = store.open_download(manifest, tmp_path / "x.bin")
        assert fresh.done == 0 and not fresh.resumed
        fresh.close()


def test_bans_persist_and_timed_bans_expire(tmp_path: Path) -> None:
    clock = Clock()
    start = clock.now
    forever, timed, short, never = (Identity.generate().peer_id for _ in range(4))
    with Store(tmp_path / "state", clock=clock) as store:
        store.ban(forever, "sent a bad chunk")
        store.ban(timed, "too many strikes", duration=3600)
        store.ban(short, "slow to answer", duration=60)
        assert store.is_banned(forever) and store.is_banned(timed) and store.is_banned(short)
        assert not store.is_banned(never)
        clock.now += 60  # a timed ban is over at its end
        assert not store.is_banned(short) and store.is_banned(timed)
    with Store(tmp_path / "state", clock=clock) as store:
        assert store.is_banned(forever) and store.is_banned(timed)
        assert not store.is_banned(short) and not store.is_banned(never)
        rows = {peer: (reason, since, until) for peer, reason, since, until in store.bans()}
        assert rows[forever] == ("sent a bad chunk", start, None)
        assert rows[timed] == ("too many strikes", start, start + 3600)
        assert rows[short] == ("slow to answer", start, start + 60)
        clock.now = start + 3600
        assert not store.is_banned(timed) and store.is_banned(forever)
        # Banning again replaces the old ban (here: a ban for good becomes a short one).
        store.ban(forever, "pardoned", duration=1)
        assert store.is_banned(forever)
        clock.now += 1
        assert not store.is_banned(forever)
