"""Hostile-network benchmark (issue 12): an honest download while the network attacks it.

Real processes on 127.0.0.1: a DHT of four ``p2p serve`` nodes, an honest seeder
(``p2p share``) and an honest downloader (``p2p fetch ID --bootstrap ...``, by content id,
a fresh state directory each time). The attackers run in this process and are the ones of
the adversarial tests (``tests/adversarial/hostile.py``, written from docs/PROTOCOL.md
only). Scenarios, interleaved in every round so that all see the same machine load:

* ``alone``: no attack (the baseline);
* ``flood``: the downloader also dials (``--peer``) a provider that floods it with
  messages that change nothing (Have of known and past-the-end chunks, unrequested
  Rejects, repeated Bitfields);
* ``slots``: 300 half-open handshakes and 272 idle sessions from 20 hosts in 20 /24s
  (127.20.0.1 ... 127.39.0.1), re-opened as they are dropped, held against the seeder
  during the download;
* ``sybil``: 64 provider records from fresh keys in one /24 (127.9.9.x, nothing
  listening), the latest expiry allowed, put at every node around the key before a second
  seeder (same size, other bytes) announces and again after; fetched by id.

Time: the ``seconds`` of the downloader's ``completed`` event (inside the process, from
the fetch's start to the verified file in place); the median over ``--runs``. Then the
DHT's worst amplification toward an unproven source (it never answers ``identify``):
ping, identify, find_node, get (three kinds) and put probes against the bootstrap node
with 20 proven contacts and 16 providers under the probed key; the figure is the larger
of the worst single reply/request and all bytes sent to that address / all it sent.

    python bench/hostile.py --size 64M --runs 3
    python bench/hostile.py --size 16M --runs 1        # quick check

Targets (issue 12): flood_ratio <= 1.2, slots_ratio <= 2, sybil succeeds every run,
dht_worst_amplification <= 3. Scratch data lives in a fresh folder in the system temp dir
and is removed at the end. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from adversarial import hostile as h  # noqa: E402  (the tests folder is on the path now)
from swarm import loadavg, make_data, parse_size  # noqa: E402

MiB = 1 << 20
FETCH_TIMEOUT = 30
"""The downloader's --timeout: a scenario that stalls this long fails (and is counted)."""
SLOT_SOURCES = [h.loopback_source(20 + i) for i in range(20)]
SLOT_HALF_OPEN = 300
SLOT_IDLE = 272
SYBILS = 64
DHT_NODES = 4


# -- machine raw speeds --------------------------------------------------------------------


def aesgcm_mib_s(total: int = 256 * MiB, record: int = 64 * 1024) -> float:
    """AES-256-GCM sealing 64 KiB records (the wire's record size), one core."""
    aead = AESGCM(os.urandom(32))
    block = os.urandom(record)
    n = total // record
    start = time.perf_counter()
    for i in range(n):
        aead.encrypt(b"\0\0\0\0" + i.to_bytes(8, "big"), block, b"")
    return total / MiB / (time.perf_counter() - start)


def blake3_mib_s(total: int = 256 * MiB) -> float:
    """Multi-threaded BLAKE3 of one buffer (what bench/hash.py calls raw blake3 AUTO)."""
    data = os.urandom(total)
    start = time.perf_counter()
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update(data)
    hasher.digest()
    return total / MiB / (time.perf_counter() - start)


# -- honest processes ------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def p2p_process(*args: str, cwd: Path) -> AsyncIterator[dict[str, Any]]:
    """A long-running ``p2p`` command; yields its first JSON line; killed at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2p.cli", *args, "--json", cwd=cwd, env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"p2p {args[0]} ended at start: {await proc.wait()}")
        yield json.loads(line)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def fetch(scratch: Path, cid: str, bootstrap: tuple[str, int],
                peers: Sequence[tuple[str, int]] = ()) -> tuple[int, float, str]:
    """One ``p2p fetch ID`` from a fresh state dir: (exit code, seconds, stderr tail)."""
    state = Path(tempfile.mkdtemp(prefix="dl-", dir=scratch))
    args = ["fetch", cid, "-o", str(state / "out.bin"), "--json", "--state-dir", str(state),
            "--listen", "127.0.0.1:0", "--timeout", str(FETCH_TIMEOUT),
            "--bootstrap", f"{bootstrap[0]}:{bootstrap[1]}"]
    for host, port in peers:
        args += ["--peer", f"{host}:{port}"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2p.cli", *args, cwd=scratch, env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(FETCH_TIMEOUT * 4):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(state, ignore_errors=True)
    done = [json.loads(x) for x in out.decode().splitlines()
            if x.startswith("{") and '"completed"' in x]
    code = proc.returncode if proc.returncode is not None else -1
    seconds = float(done[-1]["seconds"]) if code == 0 and done else float("nan")
    return code, seconds, err.decode()[-300:].strip()


# -- attacks ------------------------------------------------------------------------------------


async def amplification(target: tuple[str, int]) -> dict[str, Any]:
    """The DHT's worst amplification toward an unproven source (see the module docstring)."""
    key = h.discovery_key(os.urandom(32))
    contacts = await h.proven_contacts(target, range(40, 60))
    try:
        expires = h.latest_provider_expiry()
        await asyncio.gather(*(c.request(target, "put", key, h.provider_record(
            c.identity, key, [c.address], expires)) for c in contacts[:16]))
        probe = await h.amplification_probe(target, key)
        try:
            worst, total = h.worst_amplification(probe, target)
            replies = [(name, req, reply) for name, req, reply in probe.replies]
            t = probe.traffic.get(target, h.Traffic())
        finally:
            probe.close()
    finally:
        for c in contacts:
            c.close()
    return {"worst_reply": worst, "total": total, "replies": replies,
            "sent": t.sent, "received": t.received, "datagrams_in": t.datagrams_in}


