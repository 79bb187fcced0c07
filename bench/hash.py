"""Hashing throughput: ``build_manifest`` against raw multi-threaded BLAKE3 on the same file.

Creates (once) a file of random bytes in the system temp folder, or uses ``--path``,
then times, in one run and with the page cache warm for both:

* ``p2p.content.build_manifest`` of the file (chunking, parallel BLAKE3, signing);
* ``blake3.blake3(max_threads=blake3.blake3.AUTO)`` over an mmap of the file: the
  physical reference, the fastest this machine hashes those bytes.

Each is run once to warm up, then best of ``--runs``. The last line printed is one
JSON object, so scripts can read it with ``tail -n 1``.

    python bench/hash.py                      # 1 GiB in the temp folder
    python bench/hash.py --size 256M --runs 5
    python bench/hash.py --path /some/big/file
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3

from p2p.content import build_manifest
from p2p.identity import Identity

MiB = 1 << 20
_UNITS = {"K": 1 << 10, "M": MiB, "G": 1 << 30}


def parse_size(text: str) -> int:
    """``"1G"``, ``"256M"``, ``"1GiB"`` or a plain number of bytes."""
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    if s and s[-1] in _UNITS:
        return int(float(s[:-1]) * _UNITS[s[-1]])
    return int(s)


def data_file(size: int) -> Path:
    """A file of ``size`` random bytes in the system temp folder, created on first use."""
    path = Path(tempfile.gettempdir()) / f"p2p-bench-hash-{size}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    part = path.with_suffix(".part")
    with open(part, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    os.replace(part, path)
    return path


def best_of(fn: Callable[[], object], runs: int) -> float:
    """Seconds of the fastest of ``runs`` calls, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def raw_blake3(path: Path) -> bytes:
    """Multi-threaded BLAKE3 of the whole file over an mmap (the reference)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update(mm)
        return hasher.digest()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="size of the generated file (default 1G)")
    parser.add_argument("--path", type=Path, help="hash this file instead of a generated one")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (best is kept)")
    args = parser.parse_args(argv)

    path = args.path if args.path is not None else data_file(parse_size(args.size))
    size = path.stat().st_size
    size_mib = size / MiB
    identity = Identity.generate()

    manifest_s = best_of(lambda: build_manifest(path, identity), args.runs)
    ref_s = best_of(lambda: raw_blake3(path), args.runs)
    mib_s = size_mib / manifest_s
    ref_mib_s = size_mib / ref_s
    ratio = mib_s / ref_mib_s

    manifest, _ = build_manifest(path, identity)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"file:            {path} ({size_mib:.0f} MiB, {manifest.chunk_count} chunks "
          f"of {manifest.entries[0].info.chunk_size // 1024} KiB)")
    print(f"machine:         {os.cpu_count()} CPUs, {platform.machine()}, "
          f"Python {platform.python_version()}, blake3 {blake3.__version__}")
    print(f"build_manifest:  {mib_s:8.0f} MiB/s  (best of {args.runs}: {manifest_s:.3f} s)")
    print(f"raw blake3 AUTO: {ref_mib_s:8.0f} MiB/s  (best of {args.runs}: {ref_s:.3f} s)")
    print(f"ratio:           {ratio:.2f}  (target >= 0.8)")
    print(f"reproduce:       {command}")
    print(json.dumps({"bench": "hash", "size_mib": round(size_mib, 3), "mib_s": round(mib_s, 1),
                      "ref_mib_s": round(ref_mib_s, 1), "ratio": round(ratio, 3),
                      "cpus": os.cpu_count(), "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
