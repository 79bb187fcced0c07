"""Both address families: a swarm over ::1, dual-stack nodes, and stale addresses healed by
peer records. Real nodes, real sockets, loopback only."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

from p2p import ContentId, Node, NodeConfig, PeerConnected, PeerId, Ticket, make_ticket

from .conftest import MiB, drain, make_file, node_config

T = 20.0
"""Bound on each fetch: generous for a loaded 2-core machine, never waited on when it works."""


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")


def on(base: Path, name: str, host: str | tuple[str, ...],
       boot: tuple[tuple[str, int], ...] = ()) -> NodeConfig:
    """A test node listening on ``host`` (one literal, or one per family)."""
    return dataclasses.replace(node_config(base, name, boot), host=host)


@needs_ipv6
async def test_a_swarm_over_ipv6_only(tmp_path: Path) -> None:
    """Bootstrap, three seeders and a downloader on ::1: DHT, records and chunks all IPv6."""
    source = make_file(tmp_path / "src.bin", 3 * MiB + 17)
    async with Node(on(tmp_path, "boot", "::1")) as boot:
        contact = (boot.listen_address(),)
        async with Node(on(tmp_path, "s1", "::1", contact)) as s1, \
                Node(on(tmp_path, "s2", "::1", contact)) as s2, \
                Node(on(tmp_path, "s3", "::1", contact)) as s3:
            shared = await s1.share(source)
            await s2.fetch(shared.ticket, timeout=T)
            await s3.fetch(shared.ticket, timeout=T)
            async with Node(on(tmp_path, "dl", "::1", contact)) as dl:
                result = await dl.fetch(shared.content_id, tmp_path / "out.bin", timeout=T)
            assert all(":" in host for host, _ in shared.ticket.addresses)
    assert result.path.read_bytes() == source.read_bytes()
    assert set(result.chunks_by_peer) <= {s1.peer_id, s2.peer_id, s3.peer_id}
    assert sum(result.chunks_by_peer.values()) == result.chunks


@needs_ipv6
async def test_dual_stack_node_serves_both_families_on_one_port(tmp_path: Path) -> None:
    """An IPv4-only and an IPv6-only peer both fetch by id from one dual-stack node, which is
    their only DHT contact; its ticket carries both families."""
    source = make_file(tmp_path / "src.bin", 2 * MiB)
    async with Node(on(tmp_path, "dual", ("127.0.0.1", "::1"))) as dual:
        port = dual.port
        assert dual.listen_addresses() == [("127.0.0.1", port), ("::1", port)]
        async with Node(on(tmp_path, "v4", "127.0.0.1", (("127.0.0.1", port),))) as v4, \
                Node(on(tmp_path, "v6", "::1", (("::1", port),))) as v6:
            shared = await dual.share(source)
            families = {":" in host for host, _ in shared.ticket.addresses}
            assert families == {True, False}, shared.ticket.addresses
            with dual.events.subscribed() as sub:
                got4 = await v4.fetch(shared.content_id, tmp_path / "v4.bin", timeout=T)
                got6 = await v6.fetch(shared.content_id, tmp_path / "v6.bin", timeout=T)
                seen = drain(sub)
            # Each reached the same node, each over its own family.
            inbound = {(e.peer, e.address[0]) for e in seen
                       if isinstance(e, PeerConnected) and e.inbound}
            assert (v4.peer_id, "127.0.0.1") in inbound and (v6.peer_id, "::1") in inbound
    for got in (got4, got6):
        assert got.path.read_bytes() == source.read_bytes()
    assert set(got4.chunks_by_peer) == {dual.peer_id}
    # The second fetch may also take chunks from the first downloader, now a provider too.
    assert dual.peer_id in got6.chunks_by_peer
    assert set(got6.chunks_by_peer) <= {dual.peer_id, v4.peer_id}


async def test_a_stale_provider_address_is_healed_by_the_peer_record(tmp_path: Path) -> None:
    """A provider record names a dead address; the provider's own peer record names the live
    one. A fetch by content id dials the dead one, looks the peer up and completes."""
    source = make_file(tmp_path / "src.bin", 1 * MiB)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        dead_addr = dead.getsockname()
        async with Node(node_config(tmp_path, "boot")) as boot:
            contact = (boot.listen_address(),)
            stale = dataclasses.replace(node_config(tmp_path, "sharer", contact),
                                        announce_addrs=(dead_addr,))
            async with Node(stale) as sharer, Node(node_config(tmp_path, "dl", contact)) as dl:
                shared = await sharer.share(source)
                # The peer record tells the truth (as it does after the sharer moved).
                assert await sharer._dht.announce_peer([sharer.listen_address()]) >= 1
                async with asyncio.timeout(T):
                    result = await dl.fetch(shared.content_id, tmp_path / "out.bin", timeout=T)
    assert result.path.read_bytes() == source.read_bytes()
    assert set(result.chunks_by_peer) == {sharer.peer_id}


def test_ticket_keeps_both_families() -> None:
    ticket = make_ticket(ContentId(bytes(32)), PeerId(bytes(32)),
                         [("0.0.0.0", 1), ("198.51.100.2", 7473), ("::", 1), ("2001:db8::2", 7473)])
    again = Ticket.parse(str(ticket))
    assert again.addresses == (("198.51.100.2", 7473), ("2001:db8::2", 7473))
