"""Bootstrap daemon under a crowd: ``--peers`` DHT peers join through one ``p2p-bootstrap``.

The daemon runs as a subprocess (``python -m bootstrap``, per-IP caps lifted because every
peer here shares 127.0.0.1). The peers are :class:`p2p.dht.DHT` instances spread over
``--workers`` processes, each opening ``--concurrency`` at a time and staying up until the
end, so later peers join a network of earlier ones, as in life.

A peer's join latency is the time ``DHT.open`` takes with the daemon as its only bootstrap:
bind, verify the daemon's identity (signed nonce), then the lookup of its own id. The
daemon's CPU seconds and peak RSS are read from ``/proc/PID/stat`` and ``VmHWM`` in
``/proc/PID/status``. The last line printed is one JSON object.

    python bench/bootstrap.py                    # 500 peers, 2 worker processes
    python bench/bootstrap.py --concurrency 25     # more joins in flight: more queueing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- worker: a process full of peers ----------------------------------------------------------


async def worker(count: int, boot: tuple[str, int], concurrency: int) -> None:
    from p2p.dht import DHT, DHTConfig
    from p2p.identity import Identity

    config = DHTConfig(host="127.0.0.1", port=0, bootstrap=(boot,), max_contacts_per_ip=None,
                       rate_limit_per_ip=None)
    sem = asyncio.Semaphore(concurrency)
    nodes: list[Any] = []
    latencies: list[float] = []
    failed = 0

    async def join() -> None:
        nonlocal failed
        async with sem:
            started = time.perf_counter()
            dht = await DHT.open(Identity.generate(), config)
            elapsed = time.perf_counter() - started
        nodes.append(dht)
        if len(dht.protocol.router) == 0:
            failed += 1
        else:
            latencies.append(elapsed)

    try:
        await asyncio.gather(*(join() for _ in range(count)))
        sizes = [len(n.protocol.router) for n in nodes]
        print(json.dumps({"latencies": latencies, "failed": failed,
                          "table_median": statistics.median(sizes)}), flush=True)
        # Stay in the network until the parent has measured everything.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        await asyncio.gather(*(n.aclose() for n in nodes))


# -- parent ----------------------------------------------------------------------------------------


def start_daemon(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bootstrap", "--listen", "127.0.0.1:0", "--state-dir",
         str(state_dir), "--metrics", "127.0.0.1:0", "--log-format", "json",
         "--log-level", "warning", "--max-contacts-per-ip", "none", "--rate-limit-per-ip", "none"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    assert daemon.stdout is not None
    line = daemon.stdout.readline()
    if not line:
        raise SystemExit("the daemon did not start")
    return daemon, json.loads(line)


def scrape(metrics: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=500)
    p.add_argument("--workers", type=int, default=2, help="processes holding the peers")
    p.add_argument("--concurrency", type=int, default=5, help="joins in flight per worker")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--boot", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        host, _, port = args.boot.rpartition(":")
        asyncio.run(worker(args.worker, (host, int(port)), args.concurrency))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-bootstrap-") as tmp:
        daemon, announce = start_daemon(Path(tmp) / "state")
        workers: list[subprocess.Popen[str]] = []
        try:
            cpu_idle = proc_cpu_seconds(daemon.pid)
            shares = [args.peers // args.workers + (i < args.peers % args.workers)
                      for i in range(args.workers)]
            started = time.perf_counter()
            for n in shares:
                workers.append(subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(n), "--boot", announce["listen"],
                     "--concurrency", str(args.concurrency)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            reports = []
            for w in workers:
                assert w.stdout is not None
                line = w.stdout.readline()
                if not line:
                    raise SystemExit("a worker died")
                reports.append(json.loads(line))
            wall = time.perf_counter() - started
            cpu_s = proc_cpu_seconds(daemon.pid) - cpu_idle
            metrics = scrape(announce["metrics"])
            peak_rss_mib = proc_status_kib(daemon.pid, "VmHWM") / 1024
            for w in workers:
                assert w.stdin is not None
                w.stdin.write("\n")
                w.stdin.flush()
            for w in workers:
                w.wait(timeout=30)
            daemon.terminate()
            daemon_rc = daemon.wait(timeout=10)
        finally:
            for proc in [*workers, daemon]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    latencies = [x * 1000 for r in reports for x in r["latencies"]]
    failed = sum(r["failed"] for r in reports)
    result = {
        "bench": "bootstrap",
        "peers": args.peers,
        "joined": len(latencies),
        "failed": failed,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "join_median_ms": round(statistics.median(latencies), 1),
        "join_p95_ms": round(percentile(latencies, 0.95), 1),
        "join_max_ms": round(max(latencies), 1),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu_s, 2),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "daemon_contacts": int(metrics.get("p2p_bootstrap_routing_table_contacts", 0)),
        "daemon_rpcs_received": int(metrics.get("p2p_bootstrap_rpcs_received_total", 0)),
        "daemon_rejected": int(metrics.get("p2p_bootstrap_packets_rejected_total", 0)),
        "peer_table_median": statistics.median(r["table_median"] for r in reports),
        "daemon_exit": daemon_rc,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"peers joined:    {len(latencies)} of {args.peers} ({failed} failed) in {wall:.1f} s, "
          f"{args.workers} workers x {args.concurrency} in flight")
    print(f"join latency:    median {result['join_median_ms']} ms, p95 {result['join_p95_ms']} ms, "
          f"max {result['join_max_ms']} ms")
    print(f"daemon:          {cpu_s:.2f} CPU s, peak RSS {peak_rss_mib:.1f} MiB, "
          f"{result['daemon_contacts']} contacts, {result['daemon_rpcs_received']} RPCs answered")
    print(f"reproduce:       {command}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
