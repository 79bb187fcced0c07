"""LAN discovery latency: from a node's start to a LAN peer being its DHT contact.

Two real nodes in one process, each on every address of this host (port 0), with LAN
discovery on under a service type of this run's own (so no other node on the network
answers): node A starts and registers; then node B starts, and the time from B's start to
A being a verified DHT contact of B (mDNS browse, resolve, ``identify``) is measured,
``--runs`` times with fresh nodes. The reference beside it is one DHT ``identify`` round trip
between the same two nodes (what verification alone costs). Needs an interface with
multicast (not loopback only).

    .venv/bin/python bench/lan.py            # 5 runs
    .venv/bin/python bench/lan.py --runs 20

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from p2p.node import Node, NodeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from folder import machine_speeds


def config(base: Path, name: str, service: str) -> NodeConfig:
    return NodeConfig(state_dir=base / name, host="0.0.0.0", port=0, download_dir=base / "dl",
                      lan_discovery=True, lan_service=service, dht_mode="server",
                      announce_shares=False)


async def one(base: Path, run: int) -> tuple[float, float]:
    service = f"_p2pb{os.getpid() % 10000}r{run}._tcp.local."
    async with Node(config(base, f"a{run}", service)) as a:
        assert a._lan is not None
        await asyncio.wait_for(a._lan.ready.wait(), 10)
        started = time.perf_counter()
        async with Node(config(base, f"b{run}", service)) as b:
            await asyncio.wait_for(b.wait_for_lan_contact(a.peer_id), 15)
            found = time.perf_counter() - started
            peer = b.lan_peers()[0]
            t0 = time.perf_counter()
            assert await b._dht.add_contact(peer.dht_addresses, a.peer_id)
            identify = time.perf_counter() - t0
    return found, identify


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    found: list[float] = []
    ident: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            f, i = await one(Path(tmp), run)
            found.append(f)
            ident.append(i)
            print(f"run {run + 1}: LAN peer a DHT contact {f * 1000:.0f} ms after start "
                  f"(identify alone {i * 1000:.1f} ms)")
        (Path(tmp) / "runs").mkdir()
        speeds = machine_speeds(Path(tmp))
    print(f"median {statistics.median(found) * 1000:.0f} ms, max {max(found) * 1000:.0f} ms; "
          f"reproduce: .venv/bin/python bench/lan.py --runs {args.runs}")
    print(json.dumps({"bench": "lan", "runs": args.runs,
                      "discovery_ms_median": round(statistics.median(found) * 1000, 1),
                      "discovery_ms_max": round(max(found) * 1000, 1),
                      "identify_ms_median": round(statistics.median(ident) * 1000, 2),
                      **speeds}))


if __name__ == "__main__":
    asyncio.run(main())
