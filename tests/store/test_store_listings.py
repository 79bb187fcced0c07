"""Listed directories' listings on disk (real files, real SQLite): a damaged listing file is
replaced when the listing is written again, and a share whose listing is lost is not served
(no error per request, no re-read per request)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.bitfield import full_bitfield
from p2p.content import Manifest, build_manifest
from p2p.content import manifest as manifest_module
from p2p.content.manifest import ListedRoot
from p2p.errors import NotFound
from p2p.identity import Identity
from p2p.store import Store
from p2p.store.store import LISTINGS_DIR

ME = Identity.generate()


@pytest.fixture(autouse=True)
def list_small_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders past 1 KiB of entries are listed (instead of 4 MiB)."""
    monkeypatch.setattr(manifest_module, "INLINE_ENTRIES_MAX_BYTES", 1024)


@pytest.fixture
def listed(tmp_path: Path) -> tuple[Path, Manifest]:
    src = tmp_path / "src" / "many"
    src.mkdir(parents=True)
    for i in range(60):
        (src / f"f{i:03d}.txt").write_bytes(b"file %d\n" % i)
    manifest, _ = build_manifest(src, ME)
    assert manifest.listing is not None
    return src, manifest


def damage_listing(state: Path, manifest: Manifest) -> Path:
    """Flip one byte of the stored listing (same size: bit rot, not truncation)."""
    assert manifest.listing is not None
    path = state / LISTINGS_DIR / manifest.listing.content_id.digest.hex()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_listing_is_replaced_by_the_download_that_fetched_it_again(
        tmp_path: Path, listed: tuple[Path, Manifest]) -> None:
    _, manifest = listed
    state = tmp_path / "state"
    with Store(state) as store:
        store.put_manifest(manifest)
    damage_listing(state, manifest)
    with Store(state) as store:
        assert store.stored_listing(manifest.root()) is None  # so the download fetched it
        partial = store.open_download(manifest, tmp_path / "dl" / "many", manifest.encode_listing())
        partial.close()
    with Store(state) as store:  # after a restart the listing is read back whole
        assert store.stored_listing(manifest.root()) is not None
        assert store.get_manifest(manifest.content_id) is not None


def test_a_share_whose_listing_is_damaged_is_not_served_until_shared_again(
        tmp_path: Path, listed: tuple[Path, Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    src, manifest = listed
    cid = manifest.content_id.digest
    state = tmp_path / "state"
    with Store(state) as store:
        store.add_share(manifest, root=src)
    damage_listing(state, manifest)
    completions = 0
    complete = ListedRoot.complete

    def counting(root: ListedRoot, listing: bytes | bytearray | memoryview) -> Manifest:
        nonlocal completions
        completions += 1
        return complete(root, listing)

    monkeypatch.setattr(ListedRoot, "complete", counting)
    with Store(state) as store:
        for _ in range(3):  # what a peer's GetManifest, GetBitfield and Requests reach
            assert store.manifest(cid) is None
            assert store.bitfield(cid) is None
            with pytest.raises(NotFound):
                store.read_chunk(cid, 0)
        assert completions == 1  # found damaged once, not read and hashed per request
        store.add_share(manifest, root=src)  # shared again: the listing is written again
    with Store(state) as store:
        assert store.manifest(cid) is not None
        assert store.bitfield(cid) == (manifest.chunk_count, full_bitfield(manifest.chunk_count))
        assert store.read_chunk(cid, 0) == (src / manifest.entries[0].path).read_bytes()
