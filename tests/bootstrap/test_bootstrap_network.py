"""The daemon as a first contact: peers join through it and find each other's records; a
flood of garbage from one address does not stop it answering others."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from daemonproc import LOOPBACK_FLAGS, peers, raw_socket, running, scrape, total, value

from p2p.dht.protocol import MAX_DATAGRAM, REQUEST
from p2p.encoding import pack

PEERS = 20
PROVIDERS = 5


async def test_twenty_peers_join_and_find_each_others_providers(tmp_path: Path) -> None:
    async with running(tmp_path, tmp_path / "b", *LOOPBACK_FLAGS, "--rate-limit-per-ip",
                       "none") as daemon, peers(PEERS, daemon.addr) as nodes:
        assert all(len(n.protocol.router) > 1 for n in nodes), "a peer learned only the daemon"
        content = {os.urandom(32): nodes[i] for i in range(PROVIDERS)}
        async with asyncio.timeout(30):
            await asyncio.gather(*(node.announce(cid) for cid, node in content.items()))
        seekers = nodes[PROVIDERS:]

        async def found(seeker_index: int, cid: bytes) -> bool:
            records = await seekers[seeker_index].find_providers(cid)
            return str(content[cid].node_id) in {str(r.peer_id.node_id) for r in records}

        async with asyncio.timeout(30):
            results = await asyncio.gather(*(found(i, cid)
                                             for i in range(len(seekers)) for cid in content))
        assert all(results), f"{results.count(False)} of {len(results)} lookups missed a provider"
        samples = await scrape(daemon.metrics)
        assert value(samples, "p2p_bootstrap_routing_table_contacts") == PEERS


def garbage(rng: random.Random, n: int) -> list[bytes]:
    """Datagrams of every malformed kind the dispatcher rejects (and a few it cannot parse)."""
    out = []
    for i in range(n):
        if i % 50 == 1:  # few: each fills ~12 KiB of the daemon's socket buffer
            out.append(rng.randbytes(MAX_DATAGRAM + 1))  # too large
            continue
        match i % 4:
            case 0:
                out.append(rng.randbytes(rng.randrange(0, 21)))  # too small
            case 1:
                out.append(bytes([0x7F]) + rng.randbytes(60))  # unknown type
            case 2:
                out.append(bytes([REQUEST]) + rng.randbytes(20) + b"\xc1" * 30)  # bad encoding
            case _:
                out.append(bytes([REQUEST]) + rng.randbytes(20) + pack(["nope", [b"x"]]))
    return out


async def test_garbage_flood_is_rate_limited_and_others_are_still_answered(tmp_path: Path) -> None:
    rng = random.Random(6)
    # 3000 datagrams, in batches that fit the daemon's socket buffer (the kernel's default
    # 208 KiB): beyond that the kernel drops datagrams, honest or not, before the daemon sees them.
    batches, per_batch = 30, 100
    async with (running(tmp_path, tmp_path / "b", *LOOPBACK_FLAGS) as daemon,
                raw_socket("127.0.0.2") as attacker, raw_socket("127.0.0.1") as honest):
        daemon_id = bytes.fromhex(daemon.announce["node_id"])
        before = await scrape(daemon.metrics)
        for _ in range(batches):
            for datagram in garbage(rng, per_batch):
                attacker.send(datagram, daemon.addr)
            # The daemon reads its socket in order: once this answer is back, the batch
            # before it has been handled (or dropped by the kernel).
            assert await honest.ping(daemon.addr, daemon_id) == pack(daemon_id)
        assert attacker.received.empty(), "the daemon answered garbage"

        # An honest node can still join and look things up through it.
        async with peers(1, daemon.addr) as (node,):
            assert await node.bootstrap([daemon.addr]) == 1
            assert await node.find_providers(os.urandom(32)) == []

        after = await scrape(daemon.metrics)
        rejected = "p2p_bootstrap_packets_rejected_total"
        assert value(after, rejected, reason="rate_limited") > 0
        for reason in ("too_small", "too_large", "unknown_type", "bad_encoding", "unknown_rpc"):
            assert value(after, rejected, reason=reason) > 0, reason
        assert total(after, rejected) - total(before, rejected) >= 1000
        assert value(after, "p2p_bootstrap_rpcs_received_total", rpc="ping") >= batches
