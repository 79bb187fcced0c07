"""Listed directories between real nodes (one process, 127.0.0.1, port 0): the root, then the
listing in verified chunks from the peers that sent it, then the files; a peer that sends a bad
listing chunk is banned; a resumed download and a restarted seeder use the stored listing."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import pytest

from p2p.content import Manifest
from p2p.content import manifest as manifest_module
from p2p.content.manifest import LISTED_FORMAT_VERSION, ListedRoot
from p2p.events import DownloadStarted, PeerBanned
from p2p.node import Node
from p2p.store.store import LISTINGS_DIR
from p2p.testing import FakeClock

from .conftest import node_config, running_nodes, wait_for
from .doubles import running_download

FILES = 2500
"""Files in the test folder: a listing of about 140 KiB, three chunks of 64 KiB."""


@pytest.fixture(autouse=True)
def list_small_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node of this process lists folders past 1 KiB of entries (instead of 4 MiB)."""
    monkeypatch.setattr(manifest_module, "INLINE_ENTRIES_MAX_BYTES", 1024)


def _folder(root: Path, count: int = FILES) -> Path:
    for i in range(count):
        path = root / f"d{i % 7}" / f"f{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"file %d\n" % i * (1 + i % 5))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _count_listing_reads(node: Node, listing_id: bytes) -> Counter[int]:
    """Counts the listing chunks ``node`` serves (wrapping its store's chunk source)."""
    served: Counter[int] = Counter()
    read = node._store.read_chunk

    def counting(content_id: bytes, index: int) -> bytes | memoryview:
        if content_id == listing_id:
            served[index] += 1
        return read(content_id, index)

    node._store.read_chunk = counting  # type: ignore[method-assign]
    return served


async def test_a_listed_folder_is_fetched_listing_first_and_arrives_identical(tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    async with asyncio.timeout(60), running_nodes(tmp_path, ["s0", "s1", "dl"]) as (s0, s1, dl):
        shared = [await s.share(root) for s in (s0, s1)]
        cid = shared[0].content_id
        assert shared[1].content_id == cid
        manifest = s0._store.get_manifest(cid)
        assert manifest is not None and manifest.version == LISTED_FORMAT_VERSION
        assert manifest.listing is not None and manifest.listing.chunk_count == 3
        listing_id = manifest.listing.content_id.digest
        served = [_count_listing_reads(s, listing_id) for s in (s0, s1)]
        listed = await dl.listing(cid, peers=[s0.listen_address()], timeout=15)
        assert [e.path for e in listed.entries] == [e.path for e in manifest.entries]
        assert sum(sum(c.values()) for c in served) == 3  # each chunk asked once
        out = (await dl.fetch(shared[0].ticket, tmp_path / "got", timeout=30)).path
    assert _tree(out) == _tree(root)
    assert (tmp_path / "dl" / "state" / LISTINGS_DIR / listing_id.hex()).stat().st_size == \
        manifest.listing.size


async def test_a_peer_sending_a_bad_listing_chunk_is_banned_and_others_complete_it(
        tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    async with asyncio.timeout(60), running_nodes(tmp_path, ["liar", "honest", "dl"]) as nodes:
        liar, honest, dl = nodes
        cid = (await liar.share(root)).content_id
        manifest = liar._store.get_manifest(cid)
        assert manifest is not None and manifest.listing is not None
        listing_id = manifest.listing.content_id.digest
        read = liar._store.read_chunk

        def corrupt(content_id: bytes, index: int) -> bytes | memoryview:
            data = read(content_id, index)
            if content_id != listing_id:
                return data
            spoiled = bytearray(data)
            spoiled[0] ^= 1
            return bytes(spoiled)

        liar._store.read_chunk = corrupt  # type: ignore[method-assign]
        with dl.events.subscribed() as sub:
            # Only the liar holds the folder when the fetch starts: it sends the (valid) root
            # and is asked the listing. The honest seeder shares once the liar is banned and
            # is found by the next discovery round.
            fetch = asyncio.create_task(dl.fetch(cid, tmp_path / "got", timeout=30))
            try:
                banned = await wait_for(sub, lambda e: isinstance(e, PeerBanned))
                assert isinstance(banned, PeerBanned)
                assert banned.peer == liar.peer_id and "listing" in banned.reason
                await honest.share(root)
                started = await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                assert isinstance(started, DownloadStarted)
                assert started.chunk_count == manifest.chunk_count
                out = (await fetch).path
            finally:
                fetch.cancel()
        assert dl.library.is_banned(liar.peer_id)
    assert _tree(out) == _tree(root)


async def test_a_resumed_download_and_a_restarted_seeder_use_the_stored_listing(
        tmp_path: Path) -> None:
    root = _folder(tmp_path / "src")
    async with asyncio.timeout(90):
        async with Node(node_config(tmp_path, "seed")) as seed:
            shared = await seed.share(root)
            seed_addr = [seed.listen_address()]
        # The seeder restarts: the listed folder is read back from its database row (the
        # root) and its listing file, and served as before.
        async with Node(node_config(tmp_path, "seed")) as seed, \
                Node(node_config(tmp_path, "dl", [seed.listen_address()])) as dl:
            manifest = seed._store.get_manifest(shared.content_id)
            assert manifest is not None and manifest.listing is not None
            listing_id = manifest.listing.content_id.digest
            served = _count_listing_reads(seed, listing_id)
            peers = [seed.listen_address()]
            with dl.events.subscribed() as sub:
                fetch = asyncio.create_task(dl.fetch(shared.content_id, tmp_path / "got",
                                                     peers=peers, timeout=30))
                await wait_for(sub, lambda e: isinstance(e, DownloadStarted))
                fetch.cancel()  # a pause, as Ctrl-C
                with pytest.raises(asyncio.CancelledError):
                    await fetch
            first = sum(served.values())
            assert first == manifest.listing.chunk_count
            out = (await dl.fetch(shared.content_id, tmp_path / "got", peers=peers, timeout=30)).path
            assert sum(served.values()) == first  # the listing is not fetched again
    assert seed_addr and _tree(out) == _tree(root)


async def test_a_listing_that_takes_longer_than_the_timeout_to_decode_is_not_cut_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk of the listing verified; decoding it (seconds per million entries, off the
    loop) outlasts the manifest timeout on the download's clock. The download goes on."""
    root = _folder(tmp_path / "src", 300)
    entered, release = threading.Event(), threading.Event()
    complete = ListedRoot.complete

    def slow_complete(self: ListedRoot, listing: bytes | bytearray | memoryview) -> Manifest:
        entered.set()
        release.wait(30)
        return complete(self, listing)

    clock = FakeClock()
    async with asyncio.timeout(60), Node(node_config(tmp_path, "seed")) as seed:
        shared = await seed.share(root)
        monkeypatch.setattr(ListedRoot, "complete", slow_complete)
        async with running_download(tmp_path, shared.content_id, clock,
                                    peers=[seed.listen_address()], timeout=20) as rig:
            try:
                await asyncio.to_thread(entered.wait, 30)
                assert entered.is_set()
                clock.advance(21)
                rig.download.handle_timer()
            finally:
                release.set()
            out = await rig.run
    assert _tree(out) == _tree(root)
