"""DHT benchmark: N nodes in one process on 127.0.0.1, then the same with 20% of them dead.

Run:  python bench/dht.py --nodes 200   (and --nodes 500; --dual: every node on 127.0.0.1 and ::1)
Prints figures, the command, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from typing import Any

from p2p.dht import DHT, DHTConfig
from p2p.identity import Identity

CFG = DHTConfig(max_contacts_per_ip=None, rate_limit_per_ip=None)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def phase(nodes: list[DHT], rng: random.Random, lookups: int, announces: int) -> dict[str, Any]:
    announce_ms, cids = [], []
    for _ in range(announces):
        cid = os.urandom(32)
        provider = rng.choice(nodes)
        t = time.perf_counter()
        await provider.announce(cid)
        announce_ms.append((time.perf_counter() - t) * 1000)
        cids.append((cid, provider._identity.peer_id))
    lookup_ms, rpcs, ok = [], [], 0
    for i in range(lookups):
        cid, expected = cids[i % len(cids)]
        asker = rng.choice(nodes)
        before = asker.summary().lookup_rpcs
        t = time.perf_counter()
        found = await asker.find_providers(cid)
        lookup_ms.append((time.perf_counter() - t) * 1000)
        rpcs.append(asker.summary().lookup_rpcs - before)
        ok += any(r.peer_id == expected for r in found)
    return {
        "success_rate": ok / lookups,
        "lookup_median_ms": round(statistics.median(lookup_ms), 2),
        "lookup_p95_ms": round(pct(lookup_ms, 0.95), 2),
        "rpcs_per_lookup": statistics.median(rpcs),
        "announce_median_ms": round(statistics.median(announce_ms), 2),
        "announce_p95_ms": round(pct(announce_ms, 0.95), 2),
    }


async def main(n: int, lookups: int, announces: int, seed: int,
               dual: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    cfg = dataclasses.replace(CFG, host=("127.0.0.1", "::1")) if dual else CFG
    t0 = time.perf_counter()
    first = await DHT.open(Identity.generate(), cfg)
    nodes = [first]
    while len(nodes) < n:
        batch = min(10, n - len(nodes))
        boots = [rng.choice(nodes).listen_addresses() for _ in range(batch)]
        # dual stack: each joins over one family, picked at random
        boots = [rng.choice(b) if dual else b[0] for b in boots]
        nodes += await asyncio.gather(*(
            DHT.open(Identity.generate(), dataclasses.replace(cfg, bootstrap=(b,)))
            for b in boots))
    join_s = time.perf_counter() - t0
    contacts = [d.summary().contacts for d in nodes]
    try:
        live = await phase(nodes, rng, lookups, announces)
        dead = rng.sample(nodes, n // 5)
        await asyncio.gather(*(d.aclose() for d in dead))
        alive = [d for d in nodes if d not in dead]
        dead20 = await phase(alive, rng, lookups, announces)
    finally:
        await asyncio.gather(*(d.aclose() for d in nodes))
    result: dict[str, Any] = {
        "bench": "dht", "nodes": n, "dual_stack": dual, "join_total_s": round(join_s, 2),
        "join_per_node_ms": round(join_s / n * 1000, 2),
        "contacts_mean": round(statistics.mean(contacts), 1), "lookups": lookups,
        "announces": announces, **live,
    }
    result.update({f"dead20_{k}": v for k, v in dead20.items()})
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--lookups", type=int, default=100)
    ap.add_argument("--announces", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dual", action="store_true", help="nodes listen on 127.0.0.1 and ::1")
    args = ap.parse_args()
    res = asyncio.run(main(args.nodes, args.lookups, args.announces, args.seed, args.dual))
    for key, value in res.items():
        print(f"{key:>28}: {value}")
    print(f"command: {sys.executable} bench/dht.py --nodes {args.nodes} --lookups {args.lookups} "
          f"--announces {args.announces} --seed {args.seed}" + (" --dual" if args.dual else ""))
    print(json.dumps(res))
