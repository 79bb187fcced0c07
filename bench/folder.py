"""Folder benchmark (issue 14): many small files from 4 seeders, against libtorrent, in one run.

Two folders, each shared by S seeder processes and fetched by one downloader process on
127.0.0.1 (``bench/swarm_peer.py``, each a real :class:`p2p.node.Node`: Noise XX +
AES-GCM, every chunk checked against its BLAKE3 hash, partial files and commits, rename into
place):

* **small**: ``--files-small`` files (10,000) of ``--size-small`` (4 KiB) each;
* **mixed**: ``--files-mixed`` files (100,000) of mixed sizes, drawn with ``--seed``:
  99.7% small (log-normal, median 4 KiB, sigma 0.8, clipped to 1 B..256 KiB), 0.3% medium
  (uniform 64 KiB..2 MiB) and 3 large ones (uniform 128..320 MiB, scaled by
  files/100,000 so a smaller count keeps the proportions). About 1.5 GiB at 100,000 files.

Files sit 1,000 to a folder (``dNNN/fNNNNNN.dat``). In the same run (rounds interleaved,
so both see the same machine load) libtorrent fetches each folder as one multi-file torrent
from S libtorrent seeders (``bench/folder_lt.py``, run with ``--lt-python``, the Python of
a venv with libtorrent): its default hybrid v1+v2 torrent, and a v1-only one beside it.
Time: from the fetch call (add_torrent) to the complete verified folder, measured inside the
downloader (leecher).

Every contender starts from the same file-system condition:

* **No file is deleted while the run measures.** On ext4 without a journal (this machine's
  root), creating a file skips every free inode of its block group that was freed recently
  (``recently_deleted()`` in ``fs/ext4/ialloc.c``: a lookup of the inode-table block per
  skipped inode), so the contender that follows the deletion of a 10,000-file tree paid up to
  a few CPU seconds in the kernel that the one before it did not (measured on this VM: 10,000
  files of 4 KiB created in 0.4-0.7 s, 1.2-2.6 s within 30 s of deleting 10,000 others, sync
  or not; ``perf``: ``find_get_block_common`` under ``recently_deleted``). Each timed fetch
  therefore writes into a fresh folder of its own (``runs/CASE-rN-WHO``), and every tree is
  kept until the end of the run, when the scratch folder is removed whole.
* **Nobody else's deletions either.** Other processes of the machine make and delete their
  scratch files in the temp dir all the time (a test suite: tens of thousands a minute), and
  the previous run's cleanup deleted its trees. Two steps keep that out of the figures:
  ``runs/`` and ``data/`` are marked top-level (``chattr +T``, :func:`spread_subfolders`), so
  ext4 places each run's folder in a block group of its own rather than next to the temp
  dir's; and right before each timed fetch (seeders up and listening) :func:`settle` runs
  ``sync``, waits (at most :data:`SETTLE_MAX_S`) until the dirty and writeback pages are
  under :data:`SETTLE_DIRTY_MIB` (no contender writes back the one before), drops the clean
  page cache (``/proc/sys/vm/drop_caches``, as root; ``--keep-caches`` not to) and reads the
  shared folder and the seeders' states back in. A freed inode counts as recently deleted
  only while its inode-table block is cached, so after the drop none does, whatever was
  deleted before: on this VM, 10,000 files of 4 KiB created right after deleting 10,000
  others took 1.9 s (1.7 s in the kernel), and 0.29 s after ``sync`` and a drop (0.94 s
  before any deletion, beside the temp dir's churn). The JSON says which steps the machine
  took (``spread_subfolders``, ``drop_caches``); the run goes on without them.
* **Order alternates.** Round 1 runs ours, hybrid, v1; round 2 v1, hybrid, ours; and so on:
  no contender is always first or always last after the other's load. ``--baseline TREE``
  adds ours from another source tree as one more contender (before/after in one run).

Each round's figures are printed (with the downloader's user and system CPU seconds, the
system part being where a file-system effect shows), then per contender the median and the
spread (min..max); ``ratio_small`` is the hybrid median over ours, and the per-round ratios
are in the JSON (``ratio_rounds_small``).

Reported per folder: files/s, MiB/s, and the downloader's peak RSS (VmHWM) and peak open
descriptors (``/proc/PID/fd`` sampled every 5 ms). Targets: at least 2x libtorrent's default
torrent in both cases, peak RSS at most 200 MiB, at most 256 descriptors.

    python bench/folder.py                     # 10,000 x 4 KiB and 100,000 mixed
    python bench/folder.py --quick             # about a minute: 5,000 x 4 KiB, 5,000 mixed
    python bench/folder.py --files-mixed 20000 --cases mixed
    python bench/folder.py --cases small --runs 3 --no-libtorrent --baseline ../before
                                               # ours against an earlier tree, interleaved
    python bench/folder.py --cases small --cprofile PREFIX     # cProfile of the downloader
                                                               # (PREFIX) and seeder 0 (PREFIX.seed0)

A folder our manifest cannot describe (too many entries or bytes of hashes) makes the
seeders refuse to share it: the case is reported as refused, with the seeder's error, and
the run goes on. Scratch data lives in a fresh folder in the system temp dir (``--scratch``
to choose where) and is removed at the end: it holds every fetched tree of the run (for 3
rounds of 10,000 x 4 KiB, 9 trees, 360 MiB; of the 100,000-file folder, about 16 GiB). The
last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarm import cpu_s, loadavg, parse_size, stop, vm_hwm_kib

from p2p.content import MAX_MANIFEST_BYTES

HERE = Path(__file__).resolve().parent
PEER = HERE / "swarm_peer.py"
LT_PEER = HERE / "folder_lt.py"
MiB = 1 << 20
TIMEOUT = 1800
FILES_PER_DIR = 1000
RSS_TARGET_MIB = 200
FD_TARGET = 256
RATIO_TARGET = 2.0
SETTLE_DIRTY_MIB = 16
"""Before a timed fetch, the kernel's dirty + writeback pages must be under this (after a sync)."""
SETTLE_MAX_S = 30.0
"""The longest wait for :data:`SETTLE_DIRTY_MIB` (other work on the machine may keep writing)."""
PATCH: list[str] = []
"""``--patch FILE`` for every child of ours (set by main)."""
PY_SPY: list[str] = []
"""``--py-spy EXE PREFIX``: the py-spy to run, and where its stacks go (set by main)."""


