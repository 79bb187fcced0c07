"""DHT at scale: thousands of real DHT nodes in several worker processes on 127.0.0.1 UDP.

Each point (``--nodes 1000,3000,10000``) starts ``--workers`` processes, each hosting its share
of :class:`p2p.dht.DHT` nodes (real sockets on port 0, the library's node classes), joins them
all through one bootstrap node, lets ``--providers`` nodes announce one content id each
(``DHT.provide``: re-announced every ``--reannounce`` seconds), and then:

1. static: ``--lookups`` provider lookups (``DHT.find_providers``) from random nodes;
2. churn: for ``--churn-seconds`` nodes leave (closed) and new ones join (through the same
   bootstrap) at a rate that replaces half the network over the phase -- the IPFS DHT's
   2-hour server half-life compressed -- while lookups keep running; providers stay up, the
   nodes holding their records do not. Re-announce is compressed with it (the protocol's
   1 h against a 2 h half-life: ``--reannounce`` defaults to a quarter of the phase);
3. after churn: one lookup per content id, and how many of the nodes that held each record
   at the start of churn were gone by its end (the records must survive them).

Reported: success rates, latency median/p90/p99, RPCs and rounds (hops of the deepest answer)
per lookup against log2(N), join time, memory (worker RSS / nodes, gross and net of an empty
worker's RSS) and CPU per node and per RPC, and the machine's raw AES-GCM/BLAKE3 speed.

Run:  python bench/dht_scale.py --nodes 1000,3000,10000
Prints figures per point, the command, and as its last line one JSON object (the largest
point's figures at top level, every point under "points").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

MiB = 1024 * 1024
JOIN_RETRIES = 5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- worker -----------------------------------------------------------------------------------


class Worker:
    """One process's nodes and the commands the coordinator sends it."""

    def __init__(self, index: int, seed: int, opts: dict[str, Any]) -> None:
        from p2p.dht import DHTConfig

        self.index = index
        self.rng = random.Random(seed * 1000 + index)
        self.cfg = DHTConfig(max_contacts_per_ip=None, rate_limit_per_ip=None,
                             reannounce_interval=opts["reannounce"],
                             refresh_interval=opts["refresh"], rpc_timeout=opts["rpc_timeout"],
                             lookup_stall=opts["lookup_stall"])
        self.nodes: list[Any] = []
        self.keep: set[int] = set()  # id() of nodes that must not churn (bootstrap, providers)
        self.boot: tuple[str, int] | None = None
        self.empty_rss = rss_bytes()
        self.join_retries = 0
        self.busy: set[int] = set()  # id() of nodes running a lookup: not closed under it

    async def open_node(self, boot: tuple[str, int] | None) -> Any:
        import dataclasses

        from p2p.dht import DHT
        from p2p.errors import NetworkError
        from p2p.identity import Identity

        cfg = dataclasses.replace(self.cfg, bootstrap=(boot,) if boot else ())
        node = await DHT.open(Identity.generate(), cfg)
        for attempt in range(JOIN_RETRIES if boot else 0):
            if node.summary().contacts >= 2:
                break
            # An overloaded bootstrap let the join's lookup time out: retry, as a client would.
            self.join_retries += 1
            await asyncio.sleep(0.5 * (attempt + 1))
            try:
                await node.bootstrap([boot])
            except NetworkError:
                pass
        return node

    async def cmd_boot(self) -> tuple[str, int]:
        node = await self.open_node(None)
        self.nodes.append(node)
        self.keep.add(id(node))
        addr = node.listen_addresses()[0]
        return (addr[0], addr[1])

    async def cmd_join(self, boot: tuple[str, int], count: int, parallel: int) -> dict[str, Any]:
        self.boot = boot
        t0 = time.perf_counter()
        cpu0 = cpu_seconds()
        todo = count
        while todo:
            batch = min(parallel, todo)
            self.nodes += await asyncio.gather(*(self.open_node(boot) for _ in range(batch)))
            todo -= batch
        return {"seconds": time.perf_counter() - t0, "cpu": cpu_seconds() - cpu0}

    async def cmd_settle(self, parallel: int) -> float:
        """Each node looks up its own id once more, now that everyone has joined: what the
        first joiners' tables would have learned over the minutes a real network takes to
        grow (they joined a network of a few nodes). Returns the CPU seconds spent."""
        cpu0 = cpu_seconds()
        sem = asyncio.Semaphore(parallel)

        async def one(node: Any) -> None:
            async with sem:
                await node._join()

        await asyncio.gather(*(one(n) for n in self.nodes[1 if self.index == 0 else 0:]))
        return cpu_seconds() - cpu0

    async def cmd_provide(self, count: int) -> list[tuple[bytes, Any]]:
        out = []
        pool = [n for n in self.nodes if id(n) not in self.keep]
        for node in self.rng.sample(pool, min(count, len(pool))):
            cid = os.urandom(32)
            await node.provide(cid)
            self.keep.add(id(node))
            out.append((cid, node._identity.peer_id))
        return out

    async def one_lookup(self, cid: bytes, expected: Any) -> dict[str, Any]:
        asker = self.rng.choice(self.nodes)
        self.busy.add(id(asker))
        try:
            return await self._lookup(asker, cid, expected)
        finally:
            self.busy.discard(id(asker))

    async def _lookup(self, asker: Any, cid: bytes, expected: Any) -> dict[str, Any]:
        from p2p.errors import P2PError

        before = asker.summary()
        t = time.perf_counter()
        err = ""
        try:
            found = await asker.find_providers(cid)
            ok = any(r.peer_id == expected for r in found)
            if not ok:
                err = "not found" if not found else "others found"
        except P2PError as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - t) * 1000
        after = asker.summary()
        return {"ok": ok, "ms": ms, "rpcs": after.lookup_rpcs - before.lookup_rpcs,
                "rounds": after.lookup_rounds - before.lookup_rounds, "err": err}

    async def cmd_lookups(self, jobs: list[tuple[bytes, Any]]) -> dict[str, Any]:
        cpu0 = cpu_seconds()
        sent0 = self.rpcs_sent()
        res = [await self.one_lookup(cid, exp) for cid, exp in jobs]
        return {"lookups": res, "cpu": cpu_seconds() - cpu0, "rpcs_sent": self.rpcs_sent() - sent0}

    def rpcs_sent(self) -> int:
        return sum(sum(n.summary().rpcs_sent.values()) for n in self.nodes)

    def cmd_holders(self, keys: list[bytes]) -> dict[bytes, list[bytes]]:
        """For each discovery key, the node ids of our nodes holding a provider record of it."""
        out: dict[bytes, list[bytes]] = {k: [] for k in keys}
        now = time.time()
        for node in self.nodes:
            for key in keys:
                if node._records.providers(key, now, 1):
                    out[key].append(node.node_id)
        return out

    async def cmd_churn(self, seconds: float, jobs: list[tuple[bytes, Any]], replace: float
                        ) -> dict[str, Any]:
        """Replace ``replace`` of our churnable nodes over ``seconds`` while looking up ``jobs``
        (cycled) one after another; returns the lookups and the churn done."""
        cpu0 = cpu_seconds()
        churnable = len([n for n in self.nodes if id(n) not in self.keep])
        events = int(churnable * replace)
        interval = seconds / max(1, events)
        end = time.perf_counter() + seconds
        left = joined = 0
        departed: list[bytes] = []
        joins: set[asyncio.Task[None]] = set()

        async def churn() -> None:
            nonlocal left, joined
            next_at = time.perf_counter() + interval * self.rng.random()
            while left < events and time.perf_counter() < end:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
                pool = [i for i, n in enumerate(self.nodes)
                        if id(n) not in self.keep and id(n) not in self.busy]
                victim = self.nodes.pop(self.rng.choice(pool))
                departed.append(victim.node_id)
                await victim.aclose()
                left += 1
                joins.add(asyncio.create_task(join()))  # on schedule even when a join is slow

        async def join() -> None:
            nonlocal joined
            try:
                self.nodes.append(await self.open_node(self.boot))
                joined += 1
            except Exception:  # a failed join is counted, not fatal
                pass

        results: list[dict[str, Any]] = []

        async def look() -> None:
            i = 0
            while jobs and time.perf_counter() < end:
                cid, exp = jobs[i % len(jobs)]
                results.append(await self.one_lookup(cid, exp))
                i += 1

        await asyncio.gather(churn(), look())
        await asyncio.gather(*joins)
        return {"lookups": results, "left": left, "joined": joined, "departed": departed,
                "cpu": cpu_seconds() - cpu0}

    def cmd_stats(self) -> dict[str, Any]:
        contacts = [n.summary().contacts for n in self.nodes]
        return {"nodes": len(self.nodes), "ids": [n.node_id for n in self.nodes], "rss": rss_bytes(), "empty_rss": self.empty_rss,
                "cpu": cpu_seconds(), "contacts": contacts,
                "join_retries": self.join_retries}

    async def cmd_close(self) -> None:
        await asyncio.gather(*(n.aclose() for n in self.nodes))
        self.nodes = []


