"""Snapshots of every view and dialog at 80x24 (the smallest common terminal) and 200x60,
rendered from fixed data through the app's own message handlers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DirectoryTree, Input

from p2p import (
    Ban,
    ChunkFailed,
    ChunkRequested,
    ChunkVerified,
    ContentId,
    DownloadFailed,
    DownloadInfo,
    DownloadProgress,
    DownloadStarted,
    LogMessage,
    NodeConfig,
    PeerConnected,
    PeerId,
    PeerInfo,
    ShareInfo,
)
from p2p.content import FileEntry, hash_bytes, sign_manifest
from p2p.identity import Identity
from tui.app import NodeEvents, NodeSnapshot, P2PApp, Refusal, build_app, cancel_question
from tui.link import Limits
from tui.model import DhtData
from tui.screens import FilesScreen, LimitScreen
from tui.widgets import TransfersView

from .conftest import wait_until

SIZES = [(80, 24), (200, 60)]
"""The smallest common terminal and a large one."""
IDS = ["80x24", "200x60"]
T0 = 1_700_000_000.0

ALICE = PeerId(bytes([1]) * 32)
BOB = PeerId(bytes([2]) * 32)
MALLORY = PeerId(bytes([3]) * 32)
MOVIE = ContentId(bytes([7]) * 32)
ALBUM = ContentId(bytes([8]) * 32)
NOTES = ContentId(bytes([9]) * 32)
MIB = 1024 * 1024


def events() -> list[Any]:
    out: list[Any] = [
        LogMessage("info", "node listening on 127.0.0.1:7473", at=T0),
        LogMessage("debug", "dht refresh: 3 buckets", at=T0),
        PeerConnected(ALICE, ("10.0.0.2", 7473), inbound=False, at=T0),
        PeerConnected(BOB, ("10.0.0.3", 7473), inbound=False, at=T0),
        DownloadStarted(MOVIE, "movie.mkv", 300 * MIB, 300, held=20,
                        held_indexes=tuple(range(20)), at=T0),
    ]
    for i in range(20, 200):
        peer = ALICE if i % 3 else BOB
        out.append(ChunkRequested(MOVIE, i, peer, at=T0))
        out.append(ChunkVerified(MOVIE, i, peer, MIB, at=T0))
    for i in range(200, 216):
        out.append(ChunkRequested(MOVIE, i, ALICE, at=T0))
    out.append(ChunkFailed(MOVIE, 216, MALLORY, at=T0))
    for k, rate in enumerate([2, 5, 9, 14, 18, 22, 21, 25, 30, 28, 31, 35, 33, 36, 40]):
        out.append(DownloadProgress(MOVIE, 200, 300, 200 * MIB, 300 * MIB, rate * MIB,
                                    100 * MIB / (rate * MIB), 2, at=T0 + k))
    out.append(LogMessage("warning", "peer 3 sent a chunk that fails verification", at=T0))
    return out


def snapshot(at: float, scale: int) -> NodeSnapshot:
    shares = [
        ShareInfo(ALBUM, "file", "album.flac", 412 * MIB, 412, Path("/music/album.flac"), T0,
                  "shared", ALICE),
        ShareInfo(NOTES, "dir", "notes", 48_213, 1, Path("/home/me/notes"), T0, "downloaded",
                  BOB),
    ]
    downloads = [DownloadInfo(MOVIE, "movie.mkv", 300 * MIB, 300, 200, "active",
                              Path("/dl/movie.mkv"), Path("/state/partial/x"), None)]
    # Rates as the node measures them: the byte counts' growth over its sample.
    peers = [
        PeerInfo(ALICE, ("10.0.0.2", 7473), "out", 140 * MIB * scale, 30_000 * scale,
                 rate_in=70 * MIB, rate_out=15_000),
        PeerInfo(BOB, ("10.0.0.3", 7473), "out", 60 * MIB * scale, 12_000 * scale,
                 rate_in=30 * MIB, rate_out=6_000, strikes=1),
        PeerInfo(BOB, ("10.0.0.3", 40112), "in", 800 * scale, 9 * MIB * scale,
                 rate_in=400, rate_out=4.5 * MIB, via=MALLORY),  # a circuit through a relay
    ]
    bans = [Ban(MALLORY, "sent chunks that fail verification", T0, None)]
    dht = DhtData(node_id="ab" * 32, peer_id=str(ALICE), buckets=(0, 1, 3, 8, 20, 20, 12, 4),
                  contacts=68, records=(("channel", 1), ("peer", 9), ("provider", 41)),
                  bootstrap=("203.0.113.5:7473",), bootstrap_error=None,
                  addresses=("198.51.100.7:7473", "192.168.1.20:7473"), listen="0.0.0.0:7473")
    return NodeSnapshot(at, shares, downloads, peers, bans, dht, {MOVIE}, {})


def fixed_app(picker_root: Path | None = None) -> P2PApp:
    app = build_app(NodeConfig(state_dir=Path("/nonexistent/state")), start_node=False,
                    picker_root=picker_root)
    app.clock = lambda: "12:00:00"
    return app


async def feed(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, P2PApp)
    app.providers.update({ALBUM: 3, NOTES: 1})
    app.on_node_events(NodeEvents(events()))
    app.on_node_snapshot(snapshot(100.0, 1))
    app.on_node_snapshot(snapshot(102.0, 2))
    await pilot.pause()


def run_before(keys: str = "", then: Any = None) -> Any:
    async def before(pilot: Pilot[Any]) -> None:
        await feed(pilot)
        if keys:
            await pilot.press(*keys)
        if then is not None:
            await then(pilot)
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()

    return before


@pytest.mark.parametrize("size", SIZES, ids=IDS)
@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5"],
                         ids=["library", "transfers", "peers", "dht", "log"])
def test_view(snap_compare: Any, key: str, size: tuple[int, int]) -> None:
    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before(key))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_fetch_dialog_with_error(snap_compare: Any, size: tuple[int, int]) -> None:
    async def type_bad(pilot: Pilot[Any]) -> None:
        pilot.app.screen.query_one("#fetch-input", Input).value = "p2pt1notaticket"

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("f", type_bad))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_limit_dialog_with_error(snap_compare: Any, size: tuple[int, int]) -> None:
    """The limits dialog over a node with an upload limit (the status line names it), a
    mistyped download rate named inline and Set disabled."""
    async def limited(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, P2PApp)
        app.on_node_snapshot(dataclasses.replace(snapshot(104.0, 3), limits=Limits(up=5 * MIB)))
        dialog = LimitScreen(Limits(up=5 * MIB))
        app.push_screen(dialog)
        await wait_until(pilot, lambda: app.focused is not None and app.focused.id == "limit-up")
        dialog.query_one("#limit-down", Input).value = "fast"
        await wait_until(pilot, lambda: dialog.query_one("#limit-ok", Button).disabled)

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("", limited))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_help(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("?"))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_share_picker(snap_compare: Any, size: tuple[int, int], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The share picker over a fixed folder (under a home set for the test, so its title
    reads the same on every machine): tree, path input, error line and buttons."""
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "files"
    for name in ["music/a.flac", "photos/b.jpg", "notes.txt", "report.pdf"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")

    async def loaded(pilot: Pilot[Any]) -> None:
        tree = pilot.app.screen.query_one(DirectoryTree)
        await wait_until(pilot, lambda: len(tree.root.children) == 4)

    assert snap_compare(fixed_app(root), terminal_size=size, run_before=run_before("s", loaded))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_cancel_question(snap_compare: Any, size: tuple[int, int]) -> None:
    """What x asks before it deletes a download's partial data."""
    info = DownloadInfo(MOVIE, "movie.mkv", 300 * MIB, 300, 200, "active",
                        Path("/dl/movie.mkv"), Path("/dl/movie.mkv.p2p-partial"), None)

    async def ask(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, P2PApp)
        question, deletes = cancel_question(MOVIE, app.transfers.row(MOVIE), info, True)
        assert deletes
        app.push_screen(question)

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("2", ask))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_rename_question(snap_compare: Any, size: tuple[int, int]) -> None:
    """What the app offers when a different file is where a download would go."""
    refusal = Refusal("/home/me/Downloads/movie.mkv already exists and is not this content",
                      "movie (1).mkv")

    async def ask(pilot: Pilot[Any]) -> None:
        pilot.app.push_screen(refusal.question())
        await wait_until(pilot, lambda: pilot.app.focused is not None
                         and pilot.app.focused.id == "confirm-back")

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("2", ask))


