"""What the store serves of a download over its life: only while it runs in this process."""

from __future__ import annotations

from pathlib import Path

from p2p.content import build_manifest
from p2p.identity import Identity
from p2p.store import Store, full_bitfield

from .storeproc import CHUNK, make_bytes, set_bits

ME = Identity.generate()


def test_paused_download_is_not_served_but_its_recorded_bits_remain(tmp_path: Path) -> None:
    data = make_bytes(8 * CHUNK + 100, seed=8)
    source = tmp_path / "src" / "paused.bin"
    source.parent.mkdir()
    source.write_bytes(data)
    manifest, _ = build_manifest(source, ME)
    cid = manifest.content_id.digest
    size = manifest.entries[0].info.chunk_size
    count = manifest.entries[0].info.chunk_count
    assert count == 9
    with Store(tmp_path / "state") as store:
        partial = store.open_download(manifest, tmp_path / "dl" / "paused.bin")
        for i in (0, 5):
            partial.write_chunk(i, data[i * size:(i + 1) * size])
        assert partial.commit() == 2
        partial.write_chunk(7, data[7 * size:8 * size])  # held, not yet recorded
        # Running here: served, with every chunk it holds.
        assert store.manifest(cid) == manifest.encode()
        held = store.bitfield(cid)
        assert held is not None and held[0] == count and set_bits(held[1]) == {0, 5, 7}
        # Another Store object (as another process would) sees the record, serves nothing.
        with Store(tmp_path / "state") as other:
            assert other.bitfield(cid) is None
            assert other.manifest(cid) is None
            recorded = other.recorded_bitfield(cid)
            assert recorded is not None and recorded[0] == count and set_bits(recorded[1]) == {0, 5}
        partial.commit()
        partial.close()
        store.set_download_state(manifest.content_id, "paused")
        # Paused: not served from this process either, yet its progress is on record.
        assert store.bitfield(cid) is None
        assert store.manifest(cid) is None
        recorded = store.recorded_bitfield(manifest.content_id)
        assert recorded is not None and recorded[0] == count and set_bits(recorded[1]) == {0, 5, 7}
        assert store.recorded_bitfield(b"\x00" * 32) is None
        # Resumed: served again, from where it stopped.
        resumed = store.open_download(manifest, tmp_path / "dl" / "paused.bin")
        assert resumed.resumed
        again = store.bitfield(cid)
        assert again is not None and set_bits(again[1]) == {0, 5, 7}
        assert again[1] != full_bitfield(count)
        resumed.close()
