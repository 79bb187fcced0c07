"""A ticket's publisher is binding, exactly as ``--from`` is.

Content ids cover the bytes only, so anyone holding the same bytes can serve them under a
manifest signed with their own key. A ticket names the publisher it was made for: a peer
at the ticket's address serving the same bytes under another signature is an impostor.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from testbed import MiB, make_file, node_config

from p2p import Node, WrongPublisher, make_ticket

T = 20.0


async def test_an_impostor_at_the_tickets_address_is_refused(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src.bin", 1 * MiB)
    async with Node(node_config(tmp_path, "alice")) as alice, \
            Node(node_config(tmp_path, "mallory")) as mallory, \
            Node(node_config(tmp_path, "bob")) as bob:
        honest = await alice.share(source)
        copy = await mallory.share(source)  # the same bytes, Mallory's signature
        assert copy.content_id == honest.content_id
        assert copy.manifest.publisher == mallory.peer_id != alice.peer_id
        # Alice's ticket, but with Mallory's address in it.
        forged = make_ticket(honest.content_id, alice.peer_id, mallory.addresses())
        with pytest.raises(WrongPublisher) as failed:
            await bob.fetch(forged, tmp_path / "out.bin", timeout=T)
        assert failed.value.exit_code == 4
        assert not (tmp_path / "out.bin").exists()
        assert bob.library.download(honest.content_id) is None  # nothing recorded as Mallory's
        # The genuine ticket still works, and records Alice as the publisher.
        result = await bob.fetch(honest.ticket, tmp_path / "out.bin", timeout=T)
        assert result.path.read_bytes() == source.read_bytes()
        manifest = bob.library.manifest(honest.content_id)
        assert manifest is not None and manifest.publisher == alice.peer_id


async def test_from_must_agree_with_the_ticket(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src.bin", 64 * 1024)
    async with Node(node_config(tmp_path, "alice")) as alice, \
            Node(node_config(tmp_path, "bob")) as bob:
        shared = await alice.share(source)
        with pytest.raises(WrongPublisher, match="the ticket names publisher"):
            await bob.fetch(shared.ticket, tmp_path / "out.bin", publisher=bob.peer_id, timeout=T)
        result = await bob.fetch(shared.ticket, tmp_path / "out.bin", publisher=alice.peer_id,
                                 timeout=T)
        assert result.path.read_bytes() == source.read_bytes()