# -- the folders --------------------------------------------------------------------------


def mixed_sizes(count: int, seed: int) -> list[int]:
    """The mixed folder's file sizes (see the module docstring), shuffled, from ``seed``."""
    rng = random.Random(seed)
    large = min(3, count)
    medium = min(count - large, round(count * 0.003))
    small = count - large - medium
    scale = count / 100_000
    sizes = [max(1, min(256 << 10, round(rng.lognormvariate(math.log(4096), 0.8))))
             for _ in range(small)]
    sizes += [rng.randint(64 << 10, 2 << 20) for _ in range(medium)]
    sizes += [max(MiB, round(rng.uniform(128, 320) * MiB * scale)) for _ in range(large)]
    rng.shuffle(sizes)
    return sizes


def make_folder(root: Path, sizes: list[int]) -> Path:
    """Random files of ``sizes`` under ``root`` (made afresh); returns it."""
    shutil.rmtree(root, ignore_errors=True)
    for i, size in enumerate(sizes):
        sub = root / f"d{i // FILES_PER_DIR:03d}"
        if i % FILES_PER_DIR == 0:
            sub.mkdir(parents=True)
        with open(sub / f"f{i:06d}.dat", "wb") as f:
            left = size
            while left:
                n = min(left, 16 * MiB)
                f.write(os.urandom(n))
                left -= n
    os.sync()  # no writeback of the source competing with the timed runs
    return root


# -- the machine --------------------------------------------------------------------------


