"""Swarm downloads against hostile or flaky peers, between real nodes on 127.0.0.1 (port 0).

Regression tests: a wrong-sized bitfield that arrives before the manifest, a destination that
already exists, and a peer found only through its inbound connection's Hello. (A ticket address
whose connection drops mid-transfer is dialled again at the next discovery round: that is tested
on a fake clock in test_download_clock.py.)
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from p2p.errors import BadInput, NotFound, StateDirLocked, StoreError
from p2p.identity import Identity
from p2p.node import Node
from p2p.store import PARTIAL_SUFFIX
from p2p.wire.messages import Bitfield, Manifest, Message, Ping, Pong
from p2p.wire.server import Server
from p2p.wire.transport import Connection, connect

from .conftest import MiB, make_file, node_config

T = 30  # deadline for any single awaited step on a loaded machine
HOSTILE_BITFIELD = (1, b"\x80")


class NoManifestSource:
    """A peer that never provides the manifest and claims a bitfield of one chunk."""

    def manifest(self, content_id: bytes) -> bytes | None:
        return None

    def bitfield(self, content_id: bytes) -> tuple[int, bytes] | None:
        return HOSTILE_BITFIELD

    def read_chunk(self, content_id: bytes, index: int) -> bytes:
        raise NotFound("a hostile peer serves nothing")


async def test_wrong_sized_bitfield_before_manifest_bans_peer_and_download_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_file(tmp_path / "src" / "movie.bin", 1 * MiB)  # 16 chunks, not 1
    bitfield_handled = asyncio.Event()
    """Set when the downloader answered a Ping the hostile peer sent right after its Bitfield:
    it handles one connection's messages in order, so the bad bitfield is recorded by then."""
    nonces = itertools.count(1)
    send = Connection.send

    async def ordered_send(conn: Connection, message: Message) -> None:
        if isinstance(message, Manifest) and message.data is not None:
            # The honest seeder's manifest is verified only once the hostile bitfield is held:
            # the order in which the old code crashed iterating its peers.
            await bitfield_handled.wait()
        await send(conn, message)
        if isinstance(message, Bitfield) and message.chunk_count == HOSTILE_BITFIELD[0]:
            receive = conn.receive

            async def watch_for_pong() -> Message:
                got = await receive()
                if isinstance(got, Pong):
                    bitfield_handled.set()
                return got

            conn.receive = watch_for_pong  # type: ignore[method-assign]
            await send(conn, Ping(next(nonces)))

    monkeypatch.setattr(Connection, "send", ordered_send)
    hostile = Server(Identity.generate(), NoManifestSource())
    hostile_addr = await hostile.start("127.0.0.1", 0)
    try:
        async with asyncio.timeout(T), Node(node_config(tmp_path, "honest")) as honest, \
                Node(node_config(tmp_path, "dl")) as dl:
            shared = await honest.share(source)
            path = (await dl.fetch(shared.content_id, tmp_path / "out.bin",
                                  peers=[hostile_addr, honest.listen_address()], timeout=T)).path
            assert bitfield_handled.is_set()
            assert path.read_bytes() == source.read_bytes()
            assert dl.library.is_banned(hostile.identity.peer_id)
            assert not dl.library.is_banned(honest.peer_id)
    finally:
        await hostile.aclose()


async def test_existing_destination_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "movie.bin", 1 * MiB)
    dest = tmp_path / "out" / "movie.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"somebody else's file")
    async with asyncio.timeout(T), Node(node_config(tmp_path, "seed")) as seed, \
            Node(node_config(tmp_path, "dl")) as dl:
        shared = await seed.share(source)
        with pytest.raises(BadInput, match="already exists"):
            await dl.fetch(shared.ticket, dest, timeout=T)
        assert dest.read_bytes() == b"somebody else's file"
        assert not dest.with_name(dest.name + PARTIAL_SUFFIX).exists()
        assert dl.library.download(shared.content_id) is None


async def test_destination_taken_during_the_download_keeps_partial_then_same_node_fetches_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_file(tmp_path / "src" / "movie.bin", 1 * MiB)
    dest = tmp_path / "out" / "movie.bin"
    dest.parent.mkdir()
    async with asyncio.timeout(T), Node(node_config(tmp_path, "seed")) as seed, \
            Node(node_config(tmp_path, "dl")) as dl:
        shared = await seed.share(source)
        open_download = dl._store.open_download

        def taken_meanwhile(manifest, where, listing=None, **kwargs):  # type: ignore[no-untyped-def]
            partial = open_download(manifest, where, listing, **kwargs)
            dest.write_bytes(b"somebody else's file")  # another program writes there meanwhile
            return partial

        monkeypatch.setattr(dl._store, "open_download", taken_meanwhile)
        with pytest.raises(StoreError, match="already exists") as failed:
            await dl.fetch(shared.ticket, dest, timeout=T)
        monkeypatch.undo()
        assert not isinstance(failed.value, StateDirLocked)
        assert dest.read_bytes() == b"somebody else's file"  # never overwritten
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        assert partial.stat().st_size == source.stat().st_size  # every chunk kept
        dest.unlink()
        # Same node, same id: the failed finalize released the download's lock.
        path = (await dl.fetch(shared.ticket, dest, timeout=T)).path
        assert path == dest.resolve()
        assert path.read_bytes() == source.read_bytes()
        assert not partial.exists()


async def test_inbound_peer_is_dialled_at_its_hello_listen_address(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "only-b.bin", 1 * MiB)
    async with asyncio.timeout(T), Node(node_config(tmp_path, "a")) as a, \
            Node(node_config(tmp_path, "b")) as b:
        shared = await b.share(source)
        # B talks to A first (inbound to A), from an ephemeral port, saying where it listens.
        inbound = await connect(*a.listen_address(), b._identity, expected_peer=a.peer_id,
                                listen_addrs=b.addresses(), timeout=T)
        try:
            [info] = a._server.connections()
            assert info.peer == b.peer_id
            assert info.address != b.listen_address()  # the socket's port is not B's listener
            # No DHT contacts, no peers=, no ticket: only the inbound connection tells A of B.
            path = (await a.fetch(shared.content_id, tmp_path / "out.bin", timeout=8)).path
        finally:
            await inbound.aclose()
        assert path.read_bytes() == source.read_bytes()
