"""Relayed against direct fetches on loopback, and what relaying costs the daemon.

The relay is a real ``p2p-bootstrap`` subprocess (``python -m bootstrap``, relaying by
default, per-IP caps lifted: every peer here is on 127.0.0.1). In this process: a sharer
node and fetcher nodes. The same ``--size`` file is fetched twice by fresh fetchers: once
direct (a ticket of the sharer's own address) and once relayed (a ticket of its relay hint
only). For each: the time to the first verified chunk and the throughput. The daemon's CPU
seconds (``/proc/PID/stat``) over the relayed fetch, per GiB it spliced, and its peak RSS
(``VmHWM``) after ``--reservations`` more peers each took a reservation. The last line
printed is one JSON object.

    python bench/relay.py                          # 256 MiB, 100 reservations
    python bench/relay.py --size 1024 --reservations 0

(The network-namespace variant, with direct, punched and relayed paths through real NATs,
needs hole punching; this one measures the relay's own cost.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from testbed import make_file, node_config

from p2p import Node
from p2p.content import Ticket
from p2p.events import ChunkVerified
from p2p.identity import Identity
from p2p.wire.reservation import HeldReservation

CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def dead_port() -> int:
    """A port nothing listens on: the sharer's "own" address as others see it behind a NAT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fetch(base: Path, name: str, ticket: Ticket) -> dict[str, float]:
    """One fresh fetcher, ``ticket`` only (no DHT): first verified chunk and throughput. It
    does not punch: on loopback a punch opens at once and the bytes would leave the relay,
    which is what this measures."""
    async with Node(node_config(base, name, hole_punching=False)) as fetcher:
        sub = fetcher.events.subscribe()
        started = time.monotonic()

        async def first_chunk() -> float:
            while not isinstance(await sub.get(), ChunkVerified):
                pass
            return time.monotonic() - started

        # The watcher is the group's: a fetch that fails cancels it instead of leaving it
        # waiting for a chunk that never comes.
        async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
            watch = tg.create_task(first_chunk())
            result = await fetcher.fetch(ticket, base / f"{name}.bin", timeout=60)
            seconds = time.monotonic() - started
        first = watch.result()
    return {"first_byte_s": round(first, 4), "seconds": round(seconds, 3),
            "mib_per_s": round(result.size / seconds / MiB, 1)}


def start_daemon(base: Path, reservations: int) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    """The relay: a bootstrap daemon subprocess, listening; and its address."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bootstrap", "--listen", "127.0.0.1:0", "--state-dir",
         str(base / "boot"), "--log-format", "json", "--max-contacts-per-ip", "none",
         "--rate-limit-per-ip", "none", "--relay-max-reservations-per-ip", str(reservations + 8),
         "--relay-max-reservations", str(reservations + 8)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert daemon.stdout is not None
    ready = json.loads(daemon.stdout.readline())
    host, _, port = ready["listen"].rpartition(":")
    return daemon, (host, int(port))


async def run(base: Path, daemon: subprocess.Popen[str], boot: tuple[str, int], size_mib: int,
              reservations: int) -> dict[str, Any]:
    source = make_file(base / "src" / "film.bin", size_mib * MiB)
    hidden = node_config(base, "sharer", [boot], dht_mode="client",
                         announce_addrs=(("127.0.0.1", dead_port()),))
    async with Node(hidden) as sharer:
        shared = await sharer.share(source)
        made = Ticket.parse(str(shared.ticket))
        direct = Ticket(made.content_id, made.publisher, (sharer.listen_address(),))
        relayed = Ticket(made.content_id, made.publisher, (), made.relays)
        out: dict[str, Any] = {"size_mib": size_mib, "direct": await fetch(base, "direct", direct)}
        cpu = proc_cpu_seconds(daemon.pid)
        out["relayed"] = await fetch(base, "relayed", relayed)
        # Per GiB of the transfer (each byte read once and written once by the daemon).
        out["relay_cpu_s_per_gib"] = round(
            (proc_cpu_seconds(daemon.pid) - cpu) / (size_mib / 1024), 3)
        out["relayed_over_direct"] = round(
            out["relayed"]["mib_per_s"] / out["direct"]["mib_per_s"], 2)
        rss_before = proc_status_kib(daemon.pid, "VmRSS")
        held = [HeldReservation(Identity.generate(), boot, lambda *_: None)
                for _ in range(reservations)]
        tasks = [asyncio.ensure_future(h.run()) for h in held]
        try:
            async with asyncio.timeout(120):
                for h in held:
                    await h.reserved.wait()
            out["reservations"] = reservations + 1
            out["relay_rss_mib"] = round(proc_status_kib(daemon.pid, "VmRSS") / 1024, 1)
            out["relay_rss_before_reservations_mib"] = round(rss_before / 1024, 1)
            out["relay_peak_rss_mib"] = round(proc_status_kib(daemon.pid, "VmHWM") / 1024, 1)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB to fetch (default 256)")
    parser.add_argument("--reservations", type=int, default=100,
                        help="extra reservations held for the memory figure (default 100)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaybench-") as tmp:
        daemon, boot = start_daemon(Path(tmp), args.reservations)
        try:
            result = asyncio.run(run(Path(tmp), daemon, boot, args.size, args.reservations))
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
