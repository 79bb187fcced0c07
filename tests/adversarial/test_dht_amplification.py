"""DHT amplification (issue 12, item 8): from a source that never proved itself (it does not
answer ``identify``), raw ``get``/``find_node`` (also with an empty or made-up address token)/``ping``/``identify``/``put`` datagrams
get replies of at most 3x their size, and all datagrams the node sends that address add up
to at most 3x what it sent: a forged source cannot use the DHT as an amplifier.

The node is made as rich an amplifier as it can be: 20 proven contacts in its table and
16 provider records (from 16 networks) under the probed key. A proven contact still gets
all of them: the bound is on unproven sources, not a DHT that stopped answering.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from p2p.node import Node

from . import hostile as h
from .conftest import node_config

MAX_AMPLIFICATION = 3.0
T = 30


async def test_unproven_source_gets_at_most_three_times_what_it_sent(tmp_path: Path) -> None:
    key = h.discovery_key(bytes(range(32)))
    async with asyncio.timeout(T), Node(node_config(tmp_path, "n")) as node:
        target = node.listen_address()
        contacts = await h.proven_contacts(target, range(40, 60))
        try:
            # Each of 16 contacts provides under the key, at its own address.
            expires = h.latest_provider_expiry()
            puts = [c.request(target, "put", key, h.provider_record(c.identity, key,
                                                                    [c.address], expires))
                    for c in contacts[:16]]
            assert await asyncio.gather(*puts) == [h.PUT_OK] * 16
            helper = contacts[16]
            # A proven contact is answered in full.
            held, near = await helper.request(target, "get", 1, key)
            assert len(held) == 16 and len(near) >= 16
            probe = await h.amplification_probe(target, key)
            try:
                worst, total = h.worst_amplification(probe, target)
                detail = [(name, req, reply) for name, req, reply in probe.replies]
                traffic = probe.traffic[target]
            finally:
                probe.close()
        finally:
            for sock in contacts:
                sock.close()
    assert worst <= MAX_AMPLIFICATION, f"a reply was {worst:.1f}x its request: {detail}"
    assert total <= MAX_AMPLIFICATION, (
        f"{traffic.received} bytes in {traffic.datagrams_in} datagrams sent to an address "
        f"that sent {traffic.sent}: {total:.1f}x")
