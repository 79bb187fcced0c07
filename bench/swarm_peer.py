"""Child process of bench/swarm.py: one seeder or one downloader, each a real Node.

    python bench/swarm_peer.py boot --state DIR
        a bare node: the DHT bootstrap contact of the others; prints {"port"}.
    python bench/swarm_peer.py seed --state DIR --file PATH --boot PORT
        shares PATH, prints one JSON line {"port", "content_id"}, serves until stdin closes.
    python bench/swarm_peer.py fetch --state DIR --dest PATH --content-id ID --peers P1,P2 --boot PORT
        fetches ID from 127.0.0.1:P1.. (encrypted, every chunk verified), prints one JSON
        line with the time from the fetch call to the verified file in place, CPU of the
        event-loop thread and of the whole process, and peak RSS (VmHWM); then waits for
        stdin to close so the parent can read /proc/PID/status itself.

``--patch FILE`` runs FILE first (ROLE is "seed" or "fetch"): a way to measure a proposed
library change without editing the library. Optional ``--cprofile FILE`` writes cProfile stats of the event-loop thread (slows it down).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path

from p2p.node import Node, NodeConfig


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (KiB) from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def thread_cpu() -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of every live thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"tid{tid}")
        u, s = out.get(name, (0.0, 0.0))
        out[name] = (u + int(fields[11]) / tick, s + int(fields[12]) / tick)
    return out


def folder_ok(path: Path, size: int, files: int) -> bool:
    """A fetched folder holds ``files`` files of ``size`` bytes in all (bench/folder.py)."""
    count = total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            count += 1
            total += os.stat(os.path.join(dirpath, name)).st_size
    return count == files and total == size


def config(state: Path, boot: str | None) -> NodeConfig:
    bootstrap = (("127.0.0.1", int(boot)),) if boot else ()
    return NodeConfig(state_dir=state, host="127.0.0.1", port=0, max_contacts_per_ip=None,
                      download_dir=state / "downloads", bootstrap=bootstrap)


async def wait_stdin_closed() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def boot(a: argparse.Namespace) -> None:
    async with Node(config(Path(a.state), None)) as node:
        print(json.dumps({"port": node.port}), flush=True)
        await wait_stdin_closed()


async def seed(a: argparse.Namespace) -> None:
    async with Node(config(Path(a.state), a.boot)) as node:
        t0 = time.perf_counter()
        result = await node.share(Path(a.file))
        print(json.dumps({"port": node.port, "content_id": str(result.content_id),
                          "share_s": time.perf_counter() - t0,
                          "manifest_bytes": len(result.manifest.encode())}), flush=True)
        prof = cProfile.Profile(time.thread_time) if a.cprofile else None
        if prof:
            prof.enable()
        await wait_stdin_closed()
        if prof:
            prof.disable()
            prof.dump_stats(a.cprofile)


async def fetch(a: argparse.Namespace) -> None:
    peers = [("127.0.0.1", int(p)) for p in a.peers.split(",")]
    async with Node(config(Path(a.state), a.boot)) as node:
        before = proc_status()
        prof = cProfile.Profile(time.thread_time) if a.cprofile else None  # CPU, not wall: robust to load
        holder: dict[str, object] = {}

        async def grab() -> None:  # keep the Download object to read per-peer counts afterwards
            while "d" not in holder:
                for d in node.running_downloads():
                    holder["d"] = d
                await asyncio.sleep(0.05)

        grabber = asyncio.create_task(grab())
        th0 = thread_cpu()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        r0, c0, t0 = os.times(), time.thread_time(), time.perf_counter()
        if prof:
            prof.enable()
        path = (await node.fetch(a.content_id, Path(a.dest), peers=peers, timeout=60)).path
        if prof:
            prof.disable()
        elapsed = time.perf_counter() - t0
        loop_cpu = time.thread_time() - c0
        r1 = os.times()
        th1 = thread_cpu()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        threads = {k: [round(v[0] - th0.get(k, (0, 0))[0], 2), round(v[1] - th0.get(k, (0, 0))[1], 2)]
                   for k, v in th1.items()}
        grabber.cancel()
        after = proc_status()
        d = holder.get("d")
        per_peer = sorted(d.chunks_by_peer.values(), reverse=True) if d is not None else []  # type: ignore[attr-defined]
        if prof:
            prof.dump_stats(a.cprofile)
        print(json.dumps({
            "ok": folder_ok(path, a.size, a.files) if a.files else
            path.exists() and path.stat().st_size == a.size,
            "elapsed": elapsed,
            "cpu": (r1.user + r1.system) - (r0.user + r0.system),
            "loop_cpu": loop_cpu,
            "rss_before_kib": before["VmRSS"],
            "hwm_kib": after["VmHWM"],
            "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "chunks_by_peer": per_peer,
            "wasted_bytes": getattr(d, "wasted_bytes", 0),
            "threads_user_sys": threads,
            "minflt": ru1.ru_minflt - ru0.ru_minflt,
        }), flush=True)
        await wait_stdin_closed()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["boot", "seed", "fetch"])
    ap.add_argument("--boot", help="port of the DHT bootstrap node on 127.0.0.1")
    ap.add_argument("--state", required=True)
    ap.add_argument("--file")
    ap.add_argument("--dest")
    ap.add_argument("--content-id")
    ap.add_argument("--peers")
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--files", type=int, default=0, help="fetch: a folder of this many files, --size bytes in all")
    ap.add_argument("--cprofile")
    ap.add_argument("--patch", help="a Python file run first (try a library change without editing it)")
    a = ap.parse_args()
    if a.patch:
        exec(compile(Path(a.patch).read_text(), a.patch, "exec"), {"__name__": "swarm_patch", "ROLE": a.role})
    logging.basicConfig(level=logging.WARNING)
    asyncio.run({"boot": boot, "seed": seed, "fetch": fetch}[a.role](a))


if __name__ == "__main__":
    main()
