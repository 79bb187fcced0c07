"""Code and document agree where an attacker would probe (issue 12, item 9), checked with
frames and datagrams built from docs/PROTOCOL.md alone: a Request past the last chunk is
answered Reject ``BAD_INDEX`` (4); a Request whose index is not in its smallest form
(``cc 05``) closes the connection unanswered; a frame of an unknown type closes that
connection and nothing else; a Hello of another version gets a Goodbye; a ``put`` whose
record is a bin but not a valid record is answered 1 (invalid), one whose record is not a
bin gets no reply.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from p2p.node import Node

from . import hostile as h
from .conftest import MiB, make_file, node_config

T = 20


async def frames_until_closed(session: h.Session) -> list[h.Message]:
    """Every frame received until the far end closes."""
    got = []
    try:
        while True:
            got.append(await session.receive())
    except h.Closed:
        return got


async def test_wire_answers_as_documented(tmp_path: Path) -> None:
    source = make_file(tmp_path / "src" / "data.bin", 1 * MiB, seed=51)
    content = h.FileContent.of(source)
    cid = content.content_id
    async with asyncio.timeout(T), Node(node_config(tmp_path, "seed")) as seed:
        await seed.share(source)
        addr = seed.listen_address()
        session = await h.dial(*addr)
        try:
            await session.send(h.request(cid, content.count), h.request(cid, content.count + 100),
                               h.request(cid, content.count - 1))
            first, second, last = [await session.receive() for _ in range(3)]
            assert (first.type, first.fields) == (h.REJECT, [cid, content.count, h.BAD_INDEX])
            assert (second.type, second.fields[2]) == (h.REJECT, h.BAD_INDEX)
            assert (last.type, last.fields[1]) == (h.DATA, content.count - 1)
            # Request(cid, 5) with the index widened to a uint8: the same value, another body.
            widened = h.frame(h.REQUEST, b"\x92\xc4\x20" + cid + h.pack_uint_wide(5))
            assert h.frame(h.REQUEST, b"\x92\xc4\x20" + cid + b"\x05") == h.request(cid, 5)
            await session.send(widened, h.ping(1))
            assert not [m for m in await frames_until_closed(session)
                        if m.type in (h.DATA, h.PONG)]
        finally:
            await session.aclose()
        garbage = await h.dial(*addr)
        try:
            await garbage.send(h.frame(99, h.pack([1])), h.ping(2))
            assert not [m for m in await frames_until_closed(garbage) if m.type == h.PONG]
        finally:
            await garbage.aclose()
        # The node is fine: a new session is answered.
        again = await h.dial(*addr)
        try:
            await again.send(h.ping(3))
            assert (await again.until(h.PONG)).fields == [3]
        finally:
            await again.aclose()
        # Another version: Goodbye, then close.
        identity = h.Identity()
        old = await h.open_tcp(*addr)
        try:
            with_v2 = h.hello(identity.public_key, version=2)
            other = await h.initiate(*old, identity, hello_frame=with_v2)
            bye = [m for m in await frames_until_closed(other) if m.type == h.GOODBYE]
            assert bye and "version" in bye[0].fields[0], bye
        finally:
            old[1].transport.abort()


async def test_dht_put_answers_as_documented(tmp_path: Path) -> None:
    async with asyncio.timeout(T), Node(node_config(tmp_path, "n")) as node:
        target = node.listen_address()
        sock = await h.DHTSocket.open("127.0.0.1")
        try:
            key = h.discovery_key(bytes(32))
            author = h.Identity()
            expires = h.latest_provider_expiry()
            good = h.provider_record(author, key, [("127.0.0.9", 4000)], expires)
            elsewhere = h.provider_record(author, h.discovery_key(b"\1" * 32),
                                          [("127.0.0.9", 4000)], expires)
            too_late = h.provider_record(author, key, [("127.0.0.9", 4000)], expires + 3600)
            tampered = good[:-1] + bytes([good[-1] ^ 1])
            for bad in (b"\x93\x01\x02\x03", b"\xc1", elsewhere, too_late, tampered,
                        h.pack([1, author.public_key, [["localhost", 4000]], expires,
                                bytes(64)])):
                assert await sock.request(target, "put", key, bad) == h.PUT_INVALID, bad
            assert await sock.request(target, "put", key, good) == h.PUT_OK
            # A record that is not a bin at all is a bad argument: no reply.
            try:
                answer = await sock.request(target, "put", key, "not a bin", timeout=1.0)
            except TimeoutError:
                answer = None
            assert answer is None
        finally:
            sock.close()
