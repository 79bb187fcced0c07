"""Shared files that moved, changed or vanished show as such (issue 15, item 4): in
``p2p ls`` (with and without a running node) and at ``p2p serve`` start. Real processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from cliproc import CLI


def state(cli: CLI, name: str) -> list[str]:
    return ["--state-dir", str(cli.tmp / "state" / name)]


def share(cli: CLI, path: Path, name: str) -> str:
    done = cli.run("share", str(path), "--no-serve", "--json", *cli.node_args(name))
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["content_id"])


def shares(cli: CLI, name: str) -> dict[str, dict[str, Any]]:
    got = cli.run("ls", "--json", *state(cli, name))
    assert got.returncode == 0, got.stderr
    return {row["content_id"]: row for row in json.loads(got.stdout)["shares"]}


def touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_ls_and_serve_show_changed_and_missing_shares(cli: CLI, tmp_path: Path) -> None:
    album = tmp_path / "album"
    album.mkdir()
    for i in range(4):
        (album / f"t{i}.flac").write_bytes(b"%d" % i * 1000)
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"n" * 5000)
    gone = tmp_path / "gone.txt"
    gone.write_bytes(b"g" * 300)
    ids = {name: share(cli, path, "home") for name, path in
           (("album", album), ("notes", notes), ("gone", gone))}
    assert {r["status"] for r in shares(cli, "home").values()} == {"ok"}

    touch_later(album / "t1.flac")
    (album / "t3.flac").unlink()
    with notes.open("r+b") as f:
        f.write(b"edited")
    touch_later(notes)
    gone.rename(tmp_path / "elsewhere.txt")

    rows = shares(cli, "home")
    assert {name: rows[cid]["status"] for name, cid in ids.items()} == {
        "album": "missing", "notes": "changed", "gone": "missing"}
    assert (rows[ids["album"]]["changed_files"], rows[ids["album"]]["missing_files"],
            rows[ids["album"]]["files"]) == (1, 1, 4)
    assert rows[ids["album"]]["note"] == "1 of 4 files changed, 1 missing"
    text = cli.run("ls", *state(cli, "home"))
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines() if ids["notes"] in x)
    assert "changed" in line and "(the file changed since it was shared)" in line, text.stdout

    # `p2p serve` warns at start, one line per share, and keeps running.
    server = cli.start("serve", "--json", *cli.node_args("home"))
    assert server.json()["shares"] == 3
    # Through the running node, `ls` shows the same.
    through = shares(cli, "home")
    assert {cid: r["status"] for cid, r in through.items()} == {cid: r["status"] for cid, r in rows.items()}
    assert server.stop(signal.SIGTERM) == 0
    err = server.err()
    assert f"p2p: warning: missing: album ({album.resolve()}): 1 of 4 files changed, 1 missing" in err, err
    assert f"p2p: warning: changed: notes.txt ({notes.resolve()}): the file changed since it was shared" in err
    assert f"p2p: warning: missing: gone.txt ({gone.resolve()}): the file is gone" in err
    assert err.count("p2p: warning: ") == 3, err
