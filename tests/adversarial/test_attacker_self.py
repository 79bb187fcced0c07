"""The attacker library against real nodes: if these fail, every other test here proves nothing.

The independent Noise XX handshake and identity proof complete against a real chunk server,
the Hello exchange names the node's peer id, and GetManifest returns the real manifest,
whose entries hash (by the document's rules, computed here) to the id the node printed.
The DHT datagram format gets an answer from a real node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from p2p.node import Node

from . import hostile as h
from .conftest import MiB, make_file, node_config

T = 20


async def test_independent_handshake_gets_the_real_manifest(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 4 * MiB, seed=3)
    content = h.FileContent.of(source)
    async with asyncio.timeout(T), Node(node_config(tmp_path, "seed")) as seed:
        shared = await seed.share(source)
        assert str(shared.content_id) == h.content_id_text(content.content_id)
        session = await h.dial(*seed.listen_address())
        try:
            assert h.peer_id_text(session.remote_key) == str(seed.peer_id)
            assert session.remote_hello is not None
            version, key, _addrs, _agent = session.remote_hello
            assert (version, key) == (h.PROTOCOL_VERSION, session.remote_key)
            await session.send(h.get_manifest(content.content_id),
                               h.get_bitfield(content.content_id), h.ping(77))
            got = await session.until(h.MANIFEST)
            assert got.fields[0] == content.content_id
            fields = h.read_manifest(got.fields[1])
            assert fields["publisher"] == session.remote_key
            assert fields["entries"] == [[source.name, content.size, content.chunk_size,
                                          b"".join(content.hashes)]]
            bits = await session.until(h.BITFIELD)
            assert bits.fields[1] == content.count
            assert (await session.until(h.PONG)).fields == [77]
            await session.send(h.request(content.content_id, 5))
            chunk = await session.until(h.DATA)
            assert chunk.fields[:2] == [content.content_id, 5]
            assert chunk.fields[2] == content.chunk(5)
        finally:
            await session.aclose()
        # The ticket the node made reads back with the document's layout.
        cid, publisher, addrs = h.parse_ticket(str(shared.ticket))
        assert (cid, publisher) == (content.content_id, session.remote_key)
        assert tuple(seed.listen_address()) in addrs


async def test_independent_dht_datagrams_are_answered(tmp_path: Path) -> None:
    async with asyncio.timeout(T), Node(node_config(tmp_path, "dht")) as node:
        sock = await h.DHTSocket.open("127.0.0.1")
        try:
            addr = node.listen_address()
            node_id = await sock.request(addr, "ping")
            assert node_id == h.node_id_for(node.public_key)
            nonce = bytes(range(32))
            pubkey, sig, ip, port = await sock.request(addr, "identify", nonce)
            assert pubkey == node.public_key
            h.verify(pubkey, sig, h.IDENTIFY_TAG + nonce + node_id + sock.identity.node_id
                     + h.pack([ip, port]))
            assert (ip, port) == sock.address
            # A record made here is accepted as valid (status 0) and read back.
            cid = bytes(32)
            key = h.discovery_key(cid)
            author = h.Identity()
            record = h.provider_record(author, key, [("127.9.9.9", 4000)],
                                       h.latest_provider_expiry())
            assert await sock.request(addr, "put", key, record) == h.PUT_OK
            records, _contacts = await sock.request(addr, "get", 1, key)
            assert records == [record]
            assert h.read_provider(records[0], key) == (author.public_key, [("127.9.9.9", 4000)])
        finally:
            sock.close()
