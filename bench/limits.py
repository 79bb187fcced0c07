"""Bandwidth limits: how closely a limit holds its rate, and how fairly it is shared.

Three cases, each with real nodes on 127.0.0.1 in one process (port 0):

* ``upload``: a seeder with ``max_upload_rate = RATE`` serves one downloader;
* ``download``: a downloader with ``max_download_rate = RATE`` fetches from an unlimited seeder;
* ``fair``: a seeder with ``max_upload_rate = RATE`` serves two downloaders at once, each a
  file of its own.

The rate is measured on the limiter's own accounting (every byte the connections moved,
encryption and framing included: what the limit counts) over a window of ``--seconds`` that
starts ``WARMUP`` seconds in, so the first second's burst is left out. The files are larger
than the window can move, so nothing finishes inside it. Accuracy is the measured rate over
the set rate (target: within 5%); fairness is the slower downloader's rate over the faster
one's (1.0 is an even split). The payload rate (verified chunk bytes) is printed beside it.

    .venv/bin/python bench/limits.py                  # 30 s windows, 8 MiB/s
    .venv/bin/python bench/limits.py --quick          # 5 s windows
    .venv/bin/python bench/limits.py --rate 2MiB/s --seconds 30

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from p2p import P2PError, parse_rate
from p2p.events import ChunkVerified
from p2p.node import Node, NodeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from folder import machine_speeds

MiB = 1024 * 1024
WARMUP = 2.0
"""Seconds before the window opens: past the one-second burst and the connection setup."""
TARGET = 0.05
"""Largest allowed relative error of a held rate (the issue's 5%)."""


def config(base: Path, name: str, **limits: float) -> NodeConfig:
    return NodeConfig(state_dir=base / "state" / name, host="127.0.0.1", port=0,
                      download_dir=base / "dl" / name, max_contacts_per_ip=None, **limits)


def make_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # random throughout: no two chunks alike
        for i in range(0, size, MiB):
            f.write(os.urandom(min(MiB, size - i)))
    return path


class Payload:
    """Verified chunk bytes of one download, counted from the node's events."""

    def __init__(self, node: Node) -> None:
        self.bytes = 0
        self._sub = node.events.subscribe()

    async def run(self) -> None:
        while True:
            event = await self._sub.get()
            if isinstance(event, ChunkVerified):
                self.bytes += event.size


async def window(seconds: float, *counters: Any) -> tuple[list[float], float]:
    """Wait WARMUP, then read each counter at the window's start and end: (deltas, elapsed)."""
    await asyncio.sleep(WARMUP)
    t0, start = time.monotonic(), [c() for c in counters]
    await asyncio.sleep(seconds)
    t1, end = time.monotonic(), [c() for c in counters]
    return [b - a for a, b in zip(start, end, strict=True)], t1 - t0


@contextlib.asynccontextmanager
async def fetching(dl: Node, seeder: Node, cid: str, dest: Path) -> Any:
    """A fetch running in the background for the block's duration, then stopped."""
    task = asyncio.create_task(dl.fetch(cid, dest, peers=[seeder.listen_address()], timeout=60))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, P2PError):
            await task


async def one_way(base: Path, rate: float, seconds: float, side: str) -> dict[str, Any]:
    size = int(rate * (WARMUP + seconds) * 1.5)
    source = make_file(base / "src" / f"{side}.bin", size)
    up = {"max_upload_rate": rate} if side == "upload" else {}
    down = {"max_download_rate": rate} if side == "download" else {}
    async with Node(config(base, f"{side}-seed", **up)) as seeder, \
            Node(config(base, f"{side}-dl", **down)) as dl:
        cid = str((await seeder.share(source)).content_id)
        payload = Payload(dl)
        limit = (seeder.bandwidth.up if side == "upload" else dl.bandwidth.down).limit
        async with asyncio.TaskGroup() as tg:
            counting = tg.create_task(payload.run())
            async with fetching(dl, seeder, cid, base / "out" / f"{side}.bin"):
                (wire, data), elapsed = await window(seconds, lambda: limit.spent,
                                                     lambda: payload.bytes)
            counting.cancel()
    measured = wire / elapsed
    return {"set_mib_s": rate / MiB, "wire_mib_s": measured / MiB,
            "payload_mib_s": data / elapsed / MiB, "accuracy": measured / rate,
            "seconds": elapsed}