LOST = ContentId(bytes([11]) * 32)
BROKEN = ContentId(bytes([12]) * 32)
BROKEN_REASON = ("integrity: chunk 17 failed verification from every peer that has it "
                 "(3 peers tried, each struck); the download stopped so nothing unverified "
                 "is written")


def failed_events() -> list[Any]:
    """A fetch that found nobody (no listing: size unknown) and one that failed midway."""
    return [
        DownloadFailed(LOST, f"not found: no peer provides {LOST} (asked 20 DHT nodes)", 3,
                       at=T0),
        DownloadStarted(BROKEN, "holiday-photos-2026-summer-archive.tar", 80 * MIB, 80,
                        held=0, held_indexes=(), at=T0),
        *(ChunkVerified(BROKEN, i, ALICE, MIB, at=T0) for i in range(30)),
        DownloadFailed(BROKEN, BROKEN_REASON, 5, at=T0),
    ]


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_transfers_failed_and_not_found(snap_compare: Any, size: tuple[int, int]) -> None:
    """States as whole words, a not-found fetch with an empty bar, the failed one's whole
    reason in the detail pane."""
    async def failed(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, P2PApp)
        app.on_node_events(NodeEvents(failed_events()))
        await pilot.press("2")
        app.main.query_one(TransfersView).select(BROKEN)
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("", failed))


