"""Peers that lie (issue 12, items 4-7 and the bad-chunk case of 9): about who published a
ticket's content, about where a node is, about where to dial, about what they hold, about
the chunks they send. Each liar is an attacker from :mod:`adversarial.hostile`; the victim
is a real ``p2p fetch`` or a real node.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from p2p.identity import PeerId
from p2p.library import Library
from p2p.node import Node
from p2p.wire.transport import connect

from . import hostile as h
from .conftest import MiB, cli, fetch_args, make_file, node_config

T = 60


@contextlib.asynccontextmanager
async def serving(provider: h.Provider | h.FolderProvider, host: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    """``provider`` listening on ``host``; yields its address."""
    listener = h.Listener(provider.identity, provider)
    try:
        yield await listener.start(host)
    finally:
        await listener.aclose()


async def test_ticket_impostor_with_the_same_bytes_under_its_own_signature_exits_4(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 4 * MiB, seed=41)
    content = h.FileContent.of(source)
    publisher = h.Identity()  # A: named by the ticket, not at its address
    impostor = h.Provider(content, h.Identity())
    async with asyncio.timeout(T), serving(impostor) as addr:
        forged = h.ticket_text(content.content_id, publisher.public_key, [addr])
        refused = await cli(*fetch_args(tmp_path / "dl0", forged, tmp_path / "out.bin"),
                            cwd=tmp_path)
        # Control: the same ticket naming the impostor as publisher fetches: what was
        # refused above is the publisher, nothing else.
        own = h.ticket_text(content.content_id, impostor.identity.public_key, [addr])
        accepted = await cli(*fetch_args(tmp_path / "dl1", own, tmp_path / "own.bin"),
                             cwd=tmp_path)
    assert impostor.asked_manifest.is_set()
    assert refused.code == 4, f"exit {refused.code}: {refused.stderr[-1500:]}"
    assert not (tmp_path / "out.bin").exists()
    with Library.open(tmp_path / "dl0") as library:
        assert library.downloads() == []  # nothing of the impostor's is recorded
    assert accepted.code == 0, accepted.stderr
    assert (tmp_path / "own.bin").read_bytes() == source.read_bytes()


async def test_peer_that_claims_everything_and_sends_nothing_ends_with_not_found(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 4 * MiB, seed=42)
    content = h.FileContent.of(source)
    liar = h.Provider(content, h.Identity(), mode="silent")
    timeout = 6
    async with asyncio.timeout(T), serving(liar) as addr:
        result = await cli(*fetch_args(tmp_path / "dl", h.content_id_text(content.content_id),
                                       tmp_path / "out.bin", [addr], timeout=timeout),
                           cwd=tmp_path)
    assert liar.requests, "the liar was never asked for a chunk"
    assert result.code == 3, f"exit {result.code}: {result.stderr[-1500:]}"
    assert result.seconds <= 3 * timeout + 5, result.seconds
    assert not (tmp_path / "out.bin").exists()


async def test_lone_peer_sending_bad_chunks_is_banned_and_fetch_exits_4(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 4 * MiB, seed=43)
    content = h.FileContent.of(source)
    liar = h.Provider(content, h.Identity(), mode="bad")
    async with asyncio.timeout(T), serving(liar) as addr:
        result = await cli(*fetch_args(tmp_path / "dl", h.content_id_text(content.content_id),
                                       tmp_path / "out.bin", [addr], timeout=4), cwd=tmp_path)
    assert liar.requests
    assert result.code == 4, f"exit {result.code}: {result.stderr[-1500:]}"
    assert not (tmp_path / "out.bin").exists()
    with Library.open(tmp_path / "dl") as library:
        assert library.is_banned(PeerId(liar.identity.public_key))


async def test_made_up_observed_address_neither_locks_out_honest_contacts_nor_is_announced(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 1 * MiB, seed=44)
    content = h.FileContent.of(source)
    lie = ("203.0.113.77", 7777)
    fake = h.Identity()
    liar = await h.DHTSocket.open("127.5.5.1", identity=fake,
                                  answer=h.fake_node_answers(fake, lambda _source: lie))
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(asyncio.timeout(T))
            node = await stack.enter_async_context(Node(node_config(tmp_path, "n")))
            addr = node.listen_address()
            node_id = h.node_id_for(node.public_key)
            # The liar is the first to be asked who it is, and answers with the made-up address.
            assert await liar.request(addr, "ping") == node_id
            await liar.wait_request("identify", addr)
            assert await liar.request(addr, "ping") == node_id
            honest = [await stack.enter_async_context(Node(node_config(tmp_path, name, [addr])))
                      for name in ("b", "c")]
            known = {entry[0] for entry in await liar.request(addr, "find_node", node_id)}
            for other in honest:
                assert h.node_id_for(other.public_key) in known, "an honest contact was refused"
            await node.share(source)
            key = h.discovery_key(content.content_id)
            announced = set()
            for other in honest:
                records, _ = await liar.request(other.listen_address(), "get", 1, key)
                for raw in records:
                    author, addrs = h.read_provider(raw, key)
                    if author == node.public_key:
                        announced.update(addrs)
            # The node announced to the liar too (one of the closest nodes): what it put there.
            for name, args, _source in liar.requests:
                if name == "put" and args[1] == key:
                    announced.update(h.read_provider(args[2], key)[1])
    finally:
        liar.close()
    assert announced, "the node's provider record was not found"
    assert lie not in announced, announced
    assert all(host != lie[0] for host, _port in announced), announced
    assert tuple(addr) in announced, (addr, announced)


async def test_hello_listing_third_parties_makes_the_node_dial_none_of_them(
        tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 1 * MiB, seed=45)
    listeners = [h.Listener(None, None) for _ in range(16)]
    try:
        third = [await lst.start(f"127.66.0.{1 + i}") for i, lst in enumerate(listeners[:8])]
        local = [await lst.start("127.0.0.1") for lst in listeners[8:]]
        claims = third + [(name, port) for name, (_host, port) in
                          zip(["localhost", "localhost.", "LOCALHOST", "localhost"] * 2, local,
                              strict=True)]
        async with asyncio.timeout(T), Node(node_config(tmp_path, "a")) as a, \
                Node(node_config(tmp_path, "s")) as s:
            shared = await s.share(source)
            steer = await h.dial(*a.listen_address(), source="127.55.0.1",
                                 listen=claims)
            # The honest seeder reaches A the same way, saying where it listens: A can only
            # find it there, so A does read the Hellos of its inbound peers while it fetches.
            inbound = await connect(*a.listen_address(), s._identity, expected_peer=a.peer_id,
                                    listen_addrs=s.addresses(), timeout=T)
            try:
                path = (await a.fetch(shared.content_id, tmp_path / "out.bin", timeout=8)).path
            finally:
                await inbound.aclose()
                await steer.aclose()
    finally:
        for lst in listeners:
            await lst.aclose()
    assert path.read_bytes() == source.read_bytes()
    dialled = {claim: lst.accepted for claim, lst in zip(claims, listeners, strict=True)
               if lst.accepted}
    assert not dialled, f"the node dialled third parties named in a Hello: {dialled}"
