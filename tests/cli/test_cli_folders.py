"""Folders of many files between real processes, under a small open-files limit."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from cliproc import CLI, make_file

MiB = 1 << 20
NOFILE = 256
"""The open-files limit of every process here: a quarter of the usual desktop 1,024, far below
two descriptors per file of the folder."""
SMALL_FILES = 20_000

# Run the rest of the command line under RLIMIT_NOFILE = NOFILE (soft and hard).
LIMITED = [sys.executable, "-c",
           "import os, resource, sys; "
           f"resource.setrlimit(resource.RLIMIT_NOFILE, ({NOFILE}, {NOFILE})); "
           "os.execv(sys.argv[1], sys.argv[1:])"]


def make_folder(root: Path) -> dict[str, bytes]:
    """20,000 files of 1 to 64 bytes in 40 folders, and two larger ones; returns path -> bytes."""
    made: dict[str, bytes] = {}
    for i in range(SMALL_FILES):
        rel = f"d{i % 40:02d}/f{i:05d}.txt"
        data = i.to_bytes(4, "big")[: 1 + i % 4] * (1 + i % 16)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        made[rel] = data
    for rel, size in (("large/a.bin", 3 * MiB + 7), ("large/b.bin", MiB)):
        made[rel] = make_file(root / rel, size, seed=len(rel) + size).read_bytes()
    return made


def tree(root: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def test_a_folder_of_20000_files_fetches_and_resumes_after_sigkill_under_256_descriptors(
        cli: CLI, tmp_path: Path) -> None:
    """Two descriptors per file held for the whole download ran out at about 120 files here.
    The fetch is killed (SIGKILL: no cleanup) part way, then run again: it resumes from what
    was recorded and ends with every file byte-identical, and verifies."""
    src = tmp_path / "photos"
    made = make_folder(src)
    sharer = cli.start("share", str(src), "--json", *cli.node_args("seed"), prefix=LIMITED)
    info = sharer.json(timeout=60)
    dest = tmp_path / "got"
    args = ("fetch", str(info["ticket"]), "-o", str(dest), "--json", *cli.node_args("fetcher"))
    first = cli.start(*args, prefix=LIMITED)
    started = first.json_until(lambda o: o.get("event") == "started")
    assert started["resumed_chunks"] == 0 and started["chunks"] == info["chunks"]
    first.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 4000, timeout=60)
    first.send(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    assert not dest.exists()
    second = cli.start(*args, prefix=LIMITED)
    assert second.wait(timeout=90) == 0, second.err()
    result = second.last_json()
    assert result["resumed_chunks"] >= 1, result
    assert result["fetched_chunks"] + result["resumed_chunks"] == result["chunks"] == info["chunks"]
    got = tree(dest)
    assert got.keys() == made.keys()
    assert got == made
    check = cli.run("verify", "--json", str(info["content_id"]), "--state-dir",
                    str(tmp_path / "state" / "fetcher"), prefix=LIMITED, timeout=60)
    assert check.returncode == 0, check.stderr  # every chunk read back and checked, within the limit
    assert sharer.popen.poll() is None, sharer.err()  # still serving, within its limit
