"""Swarm download benchmark (issue 5): S seeder processes -> 1 downloader process on 127.0.0.1.

Every peer is a separate process running a real :class:`p2p.node.Node`
(``bench/swarm_peer.py``): the seeders share the same random file (each with
its own state directory), the downloader fetches it by content id with
``peers=`` the seeders' addresses, over our normal path (Noise XX + AES-GCM,
every chunk checked against its BLAKE3 hash, partial file + fdatasync commits,
rename into place). Time: from the fetch call to the verified file in place,
measured inside the downloader.

    python bench/swarm.py --size 1G --seeders 1,4 --runs 3 --vs-libtorrent --rss-size 4G
    python bench/swarm.py --quick            # 256 MiB smoke run

``--vs-libtorrent`` runs the same swarm in libtorrent in the same run (rounds
interleaved, so both see the same machine load) by invoking the reference
harness (``--lt-bench``, default ``../shared/bench/bench_libtorrent.py`` beside the repository) with
the Python of a venv that has libtorrent (``--lt-python``); both read the same
data file. ``--rss-size 4G`` adds one download of a 4 GiB file and reports the
downloader's peak RSS (VmHWM read from /proc/PID/status of the downloader child).
``--py-spy PREFIX`` records py-spy collapsed stacks (PREFIX-S<n>-<role>.txt,
``flamegraph.pl`` or speedscope read them) (downloader and seeder 0) of the
first round of each seeder count.

Scratch data lives in a fresh folder in the system temp dir and is removed at
the end. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER = HERE / "swarm_peer.py"
MiB = 1 << 20
TIMEOUT = 600


def parse_size(text: str) -> int:
    """'1G', '256M', '512K' (also GiB/MiB/KiB) or a number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def size_tag(n: int) -> str:
    """The name the libtorrent harness gives its data file (random_1gib.bin), so both share it."""
    for unit, m in (("gib", 1 << 30), ("mib", 1 << 20), ("kib", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return f"{n}b"


def make_data(folder: Path, size: int) -> Path:
    path = folder / f"random_{size_tag(size)}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())  # no writeback of the source competing with the first timed run
    return path


# -- machine accounting -------------------------------------------------------------------


def sys_cpu() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds of a process (or of one of its threads; tid == pid is the main thread)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def minflt(pid: int) -> int:
    """Minor page faults of a process so far (fresh memory touched: costly on this VM)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except OSError:
        return 0


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- our swarm ----------------------------------------------------------------------------


class DownloadFailed(RuntimeError):
    """The downloader child did not deliver the file (counted and retried, not hidden)."""


def run_ours_retrying(failures: list[str], *args: object, **kw: object) -> dict[str, object]:
    """run_ours; a failed download is reported, counted in ``failures`` and run again (3 tries)."""
    for attempt in range(3):
        try:
            return run_ours(*args, **kw)  # type: ignore[arg-type]
        except DownloadFailed as exc:
            failures.append(str(exc))
            print(f"  FAILED (attempt {attempt + 1}): {exc}", flush=True)
    raise SystemExit("the download failed 3 times in a row")


PATCH: list[str] = []
"""``--patch FILE`` for every child (set by main)."""


def start_seeders(n: int, data: Path, scratch: Path,
                  cprofile: str | None = None) -> tuple[list[subprocess.Popen[str]], list[int], str]:
    """A bare bootstrap node (DHT contact for everyone), then n seeders. Returns them all (boot last)."""
    state = scratch / "boot"
    shutil.rmtree(state, ignore_errors=True)
    bootp = subprocess.Popen([sys.executable, str(PEER), "boot", "--state", str(state), *PATCH],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = bootp.stdout.readline() if bootp.stdout else ""
    if not line.strip():
        stop([bootp])
        raise RuntimeError("the bootstrap node failed to start")
    boot = json.loads(line)["port"]
    procs: list[subprocess.Popen[str]] = []
    for i in range(n):
        state = scratch / f"seed{i}"
        shutil.rmtree(state, ignore_errors=True)
        procs.append(subprocess.Popen(
            [sys.executable, str(PEER), "seed", "--state", str(state), "--file", str(data),
             "--boot", str(boot), *PATCH,
             *(["--cprofile", f"{cprofile}.seed{i}"] if cprofile and i == 0 else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    ports, cids = [], set()
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        if not line.strip():
            stop([*procs, bootp])
            raise RuntimeError("a seeder failed to start")
        info = json.loads(line)
        ports.append(info["port"])
        cids.add(info["content_id"])
    if len(cids) != 1:
        stop([*procs, bootp])
        raise RuntimeError(f"seeders disagree on the content id: {cids}")
    return [*procs, bootp], [*ports, boot], cids.pop()


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.stdin and not p.stdin.closed:
            try:
                p.stdin.close()
            except OSError:
                pass
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def py_spy(pid: int, out: str, seconds: float) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        print("  (py-spy not installed next to this python; skipping profile)")
        return None
    return subprocess.Popen([str(exe), "record", "--pid", str(pid), "-o", out, "-r", "250", "-f", "raw",
                             "-d", str(int(seconds)), "--idle", "--threads", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_ours(size: int, n: int, data: Path, scratch: Path, profile: str | None = None,
             cprofile: str | None = None) -> dict[str, object]:
    procs, ports, cid = start_seeders(n, data, scratch, cprofile)
    seeders, boot = procs[:-1], ports.pop()
    state, dest = scratch / "dl-state", scratch / "dl" / data.name
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(dest.parent, ignore_errors=True)
    dest.parent.mkdir(parents=True)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        cmd = [sys.executable, str(PEER), "fetch", "--state", str(state), "--dest", str(dest),
               "--content-id", cid, "--peers", ",".join(map(str, ports)), "--size", str(size),
               "--boot", str(boot), *PATCH]
        if cprofile:
            cmd += ["--cprofile", cprofile]
        seed_cpu0 = [(cpu_s(p.pid), cpu_s(p.pid, p.pid)) for p in seeders]
        tot0, idle0 = sys_cpu()
        errlog = scratch / "downloader.stderr"
        with open(errlog, "w") as err:
            dl = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                  text=True)
        if profile:
            for pid, tag in ((dl.pid, "downloader"), (seeders[0].pid, "seeder0")):
                spy = py_spy(pid, f"{profile}-{tag}.txt", max(3, size / MiB / 150))
                if spy:
                    spies.append(spy)
        line = dl.stdout.readline() if dl.stdout else ""
        tot1, idle1 = sys_cpu()
        seed_cpu1 = [(cpu_s(p.pid), cpu_s(p.pid, p.pid)) for p in seeders]
        if not line.strip():
            dl.kill()
            dl.wait()
            tail = errlog.read_text().strip().splitlines()[-6:]
            raise DownloadFailed("the downloader failed: " + " | ".join(x.strip() for x in tail))
        r = json.loads(line)
        r["hwm_kib_proc"] = vm_hwm_kib(dl.pid)
        r["seed_minflt"] = sum(minflt(p.pid) for p in seeders)
        stop([dl])
    finally:
        for spy in spies:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        stop(procs)
    if not r["ok"]:
        raise DownloadFailed(f"download incomplete: {r}")
    r["mib_s"] = size / MiB / r["elapsed"]
    r["seed_cpu"] = sum(b[0] - a[0] for a, b in zip(seed_cpu0, seed_cpu1, strict=True))
    r["seed_loop_cpu"] = [b[1] - a[1] for a, b in zip(seed_cpu0, seed_cpu1, strict=True)]
    r["busy"] = 1 - (idle1 - idle0) / max(1, tot1 - tot0)
    shutil.rmtree(dest.parent, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    return r


def describe(r: dict[str, object]) -> str:
    el = float(r["elapsed"])  # type: ignore[arg-type]
    loops = ", ".join(f"{float(x) / el * 100:.0f}%" for x in r["seed_loop_cpu"])  # type: ignore[attr-defined]
    return (f"{el:.2f}s = {float(r['mib_s']):.0f} MiB/s; "  # type: ignore[arg-type]
            f"downloader cpu {float(r['cpu']):.1f}s (event loop {float(r['loop_cpu']) / el * 100:.0f}% busy), "  # type: ignore[arg-type]
            f"seeders cpu {float(r['seed_cpu']):.1f}s (loops {loops}); machine busy "  # type: ignore[arg-type]
            f"{float(r['busy']) * 100:.0f}%; chunks per seeder {r['chunks_by_peer']}; "  # type: ignore[arg-type]
            f"peak RSS {int(r['hwm_kib_proc']) / 1024:.0f} MiB; downloader threads (user, sys) s "
            f"{r['threads_user_sys']}; page faults: downloader {int(r['minflt']) / 1000:.0f}k, "  # type: ignore[call-overload]
            f"seeders {int(r['seed_minflt']) / 1000:.0f}k (whole life)")  # type: ignore[call-overload]  # type: ignore[call-overload]


# -- libtorrent ---------------------------------------------------------------------------

LT_LINE = re.compile(r"run \d+: S=(\d+) enc=off: ([\d.]+)s = \d+ MiB/s; "
                     r"leecher cpu ([\d.]+)s, seeders cpu ([\d.]+)s")


def lt_env(scratch: Path) -> dict[str, str]:
    return {**os.environ, "BENCH_TMP": str(scratch)}


def lt_prepare(a: argparse.Namespace, size: int, scratch: Path) -> None:
    subprocess.run([a.lt_python, a.lt_bench, "prepare", "--size", str(size)],
                   env=lt_env(scratch), check=True, stdout=subprocess.DEVNULL,
                   cwd=os.path.dirname(a.lt_bench), timeout=TIMEOUT)


def run_lt(a: argparse.Namespace, size: int, seeders: list[int],
           scratch: Path) -> dict[int, tuple[float, float]]:
    """One libtorrent round: {S: (MiB/s, CPU seconds of leecher + seeders)}."""
    out = subprocess.run([a.lt_python, a.lt_bench, "run", "--size", str(size), "--seeders",
                          ",".join(map(str, seeders)), "--enc", "off", "--runs", "1"],
                         env=lt_env(scratch), capture_output=True, text=True,
                         cwd=os.path.dirname(a.lt_bench), timeout=TIMEOUT * 2)
    if out.returncode != 0:
        raise RuntimeError(f"libtorrent run failed: {out.stderr[-2000:]}")
    res = {}
    for line in out.stdout.splitlines():
        m = LT_LINE.search(line)
        if m:
            res[int(m.group(1))] = (size / MiB / float(m.group(2)),
                                    float(m.group(3)) + float(m.group(4)))
            print(f"  libtorrent {line.strip()}", flush=True)
    return res


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--quick", action="store_true", help="256 MiB, one run (smoke)")
    ap.add_argument("--seeders", default="1,4")
    ap.add_argument("--runs", type=int, default=1, help="rounds; figures are medians")
    ap.add_argument("--vs-libtorrent", action="store_true")
    ap.add_argument("--lt-python", default=str(Path(tempfile.gettempdir()) / "lt-venv" / "bin" / "python"),
                    help="Python of a venv with libtorrent (default: lt-venv in the system temp dir)")
    ap.add_argument("--lt-bench", default=str(Path(__file__).resolve().parents[2] / "shared" / "bench"
                                              / "bench_libtorrent.py"))
    ap.add_argument("--rss-size", help="also download a file of this size and report peak RSS")
    ap.add_argument("--py-spy", metavar="PREFIX", help="py-spy collapsed stacks PREFIX-*.txt")
    ap.add_argument("--patch", metavar="FILE",
                    help="run FILE in every child first (measure a library change without editing it)")
    ap.add_argument("--cprofile", metavar="FILE", help="cProfile (CPU time) the event loop of the downloader -> FILE and of seeder 0 -> "
                         "FILE.seed0 (first round, largest S)")
    a = ap.parse_args()
    if a.quick:
        a.size = "256M"
    if a.patch:
        PATCH[:] = ["--patch", str(Path(a.patch).resolve())]
    size = parse_size(a.size)
    counts = [int(s) for s in a.seeders.split(",")]
    cmd = "$PY bench/swarm.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    machine = {"cores": os.cpu_count(), "load_start": loadavg()}
    print(f"swarm benchmark: {size / MiB:.0f} MiB, seeders {counts}, {a.runs} round(s); "
          f"{machine['cores']} cores, load average {machine['load_start']}", flush=True)
    print(f"reproduce: {cmd}", flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="p2p-swarm-"))
    ours: dict[int, list[dict[str, object]]] = {n: [] for n in counts}
    lt: dict[int, list[float]] = {n: [] for n in counts}
    lt_cpu: dict[int, list[float]] = {n: [] for n in counts}
    rss: dict[str, object] | None = None
    failures: list[str] = []
    try:
        t0 = time.perf_counter()
        data = make_data(scratch, size)
        print(f"data file {data} ready in {time.perf_counter() - t0:.1f}s", flush=True)
        if a.vs_libtorrent:
            t0 = time.perf_counter()
            lt_prepare(a, size, scratch)
            print(f"libtorrent torrent + resume data ready in {time.perf_counter() - t0:.1f}s",
                  flush=True)
        for rnd in range(a.runs):
            for n in counts:
                prof = f"{a.py_spy}-S{n}" if a.py_spy and rnd == 0 else None
                cprof = a.cprofile if a.cprofile and rnd == 0 and n == max(counts) else None
                r = run_ours_retrying(failures, size, n, data, scratch, prof, cprof)
                ours[n].append(r)
                print(f"  round {rnd + 1}: ours S={n}: {describe(r)}", flush=True)
            if a.vs_libtorrent:
                for n, (v, c) in run_lt(a, size, counts, scratch).items():
                    lt.setdefault(n, []).append(v)
                    lt_cpu.setdefault(n, []).append(c)
        if a.rss_size:
            rsize = parse_size(a.rss_size)
            for f in scratch.glob("random_*.bin"):
                if f != data:
                    f.unlink()
            rdata = make_data(scratch, rsize)
            n = max(counts)
            r = run_ours_retrying(failures, rsize, n, rdata, scratch)
            rdata.unlink()
            rss = r
            print(f"  RSS run {rsize / MiB:.0f} MiB, S={n}: {describe(r)}; RSS before fetch "
                  f"{int(r['rss_before_kib']) / 1024:.0f} MiB", flush=True)  # type: ignore[call-overload]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    machine["load_end"] = loadavg()
    med = {n: statistics.median(float(r["mib_s"]) for r in rs) for n, rs in ours.items()}  # type: ignore[arg-type]
    hi, lo = max(counts), min(counts)
    print(f"\nresults ({size / MiB:.0f} MiB, median of {a.runs}; load average at end "
          f"{machine['load_end']}):")
    gib = size / (1 << 30)
    cpu = {n: statistics.median(float(r["cpu"]) + float(r["seed_cpu"]) for r in rs) / gib  # type: ignore[arg-type]
           for n, rs in ours.items()}
    for n in counts:
        line = f"  {n} seeder(s): ours {med[n]:.0f} MiB/s " \
               f"{[round(float(r['mib_s'])) for r in ours[n]]}"  # type: ignore[arg-type]
        line += f", {cpu[n]:.2f} CPU-s/GiB (all processes)"
        if lt.get(n):
            lm = statistics.median(lt[n])
            lc = statistics.median(lt_cpu[n]) / gib
            line += (f"; libtorrent {lm:.0f} MiB/s {[round(x) for x in lt[n]]}, {lc:.2f} CPU-s/GiB; "
                     f"ratio {med[n] / lm:.2f}x (CPU efficiency {lc / cpu[n]:.2f}x)")
        print(line)
    peak = max(int(r["hwm_kib_proc"]) for rs in ours.values() for r in rs) / 1024  # type: ignore[call-overload]
    print(f"  downloader peak RSS over the {size / MiB:.0f} MiB runs: {peak:.0f} MiB")
    out: dict[str, object] = {
        "bench": "swarm", "size_mib": size // MiB, "runs": a.runs,
        "mib_s": round(med[hi], 1), "mib_s_1": round(med[lo], 1),
        "seeders": counts, "mib_s_by_seeders": {str(n): round(v, 1) for n, v in med.items()},
        "peak_rss_mib": round(peak, 1),
        "cpu_s_per_gib": round(cpu[hi], 2), "cpu_s_per_gib_1": round(cpu[lo], 2),
    }
    if rss is not None:
        out["peak_rss_mib"] = round(int(rss["hwm_kib_proc"]) / 1024, 1)  # type: ignore[call-overload]
        out["rss_size_mib"] = parse_size(a.rss_size) // MiB
        out["rss_run_mib_s"] = round(float(rss["mib_s"]), 1)  # type: ignore[arg-type]
        out["peak_rss_mib_main_runs"] = round(peak, 1)
    if a.vs_libtorrent and lt.get(hi):
        lm_hi = statistics.median(lt[hi])
        out["libtorrent_mib_s"] = round(lm_hi, 1)
        out["ratio"] = round(med[hi] / lm_hi, 2)
        out["libtorrent_cpu_s_per_gib"] = round(statistics.median(lt_cpu[hi]) / gib, 2)
        if lt.get(lo):
            out["libtorrent_mib_s_1"] = round(statistics.median(lt[lo]), 1)
            out["ratio_1"] = round(med[lo] / statistics.median(lt[lo]), 2)
    out["failed_downloads"] = len(failures)
    if failures:
        print(f"  {len(failures)} download(s) FAILED and were run again; first: {failures[0]}")
    out.update(cores=machine["cores"], load_start=machine["load_start"],
               load_end=machine["load_end"], cmd=cmd)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