# -- the benchmark ------------------------------------------------------------------------------


async def bench(size: int, runs: int, scratch: Path) -> dict[str, Any]:
    # Two files of random bytes (make_data names its file by size: one folder each).
    (scratch / "data").mkdir()
    (scratch / "other").mkdir()
    data = make_data(scratch / "data", size)
    other = make_data(scratch / "other", size)
    results: dict[str, list[float]] = {"alone": [], "flood": [], "slots": [], "sybil": []}
    failures: dict[str, list[str]] = {k: [] for k in results}
    notes: dict[str, Any] = {"flood_dropped": [], "flood_acked": [], "slots_peak": []}
    async with contextlib.AsyncExitStack() as stack:
        boot = await stack.enter_async_context(p2p_process(
            "serve", "--state-dir", str(scratch / "boot"), "--listen", "127.0.0.1:0",
            cwd=scratch))
        entry = address(boot["listen"])
        for i in range(DHT_NODES - 1):
            await stack.enter_async_context(p2p_process(
                "serve", "--state-dir", str(scratch / f"dht{i}"), "--listen", "127.0.0.1:0",
                "--bootstrap", boot["listen"], cwd=scratch))
        seed = await stack.enter_async_context(p2p_process(
            "share", str(data), "--state-dir", str(scratch / "seed"), "--listen",
            "127.0.0.1:0", "--bootstrap", boot["listen"], cwd=scratch))
        seeder = address(seed["listen"])
        cid = seed["content_id"]
        content = h.FileContent.of(data)
        # The sybil target: other bytes of the same size, its key crowded before it is shared.
        target = h.FileContent.of(other)
        key = h.discovery_key(target.content_id)
        expires = h.latest_provider_expiry()
        crowd = [h.provider_record(h.Identity(), key, [(f"127.9.9.{1 + i}", 7473)], expires)
                 for i in range(SYBILS)]
        notes["sybil_puts_before"] = sum(await h.put_crowd(target.content_id, crowd, entry))
        sybil_seed = await stack.enter_async_context(p2p_process(
            "share", str(other), "--state-dir", str(scratch / "seed2"), "--listen",
            "127.0.0.1:0", "--bootstrap", boot["listen"], cwd=scratch))
        notes["sybil_puts_after"] = sum(await h.put_crowd(target.content_id, crowd, entry))
        sybil_cid = sybil_seed["content_id"]
        print(f"DHT of {DHT_NODES} nodes, seeder {seed['listen']}, sybil target seeder "
              f"{sybil_seed['listen']}; {notes['sybil_puts_before']} + "
              f"{notes['sybil_puts_after']} sybil puts acknowledged", flush=True)

        def record(name: str, outcome: tuple[int, float, str], extra: str = "") -> None:
            code, seconds, err = outcome
            if code == 0:
                results[name].append(seconds)
                print(f"  {name:6s} {size / MiB:.0f} MiB in {seconds:.2f} s{extra}", flush=True)
            else:
                failures[name].append(f"exit {code}: {err}")
                print(f"  {name:6s} FAILED exit {code}: {err}{extra}", flush=True)

        for rnd in range(runs):
            print(f"round {rnd + 1}:", flush=True)
            record("alone", await fetch(scratch, cid, entry))

            flooder = h.FloodingProvider(content)
            listener = h.Listener(flooder.identity, flooder)
            flood_addr = await listener.start("127.0.0.1")
            try:
                outcome = await fetch(scratch, cid, entry, [flood_addr])
            finally:
                await listener.aclose()
            dropped = bool(flooder.floods) and flooder.first_drop.is_set()
            acked = flooder.floods[0].acked if flooder.floods else 0
            notes["flood_dropped"].append(dropped)
            notes["flood_acked"].append(acked)
            record("flood", outcome, f" (flooder dialled {len(flooder.floods)}x, first flood "
                   f"{acked} messages processed before its drop)")

            holder = h.SlotHolder(seeder, SLOT_SOURCES, SLOT_HALF_OPEN, SLOT_IDLE)
            holder.start()
            try:
                async with asyncio.timeout(60):
                    await holder.all_started.wait()
                outcome = await fetch(scratch, cid, entry)
            finally:
                await holder.aclose()
            notes["slots_peak"].append(holder.peak)
            record("slots", outcome, f" (attacker held up to {holder.peak} connections, "
                   f"{holder.opened} opened)")

            record("sybil", await fetch(scratch, sybil_cid, entry))

        amp = await amplification(entry)
    return {"results": results, "failures": failures, "notes": notes, "amplification": amp}


