"""Wide-area swarm benchmark (issue 13 part B): real processes over emulated WAN paths.

One downloader namespace and N seeder namespaces, each seeder reaching the downloader over
its own path through a router namespace (``bench/wanlab.py``): the seeder's uplink rate is
a ``tbf`` qdisc on its veth egress; delay and loss come from a user-space packet forwarder
per path (TUN devices, packets stay packets, so TCP sees the real RTT and loss; this
kernel has no ``netem``). Everything is created fresh per scenario under a per-run name
prefix (``wan<pid>-``) and removed at the end, also on SIGINT/SIGTERM.

Per scenario, first the emulation checks with raw TCP (a ping-pong RTT, one stream per
path alone, UDP loss each way on lossy paths), then ``--runs`` interleaved rounds of:

* ``ceiling``: one raw TCP stream from every seeder at once, until the bytes received add
  up to the file size (what an ideal scheduler over these paths could do);
* ``ours``: ``p2p share FILE`` in every seeder namespace, ``p2p fetch ID --peer ...`` in the
  downloader's (Noise + AES-GCM, every chunk verified); time = the ``seconds`` of its
  ``completed`` event (fetch start to the verified file in place), the process's wall time
  is printed too;
* ``libtorrent``: the reference harness's seeder and leecher (``../shared/bench``,
  encryption off, TCP only) run inside the same namespaces, time = add_torrent to seeding.

Scenarios: even (4 x 100 Mbit/s, 40 ms RTT), mixed (200/100/50/10 Mbit/s, 10/40/80/160
ms, 0.5% loss each way on the slowest two), stall (as even, seeder 0's path goes silent
once the downloader has received 30% of the file's size), highbdp (2 x 500 Mbit/s, 150
ms), far (2 x 100 Mbit/s, 300 ms).

    sudo .venv/bin/python bench/wan.py --quick                 # 32 MiB, every scenario, 1 round
    sudo .venv/bin/python bench/wan.py --size 256M --runs 3
    sudo .venv/bin/python bench/wan.py --scenarios highbdp,far --size 128M --runs 2

Needs root, ``ip netns``, ``tc tbf`` and ``/dev/net/tun``. Targets (issue 13): in every
scenario ours at least 0.95 of the ceiling's throughput and faster than libtorrent. In the
JSON, per scenario: ``ceiling_s``, ``ours_s``, ``libtorrent_s`` (medians),
``ours_fraction_of_ceiling`` = ceiling_s / ours_s and ``ours_vs_libtorrent`` =
libtorrent_s / ours_s (above 1: ours faster), the emulation checks, and the forwarders'
worst p99 release lateness during each contender's rounds (how far the emulated delay
slipped under that load).
Scratch data lives in a fresh folder in the system temp dir and is removed at the end.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import wanlab as W  # noqa: E402  (bench/ is on the path now)
from swarm import loadavg, make_data, parse_size  # noqa: E402

MiB = 1 << 20
LAB = str(HERE / "wanlab.py")
P2P_PORT = 7000
LT_SEED_PORT, LT_LEECH_PORT = 47100, 47099
STALL_AT = 0.30

SCENARIOS: dict[str, tuple[str, list[W.Path_], int | None]] = {
    # name: (description, paths, index of the path that dies at STALL_AT or None)
    "even": ("4 seeders, 100 Mbit/s each, 40 ms RTT",
             [W.Path_(100, 40) for _ in range(4)], None),
    "mixed": ("200/100/50/10 Mbit/s, 10/40/80/160 ms, 0.5% loss on the slowest two",
              [W.Path_(200, 10), W.Path_(100, 40), W.Path_(50, 80, 0.005),
               W.Path_(10, 160, 0.005)], None),
    "stall": ("as even; seeder 0's path goes dead 30% of the way in",
              [W.Path_(100, 40) for _ in range(4)], 0),
    "highbdp": ("2 seeders, 500 Mbit/s, 150 ms RTT", [W.Path_(500, 150) for _ in range(2)], None),
    "far": ("2 seeders, 100 Mbit/s, 300 ms RTT", [W.Path_(100, 300) for _ in range(2)], None),
}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}


def rx_bytes(pid: int) -> int:
    """Bytes received on every interface of the network namespace process pid is in."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return -1
    total = 0
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() != "lo":
            total += int(rest.split()[0])
    return total


