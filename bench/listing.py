"""Listed directories at scale (issue 14, item 2): share a folder of a million files and list
it from another node, through the real command line on 127.0.0.1.

    python bench/listing.py                   # 1,000,000 files
    python bench/listing.py --quick           # 100,000 files
    python bench/listing.py --files 300000 --fetch   # also fetch the whole folder

Steps, each timed, every process a real ``p2p``:
1. make N tiny files in 1,000 folders (a few bytes each: the cost is all in the count);
2. ``p2p share DIR --json`` (scan, hash every file in one pool, sign, record, serve) until it
   prints its ticket: the sharer's time and peak RSS;
3. ``p2p ls TICKET --json`` from a fresh state directory: the root, then the listing in verified
   chunks, then every entry checked; its time, peak RSS and line count (must be N);
4. with ``--fetch``: ``p2p fetch TICKET -o OUT`` and a check that every file arrived.

The reference measured in the same run is BLAKE3 over the listing's bytes (the least any
verified listing costs): ``ls_over_hash`` is how many times that the whole ``ls`` takes.
Peak RSS is ``ru_maxrss`` of each child (``os.wait4``). Scratch data lives in the system temp
folder and is removed. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

MiB = 1 << 20


def make_folder(root: Path, files: int) -> None:
    per = max(1, files // 1000)
    for i in range(files):
        folder = root / f"d{i // per:04d}"
        if i % per == 0:
            folder.mkdir(parents=True)
        with open(folder / f"file{i:07d}.txt", "wb") as f:
            f.write(b"%d\n" % i)


def p2p(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2p.cli", *args]


def wait_rss(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """(exit code, peak RSS in MiB) of a child, reaped with os.wait4."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 files")
    ap.add_argument("--fetch", action="store_true", help="also fetch the whole folder")
    a = ap.parse_args()
    files = 100_000 if a.quick else a.files
    scratch = Path(tempfile.mkdtemp(prefix="p2p-bench-listing-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    sharer = None
    try:
        folder = scratch / "folder"
        t0 = time.perf_counter()
        make_folder(folder, files)
        make_s = time.perf_counter() - t0
        print(f"made {files:,} files in {make_s:.1f} s", flush=True)

        t0 = time.perf_counter()
        sharer = subprocess.Popen(p2p("share", str(folder), "--json", "--state-dir", str(scratch / "s"),
                                      "--listen", "127.0.0.1:0"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert sharer.stdout is not None
        line = sharer.stdout.readline()
        share_s = time.perf_counter() - t0
        if not line:
            raise SystemExit(f"share failed: {sharer.stderr.read().decode()[-2000:] if sharer.stderr else ''}")
        info = json.loads(line)
        share_rss = vm_hwm_mib(sharer.pid)
        print(f"shared in {share_s:.1f} s ({files / share_s:,.0f} files/s), sharer peak RSS "
              f"{share_rss:.0f} MiB", flush=True)
        with sqlite3.connect(scratch / "s" / "store.sqlite3") as db:
            root_bytes = max(len(row[0]) for row in db.execute("SELECT data FROM manifests"))
        listing_file = next((scratch / "s" / "listings").iterdir())
        listing = listing_file.read_bytes()
        t0 = time.perf_counter()
        blake3.blake3(listing).digest()
        hash_s = time.perf_counter() - t0
        print(f"root {root_bytes:,} bytes, listing {len(listing) / MiB:.1f} MiB; BLAKE3 over it {hash_s * 1000:.0f} ms", flush=True)

        t0 = time.perf_counter()
        with open(scratch / "ls.err", "w+b") as errors:
            looker = subprocess.Popen(p2p("ls", info["ticket"], "--json", "--state-dir", str(scratch / "l"),
                                          "--listen", "127.0.0.1:0", "--timeout", "120"),
                                      stdout=subprocess.PIPE, stderr=errors, env=env)
            assert looker.stdout is not None
            lines = sum(1 for _ in looker.stdout)
            code, ls_rss = wait_rss(looker)
            errors.seek(0)
            err = errors.read()
        ls_s = time.perf_counter() - t0
        if code != 0 or lines != files:
            raise SystemExit(f"ls: exit {code}, {lines} lines: {err.decode()[-2000:]}")
        print(f"ls: {lines:,} entries in {ls_s:.1f} s ({files / ls_s:,.0f} entries/s), peak RSS "
              f"{ls_rss:.0f} MiB", flush=True)

        out_json: dict[str, object] = {
            "bench": "listing", "files": files, "listing_mib": round(len(listing) / MiB, 1),
            "root_bytes": root_bytes, "make_s": round(make_s, 1), "share_s": round(share_s, 1),
            "share_files_per_s": round(files / share_s), "share_rss_mib": round(share_rss),
            "ls_s": round(ls_s, 1), "ls_rss_mib": round(ls_rss), "hash_listing_ms": round(hash_s * 1000),
            "ls_over_hash": round(ls_s / hash_s, 1),
        }
        if a.fetch:
            t0 = time.perf_counter()
            fetcher = subprocess.Popen(p2p("fetch", info["ticket"], "-o", str(scratch / "out"), "--json",
                                           "--state-dir", str(scratch / "f"), "--listen", "127.0.0.1:0",
                                           "--timeout", "120"),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            assert fetcher.stderr is not None
            err = fetcher.stderr.read()
            code, fetch_rss = wait_rss(fetcher)
            fetch_s = time.perf_counter() - t0
            got = sum(len(names) for _, _, names in os.walk(scratch / "out"))
            if code != 0 or got != files:
                raise SystemExit(f"fetch: exit {code}, {got} files: {err.decode()[-2000:]}")
            print(f"fetch: {got:,} files in {fetch_s:.1f} s ({files / fetch_s:,.0f} files/s), peak RSS "
                  f"{fetch_rss:.0f} MiB", flush=True)
            out_json.update(fetch_s=round(fetch_s, 1), fetch_files_per_s=round(files / fetch_s),
                            fetch_rss_mib=round(fetch_rss))
        print("reproduce: " + shlex.join([sys.executable, "bench/listing.py", *sys.argv[1:]]))
        print(json.dumps(out_json))
    finally:
        if sharer is not None and sharer.poll() is None:
            sharer.kill()
            sharer.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