def main() -> None:
    """Run the benchmark and print figures; the last line is JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="64M")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    size = parse_size(a.size)
    cmd = f"python bench/hostile.py --size {a.size} --runs {a.runs}"
    load_start = loadavg()
    print(f"hostile-network benchmark: {size / MiB:.0f} MiB, {a.runs} round(s); "
          f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
          f"load average {load_start}", flush=True)
    print(f"reproduce: {cmd}", flush=True)
    aes, b3 = aesgcm_mib_s(), blake3_mib_s()
    print(f"machine raw speeds: AES-256-GCM {aes:.0f} MiB/s (64 KiB records, one core), "
          f"BLAKE3 {b3:.0f} MiB/s (AUTO threads)", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="p2p-hostile-"))
    try:
        out = asyncio.run(bench(size, a.runs, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res, fail, notes, amp = out["results"], out["failures"], out["notes"], out["amplification"]

    def med(name: str) -> float | None:
        return statistics.median(res[name]) if res[name] else None

    alone = med("alone")
    figures: dict[str, Any] = {"alone_s": alone}
    print(f"\nresults ({size / MiB:.0f} MiB, median of {a.runs}; load average at end "
          f"{loadavg()}):")
    print(f"  alone  {alone:.2f} s" if alone is not None else "  alone  FAILED")
    for name in ("flood", "slots", "sybil"):
        m = med(name)
        ratio = m / alone if m is not None and alone else None
        figures[f"{name}_s"] = round(m, 3) if m is not None else None
        figures[f"{name}_ratio"] = round(ratio, 2) if ratio is not None else None
        ok = len(res[name])
        print(f"  {name:6s} " + (f"{m:.2f} s, {ratio:.2f}x alone" if ratio is not None
                                 else "no successful run") + f" ({ok}/{a.runs} succeeded)")
    if alone is not None:
        figures["alone_s"] = round(alone, 3)
    worst = max(amp["worst_reply"], amp["total"])
    print(f"  DHT toward an unproven source: worst reply {amp['worst_reply']:.2f}x its request, "
          f"all {amp['received']} bytes in {amp['datagrams_in']} datagrams / {amp['sent']} "
          f"sent = {amp['total']:.2f}x; per RPC (request, reply bytes): "
          + ", ".join(f"{n} {q}->{r}" for n, q, r in amp["replies"]))
    print("  targets: flood_ratio <= 1.2, slots_ratio <= 2, sybil every run, "
          "DHT amplification <= 3")
    figures.update({
        "bench": "hostile", "size_mib": size // MiB, "runs": a.runs,
        "sybil_successes": len(res["sybil"]), "sybil_every_run": len(res["sybil"]) == a.runs,
        "failed": {k: len(v) for k, v in fail.items()},
        "flood_dropped": notes["flood_dropped"], "flood_acked": notes["flood_acked"],
        "slots_peak_connections": notes["slots_peak"],
        "dht_worst_amplification": round(worst, 2),
        "dht_worst_reply_ratio": round(amp["worst_reply"], 2),
        "dht_total_ratio": round(amp["total"], 2),
        "aesgcm_mib_s": round(aes, 1), "blake3_mib_s": round(b3, 1),
        "cores": os.cpu_count(), "load_start": load_start, "load_end": loadavg(),
        "runs_s": {k: [round(x, 3) for x in v] for k, v in res.items()},
        "cmd": cmd,
    })
    first_failures = {k: v[0] for k, v in fail.items() if v}
    if first_failures:
        print(f"  failures: {first_failures}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