class StallWatch:
    """Kill path ``index`` once the client process pid has received ``at`` bytes (a thread)."""

    def __init__(self, lab: W.Lab, index: int | None, proc: subprocess.Popen[str], at: int) -> None:
        self.fired_at: float | None = None
        if index is None:
            return
        self.t0 = time.perf_counter()
        want = os.stat(f"/run/netns/{lab.dl}").st_ino
        deadline = time.monotonic() + 3600

        def watch() -> None:
            # `ip netns exec` enters the namespace, then execs: count from the moment it is in.
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want:
                        break
                except OSError:
                    pass
                time.sleep(0.001)
            base = rx_bytes(proc.pid)
            while proc.poll() is None and time.monotonic() < deadline:
                n = rx_bytes(proc.pid)
                if n >= 0 and n - base >= at:
                    lab.kill_link(index)
                    self.fired_at = time.perf_counter() - self.t0
                    return
                time.sleep(0.01)

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()


# -- one scenario -------------------------------------------------------------------------


def emulation_summary(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The forwarders' counters over one run: how late packets left, what was lost."""
    p99 = [float(x.get("late_ms_p99", 0.0)) for x in stats]
    mx = [float(x.get("late_ms_max", 0.0)) for x in stats]
    return {"late_ms_p99_worst_path": round(max(p99, default=0.0), 2),
            "late_ms_max": round(max(mx, default=0.0), 2),
            "lost": [x.get("lost") for x in stats],
            "pkts": [x.get("pkts") for x in stats]}


def late_text(e: dict[str, Any]) -> str:
    return (f"; forwarders released packets late by p99 {e['late_ms_p99_worst_path']:.1f} ms "
            f"(worst path), max {e['late_ms_max']:.1f} ms")


class Scenario:
    def __init__(self, name: str, a: argparse.Namespace, data: Path, scratch: Path,
                 lt: dict[str, str] | None) -> None:
        self.name, self.a, self.data, self.scratch, self.lt = name, a, data, scratch, lt
        self.desc, self.paths, self.stall = SCENARIOS[name]
        self.size = data.stat().st_size
        self.lab = W.Lab(f"wan{os.getpid()}-", self.paths, max_seconds=a.max_seconds)
        self.daemons: list[subprocess.Popen[str]] = []
        self.cid = ""
        self.emulation: dict[str, Any] = {}

    def run_in(self, ns: str, *cmd: str, timeout: float = 600) -> dict[str, Any]:
        out = subprocess.run(self.lab.ns(ns, *cmd), capture_output=True, text=True,
                             timeout=timeout, env=clean_env(), cwd=self.scratch)
        lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"{cmd[:3]} in {ns} failed ({out.returncode}): {out.stderr[-800:]}")
        return json.loads(lines[-1])

    def daemon(self, ns: str, *cmd: str, ready: str) -> str:
        p = subprocess.Popen(self.lab.ns(ns, *cmd), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=clean_env(), cwd=self.scratch)
        self.daemons.append(p)
        line = p.stdout.readline() if p.stdout else ""
        if ready not in line:
            raise RuntimeError(f"{cmd[:4]} in {ns} did not start: {line!r}")
        return line

    # checks ---------------------------------------------------------------------------

    def checks(self) -> list[dict[str, Any]]:
        py, lab = sys.executable, self.lab
        out = []
        for i, p in enumerate(self.paths):
            host = lab.seeder_ip(i)
            ping = self.run_in(lab.dl, py, LAB, "ping", "--host", host, "--count", "10")
            secs = max(self.a.check_seconds, p.rtt_ms / 1000 * 20)
            rate = self.run_in(lab.dl, py, LAB, "rate", "--host", host, "--seconds", f"{secs:.1f}")
            row: dict[str, Any] = {"path": i, "configured": repr(p), "rtt_ms": round(ping["rtt_ms"], 2),
                                   "rtt_ms_range": [round(ping["rtt_ms_min"], 2), round(ping["rtt_ms_max"], 2)],
                                   "tcp_mbit": round(rate["mbit"], 1),
                                   "tcp_mbit_second_half": round(rate["mbit_second_half"], 1),
                                   "tcp_seconds": round(rate["seconds"], 1)}
            if p.loss:
                pps = min(1000.0, p.mbit * 1e6 / 8 / 1028 / 4)  # a quarter of the path's rate
                count = int(pps * self.a.check_seconds * 2)
                u = self.run_in(lab.dl, py, LAB, "udp", "--host", host, "--count", str(count),
                                "--pps", f"{pps:.0f}", "--wait", f"{1 + p.rtt_ms / 500:.1f}")
                row.update(udp_sent=count, udp_loss_up=round(u["loss_up"], 4),
                           udp_loss_down=round(u["loss_down"], 4))
            out.append(row)
            print(f"    path {i} ({p}): TCP ping-pong RTT {ping['rtt_ms']:.1f} ms "
                  f"({ping['rtt_ms_min']:.1f}-{ping['rtt_ms_max']:.1f}); one TCP stream alone "
                  f"{rate['mbit']:.1f} Mbit/s over {rate['seconds']:.1f} s, "
                  f"{rate['mbit_second_half']:.1f} in its second half"
                  + (f"; UDP loss {row['udp_loss_up'] * 100:.2f}% up, "
                     f"{row['udp_loss_down'] * 100:.2f}% down ({count} datagrams)" if p.loss else ""),
                  flush=True)
        if len(self.paths) > 1:
            self.lab.snapshot()
            secs = max(self.a.check_seconds, max(p.rtt_ms for p in self.paths) / 1000 * 20)
            procs = [subprocess.Popen(lab.ns(lab.dl, py, LAB, "rate", "--host", lab.seeder_ip(i),
                                             "--seconds", f"{secs:.1f}"),
                                      stdout=subprocess.PIPE, text=True, cwd=self.scratch)
                     for i in range(len(self.paths))]
            rates = []
            for proc in procs:
                text, _ = proc.communicate(timeout=secs + 60)
                rates.append(json.loads(text.strip().splitlines()[-1]))
            emu = emulation_summary(lab.snapshot())
            halves = [round(r["mbit_second_half"], 1) for r in rates]
            out.append({"path": "all at once", "tcp_mbit_second_half_by_path": halves,
                        "tcp_mbit_second_half_sum": round(sum(halves), 1), "emulation": emu})
            print(f"    all paths at once, one TCP stream each for {secs:.1f} s: second half "
                  f"{halves} Mbit/s, sum {sum(halves):.1f}" + late_text(emu), flush=True)
        return out

    # the three contenders ------------------------------------------------------------

    def start(self) -> None:
        py, lab = sys.executable, self.lab
        cids = set()
        for i, ns in enumerate(lab.seeders):
            host = lab.seeder_ip(i)
            self.daemon(ns, py, LAB, "serve", "--host", host, "--max-seconds",
                        str(self.a.max_seconds), ready="ready")
            line = self.daemon(ns, py, "-m", "p2p.cli", "share", str(self.data), "--state-dir",
                               str(self.scratch / f"{self.name}-seed{i}"), "--listen",
                               f"{host}:{P2P_PORT}", "--json", ready="content_id")
            cids.add(json.loads(line)["content_id"])
            if self.lt:
                self.daemon(ns, self.lt["python"], LAB, "lt-seed", "--lt-bench", self.lt["bench"],
                            "--host", host, "--port", str(LT_SEED_PORT), "--resume",
                            self.lt["resume"], "--torrent", self.lt["torrent"], "--save",
                            str(self.data.parent), "--max-seconds", str(self.a.max_seconds),
                            ready="READY")
        if len(cids) != 1:
            raise RuntimeError(f"seeders disagree on the content id: {cids}")
        self.cid = cids.pop()

    def timed(self, cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float, float | None]:
        """Run cmd in the downloader namespace with the stall watch; (result, wall s, stall s)."""
        for i in range(len(self.paths)):
            self.lab.revive_link(i)
        t0 = time.perf_counter()
        p = subprocess.Popen(self.lab.ns(self.lab.dl, *cmd), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=clean_env(), cwd=self.scratch)
        watch = StallWatch(self.lab, self.stall, p, int(self.size * STALL_AT))
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        wall = time.perf_counter() - t0
        for i in range(len(self.paths)):
            self.lab.revive_link(i)
        self.emulation = emulation_summary(self.lab.snapshot())
        return subprocess.CompletedProcess(p.args, p.returncode, out, err), wall, watch.fired_at

    def ceiling(self) -> dict[str, Any]:
        hosts = ",".join(self.lab.seeder_ip(i) for i in range(len(self.paths)))
        res, wall, fired = self.timed([sys.executable, LAB, "sink", "--hosts", hosts, "--size",
                                       str(self.size), "--max-seconds", str(self.a.timeout)],
                                      self.a.timeout + 30)
        r = json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])
        if not r["ok"]:
            raise RuntimeError(f"raw TCP ceiling did not finish: {r}")
        return {"seconds": r["seconds"], "wall": wall, "stall_at": fired, "emu": self.emulation,
                "mib_by_path": [round(x / MiB, 1) for x in r["bytes_by_path"]]}

    def ours(self, rnd: int) -> dict[str, Any]:
        state = self.scratch / f"{self.name}-dl{rnd}"
        dest = state / "out.bin"
        cmd = [sys.executable, "-m", "p2p.cli", "fetch", self.cid, "-o", str(dest), "--json",
               "--state-dir", str(state), "--listen", f"{self.lab.dl_ip(0)}:0",
               "--timeout", str(self.a.fetch_timeout)]
        for i in range(len(self.paths)):
            cmd += ["--peer", f"{self.lab.seeder_ip(i)}:{P2P_PORT}"]
        try:
            res, wall, fired = self.timed(cmd, self.a.timeout)
            done = [json.loads(x) for x in res.stdout.splitlines()
                    if x.startswith("{") and '"completed"' in x]
            if res.returncode != 0 or not done:
                return {"ok": False, "error": f"exit {res.returncode}: {res.stderr[-400:].strip()}",
                        "wall": wall}
            same = filecmp.cmp(dest, self.data, shallow=False)
            ev = done[-1]
            return {"ok": same, "seconds": float(ev["seconds"]), "wall": wall, "stall_at": fired,
                    "emu": self.emulation,
                    "chunks_by_peer": sorted(ev.get("chunks_by_peer", {}).values(), reverse=True),
                    **({} if same else {"error": "the file differs from the source"})}
        finally:
            shutil.rmtree(state, ignore_errors=True)

    def libtorrent(self) -> dict[str, Any]:
        assert self.lt
        save = self.scratch / f"{self.name}-lt-leech"
        shutil.rmtree(save, ignore_errors=True)
        save.mkdir()
        peers = ",".join(f"{self.lab.seeder_ip(i)}:{LT_SEED_PORT}" for i in range(len(self.paths)))
        try:
            res, wall, fired = self.timed(
                [self.lt["python"], LAB, "lt-leech", "--lt-bench", self.lt["bench"], "--port",
                 str(LT_LEECH_PORT), "--torrent", self.lt["torrent"], "--save", str(save),
                 "--peers", peers, "--timeout", str(self.a.timeout)], self.a.timeout + 60)
            lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if res.returncode != 0 or not lines or not json.loads(lines[-1])["ok"]:
                return {"ok": False, "error": f"exit {res.returncode}: {res.stderr[-400:].strip()}",
                        "wall": wall}
            return {"ok": True, "seconds": json.loads(lines[-1])["seconds"], "wall": wall,
                    "stall_at": fired, "emu": self.emulation}
        finally:
            shutil.rmtree(save, ignore_errors=True)

    def close(self) -> list[dict[str, object]]:
        stats: list[dict[str, object]] = []
        try:
            for p in self.daemons:
                if p.poll() is None:
                    p.terminate()
            for p in self.daemons:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if self.lab.forwarders:
                stats = self.lab.forwarder_stats()
        finally:
            self.lab.close()
        return stats