def machine_speeds(scratch: Path) -> dict[str, float]:
    """Raw speeds of this machine, one thread, measured now: AES-256-GCM sealing 64 KiB records
    (the wire's), BLAKE3 over 1 MiB and over 4 KiB (a small file's chunk), and files of 4 KiB
    created, written and closed in one folder (the floor of a small file's cost on this disk)."""
    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def rate(work: int, fn: object, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()  # type: ignore[operator]
        return work * reps / (time.perf_counter() - t0)

    aead, record, nonce = AESGCM(os.urandom(32)), os.urandom(64 << 10), os.urandom(12)
    big, small = os.urandom(MiB), os.urandom(4096)
    out = {
        "aes_gcm_gib_s": rate(len(record), lambda: aead.encrypt(nonce, record, b""), 4096) / (1 << 30),
        "blake3_gib_s": rate(MiB, lambda: blake3.blake3(big).digest(), 512) / (1 << 30),
        "blake3_4k_per_s": rate(1, lambda: blake3.blake3(small).digest(), 50_000),
    }
    folder = scratch / "runs" / "creates"  # where the contenders write (spread_subfolders)
    folder.mkdir()
    t0 = time.perf_counter()
    for i in range(2000):
        fd = os.open(folder / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, small)
        os.close(fd)
    out["creates_per_s"] = 2000 / (time.perf_counter() - t0)
    # Kept (removed with the scratch folder at the end): freed inodes would slow the next
    # creates (see the module docstring).
    return {k: round(v, 2) for k, v in out.items()}


# -- the file system's condition ----------------------------------------------------------


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000
"""``linux/fs.h``: the inode-flags ioctls, and the flag that makes a folder's subfolders top-level."""


def spread_subfolders(folder: Path) -> bool:
    """Mark ``folder`` as a top of a hierarchy (``chattr +T``): ext4 places each new subfolder
    of it in a block group of its own with many free inodes (the Orlov allocator's rule for
    top-level folders), instead of next to its parent. Returns whether the file system took it.

    Why: the system temp dir's block groups are where every process of the machine makes and
    deletes its scratch files, so a tree created next to it skips whatever they freed lately
    (see the module docstring); one in a group of its own does not, whatever else runs."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_TOPDIR_FL))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def dirty_mib() -> float:
    """The kernel's dirty and writeback pages, MiB (``/proc/meminfo``)."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Dirty", "Writeback"):
                total += int(value.split()[0])
    return total / 1024


DROP_CACHES: list[bool] = []
"""``[True]`` when each fetch starts with the clean caches dropped (set by main, see :func:`settle`)."""


def settle(warm: list[Path]) -> dict[str, float]:
    """Bring the file system to the same condition before each timed fetch: ``sync``, then
    wait (at most :data:`SETTLE_MAX_S`) until the dirty and writeback pages are under
    :data:`SETTLE_DIRTY_MIB`, so nothing of an earlier fetch is left to write back; then (as
    root, unless ``--keep-caches``) drop the clean page cache and read the files under
    ``warm`` (the shared folder, the seeders' states) back in: ext4 without a journal skips,
    on every create, each free inode freed lately whose inode-table block is still cached
    (see the module docstring), and a dropped cache leaves none of them, whoever deleted
    what before. Returns what it found (for the report)."""
    t0 = time.perf_counter()
    before = dirty_mib()
    os.sync()
    left = dirty_mib()
    while left > SETTLE_DIRTY_MIB and time.perf_counter() - t0 < SETTLE_MAX_S:
        time.sleep(0.1)
        os.sync()
        left = dirty_mib()
    if DROP_CACHES:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")  # clean page cache only: nothing dirty is lost, nothing is unmounted
        for top in warm:
            for dirpath, _, names in os.walk(top):
                for name in names:
                    with contextlib.suppress(OSError), open(os.path.join(dirpath, name), "rb") as f:
                        while f.read(1 << 20):
                            pass
    return {"dirty_mib_before": round(before, 1), "dirty_mib_after": round(left, 1),
            "settle_s": round(time.perf_counter() - t0, 2)}


def user_sys_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# -- sampling a process -------------------------------------------------------------------


class Sampler:
    """Peak open descriptors of a process, sampled on a thread until :meth:`stop`."""

    def __init__(self, pid: int, period: float = 0.005) -> None:
        self.pid = pid
        self.period = period
        self.peak_fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = f"/proc/{self.pid}/fd"
        while not self._stop.is_set():
            try:
                self.peak_fds = max(self.peak_fds, len(os.listdir(path)))
            except OSError:
                return
            self._stop.wait(self.period)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_fds


@dataclass
class Result:
    """One timed fetch of one folder."""

    elapsed: float
    files: int
    size: int
    peak_rss_mib: float
    peak_fds: int
    user_s: float = 0.0
    """The downloader's user CPU seconds (the whole process, up to its result line)."""
    sys_s: float = 0.0
    """The downloader's system CPU seconds: where the kernel's share of the work shows."""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def files_per_s(self) -> float:
        return self.files / self.elapsed

    @property
    def mib_s(self) -> float:
        return self.size / MiB / self.elapsed

    def describe(self) -> str:
        return (f"{self.elapsed:.2f}s = {self.files_per_s:,.0f} files/s, {self.mib_s:.1f} MiB/s; "
                f"peak RSS {self.peak_rss_mib:.0f} MiB, peak fds {self.peak_fds}; "
                f"CPU user {self.user_s:.2f} s, sys {self.sys_s:.2f} s")


class Refused(RuntimeError):
    """Our seeders would not share the folder (a manifest limit): reported, not retried."""


def read_line(proc: subprocess.Popen[str], errlog: Path, what: str) -> dict[str, object]:
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip():
        proc.wait(30)
        tail = errlog.read_text().strip().splitlines()[-4:] if errlog.exists() else []
        raise RuntimeError(f"{what} failed: " + " | ".join(x.strip() for x in tail))
    return json.loads(line)


def spawn(cmd: list[str], errlog: Path, tree: str | None = None) -> subprocess.Popen[str]:
    """Start a child; ``tree``: import ``p2p`` from that source tree instead of this one."""
    env = None if tree is None else {**os.environ, "PYTHONPATH": tree}
    with open(errlog, "w") as err:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)