BIG = ContentId(bytes([10]) * 32)
BIG_CHUNKS = 100_000


def big_transfer_events() -> list[Any]:
    """A 100,000-chunk download, 60% verified in stripes from two peers, one chunk failed."""
    out: list[Any] = [DownloadStarted(BIG, "dataset.tar", BIG_CHUNKS * 64 * 1024, BIG_CHUNKS,
                                      held=0, held_indexes=(), at=T0)]
    for i in range(60_000):
        peer = ALICE if (i // 5_000) % 2 == 0 else BOB
        out.append(ChunkVerified(BIG, i, peer, 64 * 1024, at=T0))
    out.append(ChunkFailed(BIG, 70_000, MALLORY, at=T0))
    return out


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_transfers_with_a_100k_chunk_map(snap_compare: Any, size: tuple[int, int]) -> None:
    async def big(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, P2PApp)
        app.on_node_events(NodeEvents(big_transfer_events()))
        row = app.transfers.row(BIG)
        assert row is not None and row.done_chunks == 60_000 and row.chunk_count == BIG_CHUNKS
        data = app.transfers.chunk_map(BIG)
        assert len(data.states) == BIG_CHUNKS
        await pilot.press("2")
        app.main.query_one(TransfersView).select(BIG)
        await pilot.pause()

    assert snap_compare(fixed_app(), terminal_size=size, run_before=big)


def album(count: int = 5) -> Any:
    """A signed folder manifest: five named files, or ``count`` numbered ones."""
    paths = ["docs/guide.pdf", "docs/notes.txt", "music/01 intro.flac", "music/02 theme.flac",
             "video/trailer.mkv"]
    if count != len(paths):
        paths = [f"disc {i // 10 + 1}/track {i:02d} [live].flac" for i in range(count)]
    entries = [FileEntry(p, hash_bytes(bytes(1000 * (i + 1)))) for i, p in enumerate(paths)]
    return paths, sign_manifest(Identity.from_seed(b"\x01" * 32), "dir", "album", entries)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_files_picker(snap_compare: Any, size: tuple[int, int]) -> None:
    """The file picker of a folder download: some files ticked, the summary below."""
    paths, manifest = album()

    async def pick(pilot: Pilot[Any]) -> None:
        pilot.app.push_screen(FilesScreen.of(manifest, frozenset(paths[2:4]), running=True))

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("", pick))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_files_picker_long_list(snap_compare: Any, size: tuple[int, int]) -> None:
    """Forty files in four folders, one partly ticked: the summary and buttons stay on screen."""
    paths, manifest = album(40)

    async def pick(pilot: Pilot[Any]) -> None:
        pilot.app.push_screen(FilesScreen.of(manifest, frozenset(paths[:3])))

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("", pick))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_files_tree_opened(snap_compare: Any, size: tuple[int, int]) -> None:
    """The tree with a folder opened and partly ticked: [-] on it, counts and sizes beside."""
    paths, manifest = album()

    async def pick(pilot: Pilot[Any]) -> None:
        pilot.app.push_screen(FilesScreen.of(manifest, frozenset(paths[2:3])))
        await pilot.pause()
        await pilot.press("down", "right", "down")  # open music/, the cursor on its first file

    assert snap_compare(fixed_app(), terminal_size=size, run_before=run_before("", pick))
