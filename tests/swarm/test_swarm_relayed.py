"""A share that others cannot dial, fetched through its relay: real nodes in one process on
127.0.0.1, port 0. The sharer announces an address where nothing listens (what a NATed
node's own address is to the others), so only its relay hints lead to it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from p2p import RelayLimits
from p2p.content import Ticket
from p2p.events import DownloadProgress, LogMessage, PeerConnected, PeerDropped
from p2p.node import Node
from p2p.wire.transport import Connection

from .conftest import MiB, make_file, node_config

T = 60


def dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_share_only_its_relay_reaches_is_fetched_through_it(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "film.bin", 8 * MiB)
    async with Node(node_config(tmp_path, "relay", relay=True, dht_mode="server")) as relay:
        boot = [relay.listen_address()]
        hidden = node_config(tmp_path, "sharer", boot, dht_mode="client",
                             announce_addrs=(("127.0.0.1", dead_port()),))
        async with Node(hidden) as sharer:
            circuits: list[tuple[Connection, bool]] = []
            sharer.add_circuit_hook(lambda conn, inbound: circuits.append((conn, inbound)))
            async with asyncio.timeout(T):
                shared = await sharer.share(source)
            (hint,) = sharer.relay_hints()
            assert hint.relay == relay.peer_id and hint.address == relay.listen_address()
            assert [host for host, _ in sharer.observed_by_relays()] == ["127.0.0.1"]
            ticket = Ticket.parse(str(shared.ticket))
            assert ticket.relays == (hint,)
            assert relay.relay is not None and relay.relay.reserved() == [sharer.peer_id]
            # No hole punch: on loopback it would open at once, and every byte is to cross
            # the relay here (test_a_relayed_fetch_moves_to_a_punched_connection punches).
            fetcher_config = node_config(tmp_path, "fetcher", boot, dht_mode="client",
                                         hole_punching=False)
            async with Node(fetcher_config) as fetcher:
                sub = fetcher.events.subscribe()
                async with asyncio.timeout(T):
                    # By content id: the provider record names the relay hint.
                    result = await fetcher.fetch(shared.content_id, tmp_path / "out.bin",
                                                 timeout=T)
                assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
                assert set(result.chunks_by_peer) == {sharer.peer_id}
                # how each supplier was reached, as `p2p fetch --json`'s completed event says
                assert result.to_json()["paths"] == {str(sharer.peer_id): "relayed"}
                connected, progress = [], []
                while (event := sub.get_nowait()) is not None:
                    if isinstance(event, PeerConnected):
                        connected.append(event)
                    elif isinstance(event, DownloadProgress):
                        progress.append(event)
                assert any(e.peer == sharer.peer_id for e in connected)
                # the progress line's peers say how they are reached while it runs
                assert progress and progress[-1].paths == {str(sharer.peer_id): "relayed"}
            assert circuits and circuits[0][1] is True
            assert circuits[0][0].via == relay.peer_id
            stats = relay.relay.stats()
            assert stats["circuits_opened"] >= 1
            assert isinstance(stats["bytes_relayed"], int)
            assert stats["bytes_relayed"] > 8 * MiB


async def test_a_ticket_with_relay_hints_is_enough(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "notes.bin", 1 * MiB, seed=3)
    async with Node(node_config(tmp_path, "relay", relay=True, dht_mode="server")) as relay:
        boot = [relay.listen_address()]
        hidden = node_config(tmp_path, "sharer", boot, dht_mode="client",
                             announce_addrs=(("127.0.0.1", dead_port()),))
        async with Node(hidden) as sharer:
            circuits: list[Connection] = []
            sharer.add_circuit_hook(lambda conn, _inbound: circuits.append(conn))
            async with asyncio.timeout(T):
                shared = await sharer.share(source)
            # No DHT for the fetcher, and a ticket of relay hints only (what a NATed sharer's
            # is): the relay is the one way in.
            made = Ticket.parse(str(shared.ticket))
            ticket = Ticket.parse(str(Ticket(made.content_id, made.publisher, (), made.relays)))
            assert ticket.addresses == () and ticket.relays == made.relays
            async with Node(node_config(tmp_path, "fetcher", hole_punching=False)) as fetcher:
                async with asyncio.timeout(T):
                    result = await fetcher.fetch(ticket, tmp_path / "out.bin", timeout=T)
            assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
            assert set(result.chunks_by_peer) == {sharer.peer_id}
            assert result.paths == {sharer.peer_id: "relayed"}
            assert [c.via for c in circuits] == [relay.peer_id]


@pytest.mark.slow
async def test_the_default_limits_let_a_relayed_fetch_of_more_than_a_gib_complete(
        tmp_path: Path) -> None:
    size = (1 << 30) + 64 * MiB
    source = make_file(tmp_path / "src" / "disk.img", size, seed=7)
    async with Node(node_config(tmp_path, "relay", relay=True, dht_mode="server")) as relay:
        assert relay.relay is not None and relay.relay.limits == RelayLimits()
        boot = [relay.listen_address()]
        hidden = node_config(tmp_path, "sharer", boot, dht_mode="client",
                             announce_addrs=(("127.0.0.1", dead_port()),))
        async with Node(hidden) as sharer:
            async with asyncio.timeout(T):
                shared = await sharer.share(source)
            made = Ticket.parse(str(shared.ticket))
            ticket = Ticket(made.content_id, made.publisher, (), made.relays)
            async with Node(node_config(tmp_path, "fetcher", hole_punching=False)) as fetcher:
                async with asyncio.timeout(4 * T):
                    result = await fetcher.fetch(ticket, tmp_path / "out.img", timeout=T)
        assert result.size == size
        stats = relay.relay.stats()
        assert stats["circuits_closed"] in ({}, {"closed": 1})  # never cut by a limit
        assert isinstance(stats["bytes_relayed"], int) and stats["bytes_relayed"] > size
    assert _same_file(tmp_path / "out.img", source)


async def test_a_relayed_fetch_moves_to_a_punched_connection(tmp_path: Path) -> None:
    # The circuit's two ends punch a direct connection at once (on loopback it opens on the
    # first round); the download moves to it and the sharer serves it.
    source = make_file(tmp_path / "src" / "film.bin", 16 * MiB, seed=5)
    async with Node(node_config(tmp_path, "relay", relay=True, dht_mode="server")) as relay:
        boot = [relay.listen_address()]
        hidden = node_config(tmp_path, "sharer", boot, dht_mode="client",
                             announce_addrs=(("127.0.0.1", dead_port()),))
        async with Node(hidden) as sharer:
            async with asyncio.timeout(T):
                shared = await sharer.share(source)
            # The reservation left from the listen port: the relay saw that port.
            assert sharer.observed_by_relays() == [("127.0.0.1", sharer.port)]
            async with Node(node_config(tmp_path, "fetcher", boot, dht_mode="client")) as fetcher:
                sub = fetcher.events.subscribe()
                async with asyncio.timeout(T):
                    result = await fetcher.fetch(shared.content_id, tmp_path / "out.bin",
                                                 timeout=T)
                assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
                assert set(result.chunks_by_peer) == {sharer.peer_id}
                assert result.to_json()["paths"] == {str(sharer.peer_id): "punched"}
                dropped, progress = [], []
                while (event := sub.get_nowait()) is not None:
                    if isinstance(event, PeerDropped) and event.peer == sharer.peer_id:
                        dropped.append(event.reason)
                    elif isinstance(event, DownloadProgress):
                        progress.append(event)
                assert progress and progress[-1].paths == {str(sharer.peer_id): "punched"}
                assert set(dropped) <= {"download stopped"}  # moving to the direct one drops nobody
            # The sharer served the punched connection as an inbound one.
            assert relay.relay is not None
            stats = relay.relay.stats()
            assert stats["circuits_opened"] >= 1
            assert isinstance(stats["bytes_relayed"], int) and stats["bytes_relayed"] < 16 * MiB


async def test_the_peer_rows_say_punched(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "big.bin", 64 * MiB, seed=6)
    async with Node(node_config(tmp_path, "relay", relay=True, dht_mode="server")) as relay:
        boot = [relay.listen_address()]
        hidden = node_config(tmp_path, "sharer", boot, dht_mode="client",
                             announce_addrs=(("127.0.0.1", dead_port()),))
        async with Node(hidden) as sharer:
            async with asyncio.timeout(T):
                shared = await sharer.share(source)
            # Slow enough that the transfer is still running when the punch has opened.
            config = node_config(tmp_path, "fetcher", boot, dht_mode="client",
                                 max_download_rate=8 * MiB)
            async with Node(config) as fetcher:
                sub = sharer.events.subscribe()
                fetcher.start_fetch(shared.content_id, tmp_path / "out.bin")
                async with asyncio.timeout(T):
                    # The sharer's log says when the direct connection is served.
                    while True:
                        event = await sub.get()
                        if isinstance(event, LogMessage) and "hole punched" in event.message:
                            break
                rows = {(str(p.peer), p.direction): p.to_json() for p in sharer.peers()}
                assert rows[(str(fetcher.peer_id), "in")]["path"] == "punched", rows
                assert "via" not in rows[(str(fetcher.peer_id), "in")]
                # What was in flight on the circuit when it closed is asked again: the file
                # is whole.
                fetcher.set_limits(down=0)
                async with asyncio.timeout(T):
                    await fetcher.join(shared.content_id)
                assert _same_file(tmp_path / "out.bin", source)


def _same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(8 * MiB), fb.read(8 * MiB)
            if x != y:
                return False
            if not x:
                return True