# -- ours ---------------------------------------------------------------------------------


def run_ours(folder: Path, files: int, size: int, seeders: int, scratch: Path,
             cprofile: str | None, tree: str | None = None) -> Result:
    """One timed fetch of ``folder`` by our downloader from ``seeders`` seeders; everything
    it writes (states, the fetched tree) goes under ``scratch``, a fresh folder, and stays.
    ``tree``: every process of ours imports ``p2p`` from that source tree (``--baseline``)."""
    procs: list[subprocess.Popen[str]] = []
    scratch.mkdir(parents=True)
    try:
        boot_state = scratch / "boot"
        procs.append(spawn([sys.executable, str(PEER), "boot", "--state", str(boot_state), *PATCH],
                           scratch / "boot.stderr", tree))
        boot = str(read_line(procs[0], scratch / "boot.stderr", "the bootstrap node")["port"])
        t0 = time.perf_counter()
        for i in range(seeders):
            state = scratch / f"seed{i}"
            procs.append(spawn([sys.executable, str(PEER), "seed", "--state", str(state),
                                "--file", str(folder), "--boot", boot, *PATCH,
                                *(["--cprofile", f"{cprofile}.seed0"] if cprofile and i == 0 else [])],
                               scratch / f"seed{i}.stderr", tree))
        ports, cids = [], set()
        for i, p in enumerate(procs[1:]):
            try:
                info = read_line(p, scratch / f"seed{i}.stderr", "a seeder")
            except RuntimeError as exc:
                raise Refused(str(exc)) from None
            ports.append(str(info["port"]))
            cids.add(str(info["content_id"]))
            manifest_bytes = int(info["manifest_bytes"])  # type: ignore[call-overload]

        share_s = time.perf_counter() - t0
        if len(cids) != 1:
            raise RuntimeError(f"seeders disagree on the content id: {cids}")
        state, dest = scratch / "dl-state", scratch / "dl" / folder.name
        dest.parent.mkdir(parents=True)
        cmd = [sys.executable, str(PEER), "fetch", "--state", str(state), "--dest", str(dest),
               "--content-id", cids.pop(), "--peers", ",".join(ports), "--boot", boot,
               "--size", str(size), "--files", str(files), *PATCH,
               *(["--cprofile", cprofile] if cprofile else [])]
        settled = settle([folder, scratch])
        seed_cpu0 = sum(cpu_s(p.pid) for p in procs[1:])
        dl = spawn(cmd, scratch / "downloader.stderr", tree)
        procs.insert(0, dl)
        sampler = Sampler(dl.pid)
        spies = [subprocess.Popen([PY_SPY[0], "record", "--pid", str(pid), "-o", f"{PY_SPY[1]}-{tag}.txt",
                                   "-r", "500", "-f", "raw", "--nonblocking", "--threads"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid, tag in ((dl.pid, "downloader"), (procs[2].pid, "seeder0"))] if PY_SPY else []
        try:
            r = read_line(dl, scratch / "downloader.stderr", "the downloader")
        except RuntimeError as exc:
            if manifest_bytes <= MAX_MANIFEST_BYTES:
                raise
            # Until manifests past one message's limit can be fetched (in verified pieces).
            raise Refused(f"{exc}; the folder's manifest is {manifest_bytes:,} bytes, over "
                          f"MAX_MANIFEST_BYTES ({MAX_MANIFEST_BYTES:,}): run with a smaller "
                          f"--files-mixed") from None
        finally:
            fds = sampler.stop()
        user, system = user_sys_s(dl.pid)
        seed_cpu = sum(cpu_s(p.pid) for p in procs[2:]) - seed_cpu0
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
            spy.wait(60)
        if not r["ok"]:
            raise RuntimeError(f"the fetched folder is incomplete: {r}")
        res = Result(float(r["elapsed"]), files, size, vm_hwm_kib(dl.pid) / 1024, fds,  # type: ignore[arg-type]
                     user, system,
                     {"cpu": r["cpu"], "loop_cpu": round(float(r["loop_cpu"]), 2),  # type: ignore[arg-type]
                      "seed_cpu": round(seed_cpu, 2),
                      "chunks_by_peer": r["chunks_by_peer"], "share_s": round(share_s, 2),
                      "threads_user_sys": r["threads_user_sys"], **settled})
    finally:
        stop(procs)
    return res


# -- libtorrent ---------------------------------------------------------------------------


def lt_make(lt_python: str, folder: Path, version: str, scratch: Path) -> Path:
    torrent = scratch / f"{folder.name}.{version}.torrent"
    out = subprocess.run([lt_python, str(LT_PEER), "make", "--folder", str(folder),
                          "--version", version, "--torrent", str(torrent)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError(f"libtorrent could not make the torrent: {out.stderr[-1500:]}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  libtorrent {version} torrent: {info['files']} files, {info['pieces']} pieces of "
          f"{info['piece_length'] // 1024} KiB, hashed in {info['hash_s']:.1f}s", flush=True)
    return torrent


def run_lt(lt_python: str, torrent: Path, folder: Path, files: int, size: int, seeders: int,
           scratch: Path) -> Result:
    """One timed fetch of ``folder`` by a libtorrent leecher from ``seeders`` libtorrent
    seeders, into ``scratch`` (a fresh folder, kept)."""
    procs: list[subprocess.Popen[str]] = []
    leech_dir = scratch / "lt-leech"
    leech_dir.mkdir(parents=True)
    try:
        for i in range(seeders):
            procs.append(spawn([lt_python, str(LT_PEER), "seed", "--torrent", str(torrent),
                                "--save", str(folder.parent)], scratch / f"lt-seed{i}.stderr"))
        ports = [str(read_line(p, scratch / f"lt-seed{i}.stderr", "a libtorrent seeder")["port"])
                 for i, p in enumerate(procs)]
        settled = settle([folder, scratch])
        leecher = spawn([lt_python, str(LT_PEER), "leech", "--torrent", str(torrent),
                         "--save", str(leech_dir), "--peers", ",".join(ports),
                         "--timeout", str(TIMEOUT)], scratch / "lt-leech.stderr")
        procs.insert(0, leecher)
        sampler = Sampler(leecher.pid)
        try:
            r = read_line(leecher, scratch / "lt-leech.stderr", "the libtorrent leecher")
        finally:
            fds = sampler.stop()
        user, system = user_sys_s(leecher.pid)
        if not r["ok"]:
            raise RuntimeError(f"the libtorrent leecher timed out: {r}")
        res = Result(float(r["elapsed"]), files, size, vm_hwm_kib(leecher.pid) / 1024, fds,  # type: ignore[arg-type]
                     user, system, settled)
    finally:
        stop(procs)
    return res


# -- main ---------------------------------------------------------------------------------


def median_result(rs: list[Result]) -> Result:
    """The round whose time is the median (the upper one of an even count)."""
    return sorted(rs, key=lambda r: r.elapsed)[len(rs) // 2]


def spread(rs: list[Result]) -> str:
    """min..max of the rounds' seconds, and that range as a share of the median."""
    times = [r.elapsed for r in rs]
    med = statistics.median(times)
    return f"[{min(times):.2f}..{max(times):.2f}s, spread {(max(times) - min(times)) / med:.0%}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5,000 x 4 KiB and 5,000 mixed files, one round")
    ap.add_argument("--cases", default="small,mixed")
    ap.add_argument("--files-small", type=int, default=10_000)
    ap.add_argument("--size-small", default="4K")
    ap.add_argument("--files-mixed", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=14, help="of the mixed folder's sizes")
    ap.add_argument("--seeders", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1, help="rounds; figures are medians")
    ap.add_argument("--no-libtorrent", action="store_true")
    ap.add_argument("--lt-python", default=str(Path(tempfile.gettempdir()) / "lt-venv" / "bin" / "python"),
                    help="Python of a venv with libtorrent (default: lt-venv in the system temp dir)")
    ap.add_argument("--cprofile", metavar="PREFIX",
                    help="cProfile the downloader's event loop -> PREFIX-CASE and seeder 0 -> "
                         "PREFIX-CASE.seed0 (first round; slows them down)")
    ap.add_argument("--py-spy", nargs=2, metavar=("EXE", "PREFIX"),
                    help="record py-spy stacks (collapsed) of the downloader and seeder 0 -> "
                         "PREFIX-downloader.txt, PREFIX-seeder0.txt (every round)")
    ap.add_argument("--scratch", metavar="DIR",
                    help="where the scratch folder goes (default: the system temp dir); it holds "
                         "every tree fetched in the run until the end")
    ap.add_argument("--baseline", metavar="TREE",
                    help="also run ours from another source tree (a worktree of an earlier "
                         "commit), interleaved with the rest: before/after in one run")
    ap.add_argument("--keep-caches", action="store_true",
                    help="do not drop the clean page cache before each fetch (see settle(); "
                         "dropping needs root)")
    ap.add_argument("--patch", metavar="FILE",
                    help="run FILE in every child of ours first (measure a library change without editing it)")
    a = ap.parse_args()
    if a.patch:
        PATCH[:] = ["--patch", str(Path(a.patch).resolve())]
    if a.py_spy:
        PY_SPY[:] = a.py_spy
    if not a.keep_caches and os.access("/proc/sys/vm/drop_caches", os.W_OK):
        DROP_CACHES[:] = [True]
    if a.quick:
        a.files_small, a.files_mixed = 5000, 5000
    cases = [c for c in a.cases.split(",") if c]
    cmd = "$PY bench/folder.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    load_start = loadavg()
    print(f"folder benchmark: cases {cases}, {a.seeders} seeders, {a.runs} round(s); "
          f"{os.cpu_count()} cores, load average {load_start}", flush=True)
    print(f"reproduce: {cmd}", flush=True)
    lt_ok = not a.no_libtorrent
    if lt_ok and not Path(a.lt_python).exists():
        print(f"  no libtorrent python at {a.lt_python}: libtorrent skipped", flush=True)
        lt_ok = False

    scratch = Path(tempfile.mkdtemp(prefix="p2p-folder-", dir=a.scratch))
    out: dict[str, object] = {"bench": "folder", "seeders": a.seeders, "runs": a.runs,
                              "drop_caches": bool(DROP_CACHES)}
    summary: list[str] = []
    try:
        for sub in ("data", "runs"):
            (scratch / sub).mkdir()
            out["spread_subfolders"] = spread_subfolders(scratch / sub)
        speeds = machine_speeds(scratch)
        out.update(speeds)
        print(f"raw, one thread: AES-256-GCM {speeds['aes_gcm_gib_s']} GiB/s (64 KiB records), "
              f"BLAKE3 {speeds['blake3_gib_s']} GiB/s (1 MiB), {speeds['blake3_4k_per_s']:,.0f} "
              f"hashes/s of 4 KiB; {speeds['creates_per_s']:,.0f} files of 4 KiB created/s", flush=True)
        for case in cases:
            if case == "small":
                sizes = [parse_size(a.size_small)] * a.files_small
            elif case == "mixed":
                sizes = mixed_sizes(a.files_mixed, a.seed)
            else:
                raise SystemExit(f"unknown case {case!r} (small, mixed)")
            files, size = len(sizes), sum(sizes)
            t0 = time.perf_counter()
            folder = make_folder(scratch / "data" / f"folder-{case}", sizes)
            print(f"\n{case}: {files:,} files, {size / MiB:.1f} MiB (largest "
                  f"{max(sizes) / MiB:.1f} MiB, median {statistics.median(sizes) / 1024:.1f} KiB), "
                  f"made in {time.perf_counter() - t0:.1f}s", flush=True)
            out[f"files_{case}"] = files
            out[f"mib_{case}"] = round(size / MiB, 1)
            torrents = {}
            if lt_ok:
                for version in ("hybrid", "v1"):
                    try:
                        torrents[version] = lt_make(a.lt_python, folder, version, scratch)
                    except RuntimeError as exc:
                        out[f"lt_{version}_refused_{case}"] = str(exc)[-300:]
                        print(f"  libtorrent {version}: REFUSED: {str(exc)[-300:]}", flush=True)
            ours: list[Result] = []
            base: list[Result] = []
            lt: dict[str, list[Result]] = {v: [] for v in torrents}
            refused = None
            contenders = ["ours", *(["baseline"] if a.baseline else []), *torrents]
            for rnd in range(a.runs):
                # Alternate the order (ours, hybrid, v1, then v1, hybrid, ours...): nobody is
                # always first, or always right after the other's load.
                for who in contenders if rnd % 2 == 0 else contenders[::-1]:
                    run_dir = scratch / "runs" / f"{case}-r{rnd + 1}-{who}"
                    if who == "ours":
                        if refused is not None:
                            continue
                        try:
                            r = run_ours(folder, files, size, a.seeders, run_dir,
                                         f"{a.cprofile}-{case}" if a.cprofile and rnd == 0 else None)
                        except Refused as exc:
                            refused = str(exc)
                            print(f"  ours: REFUSED: {refused}", flush=True)
                            continue
                        ours.append(r)
                        print(f"  round {rnd + 1}: ours: {r.describe()}; {r.extra}", flush=True)
                    elif who == "baseline":
                        r = run_ours(folder, files, size, a.seeders, run_dir, None, a.baseline)
                        base.append(r)
                        print(f"  round {rnd + 1}: baseline: {r.describe()}; {r.extra}", flush=True)
                    else:
                        r = run_lt(a.lt_python, torrents[who], folder, files, size, a.seeders, run_dir)
                        lt[who].append(r)
                        print(f"  round {rnd + 1}: libtorrent {who}: {r.describe()}; {r.extra}",
                              flush=True)
            line = f"  {case} ({files:,} files, {size / MiB:.0f} MiB):"
            if refused is not None:
                out[f"refused_{case}"] = refused
                line += " ours refused"
            if ours:
                m = median_result(ours)
                med = statistics.median(r.elapsed for r in ours)
                out[f"files_per_s_{case}"] = round(files / med, 1)
                out[f"mib_s_{case}"] = round(size / MiB / med, 2)
                out[f"seconds_{case}"] = round(med, 2)
                out[f"seconds_rounds_{case}"] = [round(r.elapsed, 2) for r in ours]
                out[f"sys_s_rounds_{case}"] = [round(r.sys_s, 2) for r in ours]
                out[f"peak_rss_mib_{case}"] = round(max(r.peak_rss_mib for r in ours), 1)
                out[f"peak_fds_{case}"] = max(r.peak_fds for r in ours)
                line += f" ours {med:.2f}s median {spread(ours)} ({m.describe()})"
            if base:
                bmed = statistics.median(r.elapsed for r in base)
                out[f"baseline_seconds_{case}"] = round(bmed, 2)
                out[f"baseline_seconds_rounds_{case}"] = [round(r.elapsed, 2) for r in base]
                out[f"baseline_sys_s_rounds_{case}"] = [round(r.sys_s, 2) for r in base]
                out[f"baseline_peak_rss_mib_{case}"] = round(max(r.peak_rss_mib for r in base), 1)
                out[f"baseline_peak_fds_{case}"] = max(r.peak_fds for r in base)
                line += f"; baseline {bmed:.2f}s median {spread(base)}"
            for version, rs in lt.items():
                lm = median_result(rs)
                lmed = statistics.median(r.elapsed for r in rs)
                tag = "" if version == "hybrid" else "_v1"
                out[f"lt{tag}_files_per_s_{case}"] = round(files / lmed, 1)
                out[f"lt{tag}_mib_s_{case}"] = round(size / MiB / lmed, 2)
                out[f"lt{tag}_seconds_{case}"] = round(lmed, 2)
                out[f"lt{tag}_seconds_rounds_{case}"] = [round(r.elapsed, 2) for r in rs]
                out[f"lt{tag}_sys_s_rounds_{case}"] = [round(r.sys_s, 2) for r in rs]
                out[f"lt{tag}_peak_rss_mib_{case}"] = round(max(r.peak_rss_mib for r in rs), 1)
                out[f"lt{tag}_peak_fds_{case}"] = max(r.peak_fds for r in rs)
                line += f"; libtorrent {version} {lmed:.2f}s median {spread(rs)} ({lm.describe()})"
                if ours:
                    ratio = lmed / statistics.median(r.elapsed for r in ours)
                    out[f"ratio{tag}_{case}"] = round(ratio, 2)
                    out[f"ratio{tag}_rounds_{case}"] = [round(x.elapsed / o.elapsed, 2)
                                                       for x, o in zip(rs, ours, strict=False)]
                    line += f" (ours/libtorrent {ratio:.2f}x)"
            summary.append(line)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    rss = [v for k, v in out.items() if k.startswith("peak_rss_mib_")]
    fds = [v for k, v in out.items() if k.startswith("peak_fds_")]
    if rss:
        out["peak_rss_mib"] = max(rss)  # type: ignore[type-var]
        out["peak_fds"] = max(fds)  # type: ignore[type-var]
    for key in ("ratio_small", "ratio_mixed", "files_per_s_small", "peak_rss_mib", "peak_fds"):
        out.setdefault(key, None)  # a case not run, or refused: named, not missing
    print(f"\nresults (median of {a.runs}; load average at end {loadavg()}):")
    for line in summary:
        print(line)
    targets = []
    for case in cases:
        ratio = out.get(f"ratio_{case}")
        if ratio is not None:
            targets.append(f"{case} {ratio}x vs libtorrent (target {RATIO_TARGET}x): "
                           f"{'met' if float(ratio) >= RATIO_TARGET else 'NOT met'}")  # type: ignore[arg-type]
    if rss:
        targets.append(f"peak RSS {out['peak_rss_mib']} MiB (target {RSS_TARGET_MIB}): "
                       f"{'met' if float(out['peak_rss_mib']) <= RSS_TARGET_MIB else 'NOT met'}")  # type: ignore[arg-type]
        targets.append(f"peak fds {out['peak_fds']} (target {FD_TARGET}): "
                       f"{'met' if int(out['peak_fds']) <= FD_TARGET else 'NOT met'}")  # type: ignore[call-overload]
    for t in targets:
        print(f"  {t}")
    out.update(cores=os.cpu_count(), load_start=load_start, load_end=loadavg(), cmd=cmd)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