def run_scenario(name: str, a: argparse.Namespace, data: Path, scratch: Path,
                 lt: dict[str, str] | None) -> dict[str, Any]:
    sc = Scenario(name, a, data, scratch, lt)
    rounds: dict[str, list[dict[str, Any]]] = {"ceiling": [], "ours": [], "libtorrent": []}
    print(f"\nscenario {name}: {sc.desc}; {sc.size / MiB:.0f} MiB", flush=True)
    fw: list[dict[str, object]] = []  # what the forwarders counted after the last snapshot
    try:
        sc.lab.open()
        sc.start()
        print("  emulation checks (raw TCP / UDP, one path at a time):", flush=True)
        checks = sc.checks()
        sc.lab.snapshot()  # the forwarders' counters start afresh for the rounds
        for rnd in range(a.runs):
            r = sc.ceiling()
            rounds["ceiling"].append(r)
            print(f"  round {rnd + 1}: ceiling (raw TCP, one stream per seeder) "
                  f"{r['seconds']:.2f} s, MiB by path {r['mib_by_path']}"
                  + (f", path {sc.stall} killed at {r['stall_at']:.2f} s" if r["stall_at"] else "")
                  + late_text(r["emu"]), flush=True)
            r = sc.ours(rnd)
            rounds["ours"].append(r)
            print(f"  round {rnd + 1}: ours " + (
                f"{r['seconds']:.2f} s (process wall {r['wall']:.2f} s), chunks by peer "
                f"{r['chunks_by_peer']}" + (f", path {sc.stall} killed at {r['stall_at']:.2f} s"
                                            if r["stall_at"] else "") + late_text(r["emu"])
                if r["ok"] else f"FAILED after {r['wall']:.1f} s: {r['error']}"), flush=True)
            if lt:
                r = sc.libtorrent()
                rounds["libtorrent"].append(r)
                print(f"  round {rnd + 1}: libtorrent " + (
                    f"{r['seconds']:.2f} s (process wall {r['wall']:.2f} s)"
                    + (f", path {sc.stall} killed at {r['stall_at']:.2f} s" if r["stall_at"] else "")
                    + late_text(r["emu"]) if r["ok"] else f"FAILED after {r['wall']:.1f} s: {r['error']}"), flush=True)
    finally:
        fw = sc.close()
    return {"checks": checks, "rounds": rounds, "forwarders": fw}


