"""What the app writes with a count reads right: '1 chunk', '2 chunks', '12,345 files'; and a
folder share's left-out warning names each kind with its count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2p import (
    ContentId,
    DownloadInfo,
    DownloadStarted,
    EventsDropped,
    LeftOut,
    PeerId,
)
from tui.app import cancel_question, describe, left_out_warning
from tui.link import ShareOutcome
from tui.model import DhtData, PeerRow, TransferRow, counted
from tui.widgets import peer_detail, routing_summary, transfer_detail

CID = ContentId(bytes([5]) * 32)
PEER = PeerId(bytes([6]) * 32)


@pytest.mark.parametrize(("n", "word", "many", "text"), [
    (0, "file", None, "0 files"),
    (1, "file", None, "1 file"),
    (2, "file", None, "2 files"),
    (12_345, "file", None, "12,345 files"),
    (1, "strike", None, "1 strike"),
    (3, "entry", "entries", "3 entries"),
])
def test_counted(n: int, word: str, many: str | None, text: str) -> None:
    assert counted(n, word, many) == text


def test_the_routing_table_summary() -> None:
    assert routing_summary(DhtData(contacts=1, buckets=(1,))) == "1 contact in 1 bucket"
    assert routing_summary(DhtData(contacts=68, buckets=(0, 1, 3, 64))) == "68 contacts in 4 buckets"
    assert routing_summary(DhtData()) == "0 contacts in 0 buckets"


def test_log_lines_with_counts() -> None:
    one = describe(DownloadStarted(CID, "a.bin", 10, 1, held=0))
    assert one == ("info", f"download a.bin [{CID.short()}]: 1 chunk, 0 held")
    many = describe(DownloadStarted(CID, "a.bin", 10, 2_000, held=1_500))
    assert many is not None and many[1].endswith(": 2,000 chunks, 1,500 held")
    assert describe(EventsDropped(1)) == ("warning", "the app fell behind and skipped 1 event")


def row(chunks: int, peers: int) -> TransferRow:
    return TransferRow(CID, "a.bin", 10, 0, chunks, 0, 0.0, None, peers, "active")


def test_the_transfer_and_peer_details() -> None:
    assert "0 of 1 chunk · 10 B · 1 peer" in transfer_detail(row(1, 1)).plain
    assert "0 of 2 chunks · 10 B · 2 peers" in transfer_detail(row(2, 2)).plain
    peer = PeerRow(PEER, "10.0.0.1:7473", "out", 0, 0, 0.0, 0.0, 1, True)
    assert peer_detail(peer).plain.endswith("· 1 strike")


def test_the_cancel_question_counts_what_is_held() -> None:
    info = DownloadInfo(CID, "a.bin", 10, 1, 0, "active", Path("/dl/a.bin"),
                        Path("/dl/a.bin.part"), None)
    question, deletes = cancel_question(CID, row(1, 0), info, True)
    assert deletes and "(0 of 1 chunk)" in question.body


def test_the_left_out_warning() -> None:
    assert left_out_warning("album", ShareOutcome("album", "p2pt1x")) is None
    outcome = ShareOutcome("album", "p2pt1x", LeftOut(symlinks=2, empty_folders=1))
    assert left_out_warning("album", outcome) == (
        "album: left out 2 symlinks and 1 empty folder (a folder share holds readable "
        "regular files only)")
    one = ShareOutcome("album", "p2pt1x", LeftOut(unreadable=1, special=1))
    warning = left_out_warning("album", one)
    assert warning is not None
    assert "1 unreadable file or folder and 1 special file (socket, FIFO or device)" in warning


async def test_a_folder_share_in_the_app_says_what_it_left_out(tmp_path: Path) -> None:
    """The app's own node shares a folder with a symlink and an empty folder inside: the
    share goes ahead with the regular file, and the log and a notification say what was
    left out, with counts."""
    from tui.app import build_app

    from .conftest import make_file, node_config, wait_until

    folder = tmp_path / "album"
    make_file(folder / "song.flac", 4096)
    (folder / "empty").mkdir()
    os.symlink(folder / "song.flac", folder / "link.flac")
    app = build_app(node_config(tmp_path, "a"), refresh_interval=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, app.ready.is_set)
        app.share(folder)
        log = app.main.query_one("#log-view")

        def warned() -> bool:
            return any(e.level == "warning" and "left out" in e.message
                       for e in log.entries)  # type: ignore[attr-defined]

        await wait_until(pilot, warned)
        lines = [e.message for e in log.entries if "left out" in e.message]  # type: ignore[attr-defined]
        assert lines == ["album: left out 1 symlink and 1 empty folder (a folder share holds "
                         "readable regular files only)"]
        assert any("left out 1 symlink" in str(n.message) for n in app._notifications)
        await wait_until(pilot, lambda: any(r.name == "album" for r in app._library))


def test_a_peer_rows_path_names_its_relay() -> None:
    relay = PeerId(bytes(range(32)))
    assert PeerRow(PEER, "a", "out", 0, 0, 0.0, 0.0, 0, True).path_text == "direct"
    row = PeerRow(PEER, "a", "in", 0, 0, 0.0, 0.0, 0, True, None, "relayed", relay)
    assert row.path_text == f"relayed via {relay.short()[:8]}"
    assert row.path_text in str(peer_detail(row))
    lan = PeerRow(PEER, "10.0.0.5:7473", "out", 0, 0, 0.0, 0.0, 0, True, None, "direct", None, True)
    assert lan.path_text == "direct, LAN"
