"""A put's record argument, as docs/PROTOCOL.md (DHT, RPCs) says: a record that is not a bin
is a bad argument and gets no reply; a bin that is not a valid record is answered 1 (invalid)
and nothing is stored. The datagrams are written from the document over a real socket."""

from __future__ import annotations

import asyncio
import os

from dhtnet import network, raw_peer, request

from p2p.encoding import pack


async def test_a_put_answers_invalid_for_a_malformed_bin_record_and_nothing_for_a_non_bin() -> None:
    async with network(1) as (node,), raw_peer() as raw:
        target = ("127.0.0.1", node.port)
        sender, key = os.urandom(20), os.urandom(20)
        silent = [os.urandom(20) for _ in range(5)]
        answered, last = os.urandom(20), os.urandom(20)
        for msg_id, record in zip(silent, (5, "record", None, [b"\x01"], True), strict=True):
            raw.send(request("put", [sender, key, record], msg_id), target)
        raw.send(request("put", [sender, key, b"\x93\x01\x02\x03"], answered), target)
        raw.send(request("ping", [sender], last), target)  # answered after all the puts
        replies: dict[bytes, bytes] = {}
        async with asyncio.timeout(5):
            while last not in replies:
                data, _ = await raw.received.get()
                if data[0] == 0x11:  # a response; the node also sends us identify requests
                    replies[data[1:21]] = data[21:]
        assert replies.keys() == {answered, last}
        assert replies[answered] == pack(1)  # PutStatus.INVALID
        stats = node.summary().to_json()
        assert stats["rejected"]["bad_arguments"] == len(silent)
        assert stats["rejected"]["invalid_record"] == 1
        assert stats["records"] == {"provider": 0, "peer": 0, "channel": 0}