def med(rows: list[dict[str, Any]]) -> float | None:
    ok = [float(r["seconds"]) for r in rows if r.get("ok", True) and "seconds" in r]
    return statistics.median(ok) if ok else None


def lt_setup(a: argparse.Namespace, size: int, scratch: Path) -> dict[str, str] | None:
    if a.no_libtorrent:
        return None
    if not (os.path.exists(a.lt_python) and os.path.exists(a.lt_bench)):
        print(f"libtorrent skipped: no {a.lt_python} or {a.lt_bench}", flush=True)
        return None
    env = {**os.environ, "BENCH_TMP": str(scratch)}
    out = subprocess.run([a.lt_python, a.lt_bench, "prepare", "--size", str(size)], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(a.lt_bench),
                         timeout=900)
    if out.returncode != 0:
        print(f"libtorrent skipped: prepare failed: {out.stderr[-400:]}", flush=True)
        return None
    lt_dir = scratch / "lt"
    torrent = next(lt_dir.glob("*.torrent"))
    return {"python": a.lt_python, "bench": str(Path(a.lt_bench).resolve()),
            "torrent": str(torrent), "resume": str(torrent.with_suffix(".resume"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--runs", type=int, default=1, help="interleaved rounds; figures are medians")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--quick", action="store_true", help="32 MiB, 1 round, short checks (smoke)")
    ap.add_argument("--check-seconds", type=float, default=4.0,
                    help="length of each path's raw TCP stream check (at least 20 RTTs)")
    ap.add_argument("--fetch-timeout", type=int, default=30, help="p2p fetch --timeout")
    ap.add_argument("--timeout", type=int, default=900, help="longest any one download may take")
    ap.add_argument("--max-seconds", type=int, default=7200,
                    help="every helper process ends by itself after this long")
    ap.add_argument("--no-libtorrent", action="store_true")
    ap.add_argument("--lt-python", default=str(Path(tempfile.gettempdir()) / "lt-venv" / "bin" / "python"))
    ap.add_argument("--lt-bench", default=str(HERE.parents[1] / "shared" / "bench" / "bench_libtorrent.py"))
    a = ap.parse_args()
    if a.quick:
        a.size, a.runs, a.check_seconds = "32M", 1, 2.0
    names = [x for x in a.scenarios.split(",") if x]
    for n in names:
        if n not in SCENARIOS:
            raise SystemExit(f"unknown scenario {n!r}; choose from {', '.join(SCENARIOS)}")
    if os.geteuid() != 0:
        raise SystemExit("bench/wan.py needs root (network namespaces, tc, /dev/net/tun)")
    size = parse_size(a.size)
    cmd = "sudo .venv/bin/python bench/wan.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    load_start = loadavg()
    print(f"WAN benchmark: {size / MiB:.0f} MiB, scenarios {names}, {a.runs} round(s); "
          f"{os.cpu_count()} cores, load average {load_start}", flush=True)
    print(f"reproduce: {cmd}", flush=True)
    print("emulation: seeder uplink = tbf on its veth (rate counts Ethernet frames: TCP goodput "
          "tops out at ~95.6% of it with 1500-byte MTU); delay (RTT/2 each way) and loss (each way) "
          "= a Python packet forwarder on a TUN device per path (packets, not a TCP proxy); "
          "tcp_rmem/tcp_wmem max 64 MiB in every namespace", flush=True)

    where = subprocess.run([sys.executable, "-c", "import p2p; print(p2p.__file__)"],
                           capture_output=True, text=True, env=clean_env(), cwd=tempfile.gettempdir(),
                           timeout=60).stdout.strip()
    tree = Path(where).parent.parent
    rev = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    print(f"p2p under test: the package the children import (PYTHONPATH picks it), "
          f"{'a git tree at ' + rev if rev else 'not a git tree (an export?)'}", flush=True)

    def on_term(sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with it ignored
    scratch = Path(tempfile.mkdtemp(prefix="p2p-wan-"))
    results: dict[str, Any] = {}
    prefix = f"wan{os.getpid()}-"
    interrupted = False
    try:
        data = make_data(scratch, size)
        lt = lt_setup(a, size, scratch)
        for name in names:
            results[name] = run_scenario(name, a, data, scratch, lt)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        left = W.leftovers(prefix)
        for ns in left:
            W.sh("ip", "netns", "del", ns, check=False)
    if interrupted:
        print(f"interrupted; namespaces left with prefix {prefix}: {W.leftovers(prefix) or 'none'}")
        raise SystemExit(130)
    print(f"\nresults ({size / MiB:.0f} MiB, median of {a.runs}; load average at end {loadavg()}); "
          "fraction = ceiling seconds / ours (throughput as a fraction of the raw-TCP ceiling), "
          "vs libtorrent = libtorrent seconds / ours (>1: ours faster):")
    summary: dict[str, Any] = {}
    for name, res in results.items():
        c, o, lt_s = (med(res["rounds"][k]) for k in ("ceiling", "ours", "libtorrent"))
        frac = c / o if c and o else None
        vs = lt_s / o if lt_s and o else None
        fails = {k: sum(1 for r in v if not r.get("ok", True)) for k, v in res["rounds"].items()}
        print(f"  {name:8s} ceiling {c or float('nan'):6.2f} s  ours {o or float('nan'):6.2f} s  "
              f"libtorrent {lt_s or float('nan'):6.2f} s  fraction {frac or float('nan'):.3f}"
              f"{' (target 0.95: ' + ('met' if frac and frac >= 0.95 else 'MISSED') + ')'}  "
              f"vs libtorrent {vs or float('nan'):.2f}x"
              f"{' (target >1: ' + ('met' if vs and vs > 1 else 'MISSED') + ')' if lt else ''}"
              + (f"  failures {fails}" if any(fails.values()) else ""))
        summary[name] = {
            "ceiling_s": round(c, 3) if c else None, "ours_s": round(o, 3) if o else None,
            "libtorrent_s": round(lt_s, 3) if lt_s else None,
            "ours_fraction_of_ceiling": round(frac, 3) if frac else None,
            "ours_vs_libtorrent": round(vs, 3) if vs else None,
            "failures": fails,
            "emulation_late_ms_p99": {k: max((float(r["emu"]["late_ms_p99_worst_path"]) for r in v
                                              if "emu" in r), default=None)
                                      for k, v in res["rounds"].items()},
            "stall_at_s": {k: [r.get("stall_at") and round(float(r["stall_at"]), 2) for r in v]
                           for k, v in res["rounds"].items()} if SCENARIOS[name][2] is not None else None,
            "runs_s": {k: [round(float(r["seconds"]), 3) if r.get("ok", True) and "seconds" in r
                           else None for r in v] for k, v in res["rounds"].items()},
            "checks": [{k: v for k, v in row.items() if k != "configured"}
                       | {"path": row.get("configured", row["path"])} for row in res["checks"]],
        }
    print("  targets (issue 13): fraction >= 0.95 and faster than libtorrent in every scenario")
    print(f"  namespaces left with prefix {prefix}: {W.leftovers(prefix) or 'none'}")
    print(json.dumps({"bench": "wan", "size_mib": size // MiB, "runs": a.runs,
                      "scenarios": summary, "libtorrent": bool(lt), "cores": os.cpu_count(),
                      "load_start": load_start, "load_end": loadavg(), "p2p_rev": rev or None,
                      "cmd": cmd}))


if __name__ == "__main__":
    main()