async def fair(base: Path, rate: float, seconds: float) -> dict[str, Any]:
    size = int(rate * (WARMUP + seconds) * 1.0)  # each gets about half the rate
    sources = [make_file(base / "src" / f"fair{i}.bin", size) for i in range(2)]
    # The downloaders carry a limit far above the rate so that their bytes are counted.
    roomy = {"max_download_rate": 1024.0 * MiB}
    async with Node(config(base, "fair-seed", max_upload_rate=rate)) as seeder, \
            Node(config(base, "fair-a", **roomy)) as a, Node(config(base, "fair-b", **roomy)) as b:
        cids = [str((await seeder.share(s)).content_id) for s in sources]
        async with fetching(a, seeder, cids[0], base / "out" / "fa.bin"), \
                fetching(b, seeder, cids[1], base / "out" / "fb.bin"):
            (got_a, got_b, total), elapsed = await window(
                seconds, lambda: a.bandwidth.down.limit.spent, lambda: b.bandwidth.down.limit.spent,
                lambda: seeder.bandwidth.up.limit.spent)
    ra, rb = got_a / elapsed, got_b / elapsed
    return {"set_mib_s": rate / MiB, "a_mib_s": ra / MiB, "b_mib_s": rb / MiB,
            "total_mib_s": total / elapsed / MiB, "accuracy": total / elapsed / rate,
            "fairness": min(ra, rb) / max(ra, rb) if max(ra, rb) else 0.0, "seconds": elapsed}


async def bench(rate: float, seconds: float, scratch: Path) -> dict[str, Any]:
    return {"upload": await one_way(scratch, rate, seconds, "upload"),
            "download": await one_way(scratch, rate, seconds, "download"),
            "fair": await fair(scratch, rate, seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", default="8MiB/s", help="the limit to hold (default 8MiB/s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="window length (default 30)")
    parser.add_argument("--quick", action="store_true", help="5-second windows")
    args = parser.parse_args()
    rate = parse_rate(args.rate, "--rate")
    seconds = 5.0 if args.quick else args.seconds
    with tempfile.TemporaryDirectory(prefix="p2p-limits-") as tmp:
        scratch = Path(tmp)
        speeds = machine_speeds(scratch)
        load_start = os.getloadavg()
        result = asyncio.run(bench(rate, seconds, scratch))
    up, down, fr = result["upload"], result["download"], result["fair"]
    cmd = "$PY bench/limits.py " + " ".join(sys.argv[1:])
    print(f"machine: AES-256-GCM {speeds['aes_gcm_gib_s']:.1f} GiB/s, BLAKE3 "
          f"{speeds['blake3_gib_s']:.1f} GiB/s; {os.cpu_count()} cores; load "
          f"{' '.join(f'{x:.2f}' for x in load_start)} at start")
    for name, r in (("upload", up), ("download", down)):
        print(f"  {name:<9} limit {r['set_mib_s']:.2f} MiB/s: wire {r['wire_mib_s']:.3f} MiB/s "
              f"({(r['accuracy'] - 1) * 100:+.2f}%), payload {r['payload_mib_s']:.3f} MiB/s, "
              f"over {r['seconds']:.1f} s")
    print(f"  fair      limit {fr['set_mib_s']:.2f} MiB/s shared by two: {fr['a_mib_s']:.3f} + "
          f"{fr['b_mib_s']:.3f} MiB/s, total {fr['total_mib_s']:.3f} MiB/s "
          f"({(fr['accuracy'] - 1) * 100:+.2f}%), fairness {fr['fairness']:.3f}")
    held = all(abs(r["accuracy"] - 1) <= TARGET for r in (up, down, fr))
    print(f"  limits within {TARGET:.0%}: {'met' if held else 'NOT met'}")
    print(f"reproduce: {cmd}")
    print(json.dumps({"bench": "limits", "rate_mib_s": rate / MiB, "seconds": seconds,
                      "upload_accuracy": round(up["accuracy"], 4),
                      "download_accuracy": round(down["accuracy"], 4),
                      "fair_accuracy": round(fr["accuracy"], 4),
                      "fairness": round(fr["fairness"], 4),
                      "upload_payload_mib_s": round(up["payload_mib_s"], 3),
                      "download_payload_mib_s": round(down["payload_mib_s"], 3),
                      "aes_gcm_gib_s": round(speeds["aes_gcm_gib_s"], 2),
                      "blake3_gib_s": round(speeds["blake3_gib_s"], 2),
                      "cores": os.cpu_count(), "cmd": cmd}))


if __name__ == "__main__":
    main()