def worker_main(index: int, conn: Connection, seed: int, opts: dict[str, Any]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(index, conn, seed, opts))


async def _serve(index: int, conn: Connection, seed: int, opts: dict[str, Any]) -> None:
    import p2p.dht  # noqa: F401 - imported before the empty RSS is read

    w = Worker(index, seed, opts)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    conn.send("ready")
    while True:
        cmd, args = await inbox.get()
        if cmd == "exit":
            await w.cmd_close()
            conn.send(None)
            return
        fn = getattr(w, f"cmd_{cmd}")
        out = fn(*args)
        if asyncio.iscoroutine(out):
            out = await out
        conn.send(out)


# -- coordinator ---------------------------------------------------------------------------------


class Pool:
    def __init__(self, workers: int, seed: int, opts: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(i, child, seed, opts), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        for c in self.conns:
            assert c.recv() == "ready"

    def call(self, i: int, cmd: str, *args: Any) -> Any:
        self.conns[i].send((cmd, args))
        return self.conns[i].recv()

    def all(self, cmd: str, per_worker: list[tuple[Any, ...]]) -> list[Any]:
        for c, args in zip(self.conns, per_worker, strict=True):
            c.send((cmd, args))
        return [c.recv() for c in self.conns]

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("exit", ()))
            except OSError:
                pass
        for c in self.conns:
            try:
                c.recv()
            except (EOFError, OSError):
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


