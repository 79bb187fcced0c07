"""Pure pieces of the app: event folding, chunk grouping, peer rates, coalescing, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p import DEFAULT_PORT, Ban, PeerInfo, human_bytes, human_seconds
from p2p.content import ContentId
from p2p.errors import BadInput
from p2p.events import (
    ChunkFailed,
    ChunkRequested,
    ChunkVerified,
    DownloadCompleted,
    DownloadPaused,
    DownloadProgress,
    DownloadStarted,
    LogMessage,
)
from p2p.identity import PeerId
from tui.app import coalesce, describe
from tui.config import config_from_args
from tui.model import Cell, ChunkMapData, Peers, Transfers, group_cells

CID = ContentId(bytes([5]) * 32)
A = PeerId(bytes([1]) * 32)
B = PeerId(bytes([2]) * 32)


def test_transfer_folds_chunk_events() -> None:
    t = Transfers()
    t.apply(DownloadStarted(CID, "f", 4000, 8, held=2, held_indexes=(0, 1)))
    t.apply(ChunkRequested(CID, 2, B))
    t.apply(ChunkRequested(CID, 3, A))
    t.apply(ChunkVerified(CID, 3, A, 500))
    t.apply(ChunkVerified(CID, 4, B, 500))
    t.apply(ChunkFailed(CID, 5, B))
    data = t.chunk_map(CID)
    assert data.states == (Cell.VERIFIED, Cell.VERIFIED, Cell.IN_FLIGHT, Cell.VERIFIED,
                           Cell.VERIFIED, Cell.FAILED, Cell.MISSING, Cell.MISSING)
    assert data.owners[:5] == ("", "", "", A.short(), B.short())
    assert [label for label, _ in data.legend] == [A.short(), B.short()]  # first seen first
    row = t.row(CID)
    assert row is not None and row.done_chunks == 4
    t.apply(DownloadPaused(CID))
    assert t.chunk_map(CID).states[2] == Cell.MISSING  # in flight is void once paused
    assert t.row(CID).state == "paused"  # type: ignore[union-attr]
    t.apply(DownloadProgress(CID, 4, 8, 2000, 4000, 100.0, 20.0, 2))
    t.apply(DownloadCompleted(CID, "/x", 4000, 1.0, {}))
    assert set(t.chunk_map(CID).states) == {Cell.VERIFIED}
    assert t.row(CID).state == "complete"  # type: ignore[union-attr]


def test_palette_is_stable_across_transfers() -> None:
    t = Transfers()
    other = ContentId(bytes([6]) * 32)
    for cid in (CID, other):
        t.apply(DownloadStarted(cid, "f", 100, 2, held=0))
    t.apply(ChunkVerified(CID, 0, B, 50))
    t.apply(ChunkVerified(other, 0, A, 50))
    t.apply(ChunkVerified(other, 1, B, 50))
    colours = dict(t.chunk_map(other).legend)
    assert colours[B.short()] == dict(t.chunk_map(CID).legend)[B.short()]
    assert colours[A.short()] != colours[B.short()]


def test_group_cells_fits_and_aggregates() -> None:
    states = (Cell.VERIFIED,) * 4 + (Cell.VERIFIED, Cell.IN_FLIGHT) + (Cell.FAILED, Cell.MISSING)
    data = ChunkMapData(states, ("a", "b", "a", "a", "b", "", "", ""))
    cells = group_cells(data, 4)
    assert cells == [(Cell.VERIFIED, "a"), (Cell.VERIFIED, "a"), (Cell.IN_FLIGHT, ""),
                     (Cell.FAILED, "")]
    assert len(group_cells(data, 100)) == 8
    big = ChunkMapData((Cell.MISSING,) * 10_000, ("",) * 10_000)
    assert len(group_cells(big, 300)) == 300


def test_peers_show_the_node_rates_and_bans() -> None:
    p = Peers()
    p.update([PeerInfo(A, ("::1", 5), "out", 5000, 300, rate_in=2000, rate_out=100)],
             [Ban(B, "bad chunks", 0.0, None), Ban(A, "expired", 0.0, 5.0)], now=12.0)
    rows = {r.peer: r for r in p.rows()}
    assert rows[A].rate_in == 2000 and rows[A].rate_out == 100
    assert rows[A].address == "[::1]:5"  # IPv6 in brackets, as everywhere
    assert rows[A].banned is None  # that ban ended
    assert rows[B].banned == "bad chunks" and not rows[B].connected
    p.update([], [], now=13.0)
    assert not {r.peer: r for r in p.rows()}[A].connected


def test_coalesce_keeps_latest_progress_only() -> None:
    p1 = DownloadProgress(CID, 1, 8, 1, 8, 1.0, None, 1)
    p2 = DownloadProgress(CID, 2, 8, 2, 8, 2.0, None, 1)
    v = ChunkVerified(CID, 1, A, 1)
    assert coalesce([p1, v, p2]) == [v, p2]
    assert describe(LogMessage("warning", "hello")) == ("warning", "hello")


def test_settings_flags_win_over_environment(tmp_path: Path) -> None:
    env = {"P2P_STATE_DIR": str(tmp_path / "env"), "P2P_LISTEN": "127.0.0.1:9000",
           "P2P_BOOTSTRAP": "10.0.0.1:7473, [::1]:7000"}
    cfg = config_from_args([], env)
    assert cfg.state_dir == tmp_path / "env"
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9000)
    assert cfg.bootstrap == (("10.0.0.1", 7473), ("::1", 7000))
    cfg = config_from_args(["--state-dir", str(tmp_path / "flag"), "--listen", "0.0.0.0:1",
                            "--bootstrap", "10.0.0.9:1", "--bootstrap", "localhost:2"], env)
    assert cfg.state_dir == tmp_path / "flag"
    # Host names are resolved, exactly as the command line does.
    assert cfg.port == 1 and cfg.bootstrap == (("10.0.0.9", 1), ("127.0.0.1", 2))
    default = config_from_args([], {})
    assert (default.host, default.port) == (("0.0.0.0", "::"), DEFAULT_PORT)  # dual stack


@pytest.mark.parametrize("listen", ["[::1:80", "::1:80", "1.2.3.4:x"])
def test_settings_refuse_what_the_command_line_refuses(listen: str) -> None:
    with pytest.raises(BadInput):
        config_from_args(["--listen", listen], {})


def test_settings_match_the_command_line(tmp_path: Path) -> None:
    """One builder: announce addresses, the download folder and the loopback DHT cap."""
    env = {"P2P_ANNOUNCE_ADDR": "203.0.113.5:7000", "P2P_DOWNLOAD_DIR": str(tmp_path / "dl")}
    cfg = config_from_args(["--listen", "127.0.0.1:0", "--state-dir", str(tmp_path)], env)
    assert cfg.announce_addrs == (("203.0.113.5", 7000),)
    assert cfg.download_dir == tmp_path / "dl"
    assert cfg.max_contacts_per_ip is None  # every local peer shares 127.0.0.1


def test_human_units() -> None:
    assert human_bytes(1536) == "1.5 KiB"
    assert human_seconds(3725) == "1h02m"
    assert human_seconds(65) == "1m05s"
    assert human_seconds(None) == "?"


def test_a_transfer_of_some_files_counts_theirs_and_completes_as_selected() -> None:
    t = Transfers()
    t.apply(DownloadStarted(CID, "album", 8000, 8, held=1, held_indexes=(0,),
                            wanted_chunks=3, wanted_size=3000, wanted_held=1))
    row = t.row(CID)
    assert row is not None and (row.done_chunks, row.chunk_count, row.size) == (1, 3, 3000)
    t.apply(ChunkRequested(CID, 1, A))
    t.apply(ChunkVerified(CID, 1, A, 1000))
    t.apply(ChunkRequested(CID, 2, A))  # in flight, then cancelled when the selection shrank
    t.apply(DownloadCompleted(CID, "/dl/album", 2000, 1.0, {}))
    row = t.row(CID)
    assert row is not None and row.state == "selected" and row.done_chunks == row.chunk_count
    states = t.chunk_map(CID).states
    assert [states[i] for i in (0, 1)] == [Cell.VERIFIED, Cell.VERIFIED]
    assert all(states[i] == Cell.MISSING for i in range(2, 8))  # not fetched: not painted done
