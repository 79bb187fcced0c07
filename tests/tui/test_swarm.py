"""The app with real nodes on 127.0.0.1: share through the picker, fetch through the dialog."""

from __future__ import annotations

import filecmp
from pathlib import Path

from textual import events
from textual.widgets import Button, Input, Static

from p2p import Library
from tui.app import P2PApp, build_app
from tui.model import Cell
from tui.screens import FetchScreen, ShareScreen
from tui.widgets import ChunkMap, PeersView

from .conftest import make_file, node_config, wait_until

SIZE = (120, 36)


async def test_share_then_fetch_fills_chunk_map_and_peers(base: Path) -> None:
    source = make_file(base / "files" / "movie.bin", 5 * 1024 * 1024 + 12345)
    seeder = build_app(node_config(base, "a"), refresh_interval=0.2, picker_root=base / "files")
    async with seeder.run_test(size=SIZE) as pa:
        await wait_until(pa, seeder.ready.is_set)
        assert seeder.node is not None
        boot = (("127.0.0.1", seeder.node.port),)
        leecher = build_app(node_config(base, "b", boot), refresh_interval=0.2)
        async with leecher.run_test(size=SIZE) as pb:
            await wait_until(pb, leecher.ready.is_set)
            assert leecher.node is not None

            # Share through the picker: type the path, confirm with enter.
            await pa.press("s")
            await wait_until(pa, lambda: isinstance(seeder.screen, ShareScreen))
            await pa.click("#share-path")
            await pa.press(*str(source))
            await pa.press("enter")
            await wait_until(pa, lambda: bool(seeder.node and seeder.node.library.shares()))
            share = seeder.node.library.shares()[0]
            assert share.name == "movie.bin"
            await wait_until(pa, lambda: seeder.query_one("#library-table").row_count == 1)
            ticket = str(seeder.node.ticket(share.content_id))

            # Fetch through the dialog: paste the ticket, press Fetch.
            await pb.press("f")
            await wait_until(pb, lambda: isinstance(leecher.screen, FetchScreen))
            leecher.screen.query_one("#fetch-input", Input).post_message(events.Paste(ticket))
            await wait_until(pb, lambda: not leecher.screen.query_one("#fetch-ok", Button).disabled)
            await pb.click("#fetch-ok")

            def complete() -> bool:
                row = leecher.transfers.row(share.content_id)
                return row is not None and row.state == "complete"

            await wait_until(pb, complete, seconds=30)
            info = leecher.node.library.download(share.content_id)
            assert info is not None and info.state == "complete"
            assert filecmp.cmp(info.dest, source, shallow=False)

            # The chunk map (Transfers is the active tab after a fetch): every cell verified,
            # coloured by the seeder, which the legend names.
            assert leecher.query_one("#tabs").active == "transfers"
            chunk_map = leecher.query_one(ChunkMap)
            await wait_until(pb, lambda: bool(chunk_map.cells())
                             and all(s == Cell.VERIFIED for s, _ in chunk_map.cells()))
            seeder_label = seeder.node.peer_id.short()
            assert {owner for _, owner in chunk_map.cells()} == {seeder_label}
            assert [label for label, _ in chunk_map.data.legend] == [seeder_label]
            assert len(chunk_map.data.states) == share.chunks

            # The seeder shows up in Peers.
            await wait_until(pb, lambda: any(r.peer == seeder.node.peer_id
                                             for r in leecher.query_one(PeersView).rows))
            row = next(r for r in leecher.query_one(PeersView).rows
                       if r.peer == seeder.node.peer_id)
            assert row.direction == "out"
            assert row.address == f"127.0.0.1:{seeder.node.port}"


async def test_malformed_ticket_shows_error_and_changes_nothing(base: Path) -> None:
    app = build_app(node_config(base, "a"), refresh_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, app.ready.is_set)
        assert app.node is not None
        await pilot.press("f")
        await wait_until(pilot, lambda: isinstance(app.screen, FetchScreen))
        screen = app.screen
        screen.query_one("#fetch-input", Input).post_message(
            events.Paste("p2pt1thisisnotaticket!!"))
        await pilot.pause()
        error = str(screen.query_one("#fetch-error", Static).render())
        assert "ticket" in error.lower()
        assert screen.query_one("#fetch-ok", Button).disabled
        await pilot.press("enter")  # refused: the dialog stays, nothing starts
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, FetchScreen))
        assert app.node.downloading() == set()
        assert app.node.library.downloads() == []
        assert app.transfers.rows() == []
    downloads = base / "a" / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())


async def test_quit_during_transfer_leaves_it_resumable(base: Path) -> None:
    from p2p.node import Node

    source = make_file(base / "files" / "big.bin", 128 * 1024 * 1024)
    async with Node(node_config(base, "seed")) as seed:
        boot = (("127.0.0.1", seed.port),)
        app = build_app(node_config(base, "b", boot), refresh_interval=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, app.ready.is_set)
            result = await seed.share(source)
            cid = result.content_id
            assert app.start_fetch(str(result.ticket)) == cid

            def some_verified() -> bool:
                row = app.transfers.row(cid)
                return row is not None and row.done_chunks > 0

            await wait_until(pilot, some_verified, seconds=30)
            await pilot.press("q")
            await wait_until(pilot, lambda: app._stopped, seconds=30)
        assert isinstance(app, P2PApp)

        with Library.open(base / "b" / "state") as library:
            info = library.download(cid)
        assert info is not None
        # Its node stopped while it ran: recorded so, for the next long-running node to resume.
        assert info.state == "interrupted", info
        assert 0 < info.done_chunks < info.chunks, info

        async with Node(node_config(base, "b", boot)) as again:
            path = (await again.fetch(result.ticket, timeout=20)).path
        assert filecmp.cmp(path, source, shallow=False)