def summarize(lookups: list[dict[str, Any]]) -> dict[str, Any]:
    ms = [x["ms"] for x in lookups]
    return {
        "lookups": len(lookups),
        "success_rate": round(sum(x["ok"] for x in lookups) / max(1, len(lookups)), 4),
        "lookup_median_ms": round(statistics.median(ms), 1) if ms else None,
        "lookup_p90_ms": round(pct(ms, 0.90), 1),
        "lookup_p99_ms": round(pct(ms, 0.99), 1),
        "rpcs_per_lookup": statistics.median([x["rpcs"] for x in lookups]) if lookups else None,
        "rpcs_mean": round(statistics.mean([x["rpcs"] for x in lookups]), 1) if lookups else None,
        "rounds_median": statistics.median([x["rounds"] for x in lookups]) if lookups else None,
        "rounds_max": max((x["rounds"] for x in lookups), default=None),
        "failures": dict(collections.Counter(x["err"] for x in lookups if not x["ok"])),
    }


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts)]


def run_point(n: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    workers = min(args.workers, max(2, n // 50))
    reannounce = args.reannounce or args.churn_seconds / 4
    opts = {"reannounce": reannounce, "refresh": args.refresh, "rpc_timeout": args.rpc_timeout,
            "lookup_stall": args.lookup_stall}
    pool = Pool(workers, args.seed, opts)
    try:
        t0 = time.perf_counter()
        boot = pool.call(0, "boot")  # worker 0 hosts the bootstrap alone, as a daemon would
        shares = [0, *split(n - 1, workers - 1)]
        joins = pool.all("join", [(boot, s, args.join_parallel) for s in shares])
        join_s = time.perf_counter() - t0
        t_settle = time.perf_counter()
        settle_cpu = sum(pool.all("settle", [(args.join_parallel,) for _ in range(workers)])
                         ) if args.settle else 0.0
        settle_s = time.perf_counter() - t_settle
        stats0 = pool.all("stats", [() for _ in range(workers)])
        provided = []
        for i, share in enumerate([0, *split(args.providers, workers - 1)]):
            if share:
                provided += pool.call(i, "provide", share)

        def jobs(count: int) -> list[list[tuple[bytes, Any]]]:
            per: list[list[tuple[bytes, Any]]] = [[] for _ in range(workers)]
            for j in range(count):
                per[rng.randrange(1, workers)].append(provided[j % len(provided)])
            return per

        t1 = time.perf_counter()
        static = pool.all("lookups", [(j,) for j in jobs(args.lookups)])
        static_s = time.perf_counter() - t1
        stats1 = pool.all("stats", [() for _ in range(workers)])

        from p2p.dht.records import discovery_key
        keys = [discovery_key(cid) for cid, _ in provided]
        held_before = merge_holders(pool.all("holders", [(keys,) for _ in range(workers)]))
        all_ids = [i for st in stats1 for i in st["ids"]]
        placement = []
        for key, hs in held_before.items():
            true_k = set(sorted(all_ids, key=lambda i: int.from_bytes(i, "big") ^ int.from_bytes(key, "big"))[:20])
            placement.append(len(true_k & set(hs)))
        churn_jobs = [[]] + [list(provided) for _ in range(workers - 1)]
        for j in churn_jobs:
            rng.shuffle(j)
        churn = pool.all("churn", [(args.churn_seconds, j, args.replace) for j in churn_jobs])
        departed = {nid for c in churn for nid in c["departed"]}
        after = pool.all("lookups", [(j,) for j in jobs(len(provided))])
        stats2 = pool.all("stats", [() for _ in range(workers)])
    finally:
        pool.close()

    static_l = [x for w in static for x in w["lookups"]]
    churn_l = [x for w in churn for x in w["lookups"]]
    after_l = [x for w in after for x in w["lookups"]]
    nodes_now = sum(s["nodes"] for s in stats1)
    for st in (stats0, stats1, stats2):
        for part in st:
            part.pop("ids", None)
    rss = sum(s["rss"] for s in stats1)
    empty = sum(s["empty_rss"] for s in stats1)
    contacts = [c for s in stats0 for c in s["contacts"]]
    static_cpu = sum(w["cpu"] for w in static)
    static_rpcs = sum(w["rpcs_sent"] for w in static)
    gone = [sum(h in departed for h in hs) / len(hs) for hs in held_before.values() if hs]
    s = summarize(static_l)
    c = summarize(churn_l)
    a = summarize(after_l)
    left = sum(x["left"] for x in churn)
    joined = sum(x["joined"] for x in churn)
    result = {
        "nodes": n, "workers": workers, "log2_n": round(math.log2(n), 2),
        "join_total_s": round(join_s, 1),
        "join_cpu_ms_per_node": round(sum(j["cpu"] for j in joins) / n * 1000, 1),
        "settle_s": round(settle_s, 1), "settle_cpu_ms_per_node": round(settle_cpu / n * 1000, 1),
        "contacts_mean": round(statistics.mean(contacts), 1),
        "contacts_min": min(contacts),
        "join_retries": sum(x["join_retries"] for x in stats1),
        **{k: v for k, v in s.items() if k != "failures"},
        "static_phase_s": round(static_s, 1),
        "cpu_ms_per_lookup": round(static_cpu / max(1, len(static_l)) * 1000, 1),
        "cpu_us_per_rpc_both_ends": round(static_cpu / max(1, static_rpcs) * 1e6, 1),
        "mib_per_node": round(rss / nodes_now / MiB, 4),
        "mib_per_node_net": round((rss - empty) / nodes_now / MiB, 4),
        "worker_rss_mib": round(rss / MiB, 1),
        "churn_seconds": args.churn_seconds, "churn_left": left, "churn_joined": joined,
        "churn_replaced_share": round(left / max(1, n), 3),
        "churn_lookups": c["lookups"],
        "churn_success_rate": c["success_rate"],
        "churn_lookup_median_ms": c["lookup_median_ms"],
        "churn_lookup_p90_ms": c["lookup_p90_ms"], "churn_lookup_p99_ms": c["lookup_p99_ms"],
        "static_failures": s["failures"], "churn_failures": c["failures"],
        "churn_rpcs_per_lookup": c["rpcs_per_lookup"], "churn_rounds_median": c["rounds_median"],
        "churn_cpu_s_per_node": round(sum(x["cpu"] for x in churn) / n, 4),
        "reannounce_s": reannounce, "refresh_s": args.refresh,
        "lookup_stall_s": args.lookup_stall,
        "records": len(keys),
        "holders_per_record_before": round(statistics.mean(len(h) for h in held_before.values()), 1),
        "holders_in_true_k_closest_mean": round(statistics.mean(placement), 1),
        "holders_in_true_k_closest_min": min(placement),
        "holders_departed_share_mean": round(statistics.mean(gone), 3) if gone else None,
        "holders_departed_share_max": round(max(gone), 3) if gone else None,
        "after_churn_success_rate": a["success_rate"],
        "final_nodes": sum(x["nodes"] for x in stats2),
    }
    return result


def merge_holders(parts: list[dict[bytes, list[bytes]]]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="10000", help="comma-separated network sizes")
    ap.add_argument("--workers", type=int, default=16, help="worker processes (fewer for small N)")
    ap.add_argument("--lookups", type=int, default=300)
    ap.add_argument("--providers", type=int, default=60, help="content ids announced (one node each)")
    ap.add_argument("--churn-seconds", type=float, default=120.0)
    ap.add_argument("--replace", type=float, default=0.5,
                    help="share of the (non-provider) nodes replaced over the churn phase")
    ap.add_argument("--reannounce", type=float, default=0.0,
                    help="re-announce interval, s (default: a quarter of the churn phase)")
    ap.add_argument("--refresh", type=float, default=900.0, help="bucket refresh interval, s")
    ap.add_argument("--rpc-timeout", type=float, default=1.0)
    ap.add_argument("--lookup-stall", type=float, default=0.25,
                    help="ceiling of the adaptive lookup stall, s (DHTConfig.lookup_stall)")
    ap.add_argument("--join-parallel", type=int, default=2, help="joins in flight per worker")
    ap.add_argument("--settle", type=int, default=0,
                    help="1: every node looks up its own id again once all have joined")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]

    from folder import machine_speeds
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "runs").mkdir()
        speeds = machine_speeds(Path(scratch))
    load0 = os.getloadavg()
    points = []
    for n in sizes:
        res = run_point(n, args)
        points.append(res)
        print(f"--- {n} nodes ---")
        for key, value in res.items():
            print(f"{key:>32}: {value}")
        sys.stdout.flush()
    load1 = os.getloadavg()
    print("growth (nodes, log2 N, RPCs/lookup median, mean, rounds median, median ms):")
    for p in points:
        print(f"  {p['nodes']:>6} {p['log2_n']:>6} {p['rpcs_per_lookup']:>6} {p['rpcs_mean']:>6} "
              f"{p['rounds_median']:>4} {p['lookup_median_ms']:>8}")
    print(f"machine: AES-256-GCM {speeds['aes_gcm_gib_s']:.2f} GiB/s, BLAKE3 "
          f"{speeds['blake3_gib_s']:.2f} GiB/s (one thread); {os.cpu_count()} cores; load "
          f"average {load0[0]:.2f} at start, {load1[0]:.2f} at end")
    cmd = (f"{Path(sys.executable).name} bench/dht_scale.py --nodes {args.nodes} --workers "
           f"{args.workers} --lookups {args.lookups} --providers {args.providers} --churn-seconds "
           f"{args.churn_seconds:g} --replace {args.replace:g} --refresh {args.refresh:g} "
           f"--rpc-timeout {args.rpc_timeout:g} --lookup-stall {args.lookup_stall:g} --join-parallel {args.join_parallel} "
           f"--settle {args.settle} --seed {args.seed}" + (f" --reannounce {args.reannounce:g}" if args.reannounce else ""))
    print(f"command: {cmd}")
    top = dict(points[-1])
    top.update({"bench": "dht_scale", "aes_gcm_gib_s": speeds["aes_gcm_gib_s"],
                "blake3_gib_s": speeds["blake3_gib_s"], "cores": os.cpu_count(),
                "load_start": round(load0[0], 2), "load_end": round(load1[0], 2),
                "points": points})
    print(json.dumps(top))


if __name__ == "__main__":
    main()
