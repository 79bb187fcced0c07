"""``p2p fetch ID --include/--exclude`` (some files of a folder), ``-o OUT`` for folders, and
``--file PATH -o -`` (one file of a folder streamed), as real processes."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
from pathlib import Path

from cliproc import CLI, clean_env
from test_cli_listing import make_folder


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_include_exclude_fetch_only_those_files_and_a_second_fetch_completes_the_rest(
        cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "album"
    make_folder(src)  # a.txt, docs/b.bin, docs/deep/c d.bin, e.bin (empty)
    # Not --json: on SIGTERM the sharer says how many chunks it sent in all.
    sharer = cli.start("share", str(src), *cli.node_args("sharer"))
    lines = [sharer.line(), sharer.line()]
    ticket = next(line.split()[-1] for line in lines if line.startswith("ticket"))
    out = tmp_path / "got"
    first = cli.run("fetch", ticket, "-o", str(out), "--include", "docs/**", "--exclude",
                    "**/c d.bin", "--include", "e.bin", "--json", *cli.node_args("getter"))
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout.splitlines()[-1])
    assert done["event"] == "completed" and done["complete"] is False and done["files"] == 2
    assert files_under(out) == {rel: (src / rel).read_bytes() for rel in ("docs/b.bin", "e.bin")}
    lib = json.loads(cli.run("ls", "--json", *cli.node_args("getter")).stdout)
    assert [d["state"] for d in lib["downloads"]] == ["selected"]
    assert lib["shares"] == []

    second = cli.run("fetch", ticket, "--json", *cli.node_args("getter"))
    assert second.returncode == 0, second.stderr
    rest = json.loads(second.stdout.splitlines()[-1])
    assert rest["complete"] is True and rest["path"] == str(out.resolve())
    assert files_under(out) == files_under(src)
    # The chunks of docs/b.bin were checked again from disk, not fetched: the two fetches
    # together received every chunk once, and the sharer sent exactly that many.
    assert rest["resumed_chunks"] == done["fetched_chunks"]
    assert done["fetched_chunks"] + rest["fetched_chunks"] == rest["chunks"]
    assert sharer.stop(signal.SIGTERM) == 0
    sent = re.search(r"uploaded (\d+) chunks?", "".join(sharer.stderr))
    assert sent is not None, sharer.err()
    assert int(sent.group(1)) == rest["chunks"]


def test_a_folder_lands_at_a_new_path_or_inside_an_existing_folder(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "album"
    files = make_folder(src)
    info = cli.start("share", str(src), "--json", *cli.node_args("sharer")).json()
    fresh = tmp_path / "new-name"
    got = cli.run("fetch", str(info["ticket"]), "-o", str(fresh), *cli.node_args("a"))
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(fresh.resolve())
    assert set(files_under(fresh)) == set(files)  # the folder itself, renamed
    existing = tmp_path / "downloads"
    existing.mkdir()
    got = cli.run("fetch", str(info["ticket"]), "-o", str(existing), *cli.node_args("b"))
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str((existing / "album").resolve())
    assert set(files_under(existing / "album")) == set(files)  # inside it, as OUT/NAME
    assert [p.name for p in existing.iterdir()] == ["album"]


def test_bad_patterns_and_patterns_matching_nothing_exit_2_and_write_nothing(
        cli: CLI, tmp_path: Path) -> None:
    make_folder(tmp_path / "album")
    info = cli.start("share", str(tmp_path / "album"), "--json", *cli.node_args("sharer")).json()
    out = tmp_path / "got"
    bad = cli.run("fetch", str(info["ticket"]), "-o", str(out), "--include", "docs/[b",
                  *cli.node_args("getter"))
    assert bad.returncode == 2, bad.stderr
    assert "never closed" in bad.stderr
    none = cli.run("fetch", str(info["ticket"]), "-o", str(out), "--include", "*.jpg",
                   *cli.node_args("getter"))
    assert none.returncode == 2, none.stderr
    assert "--include '*.jpg' matches no file of album" in none.stderr
    assert not out.exists() and not (tmp_path / "got.p2p-partial").exists()
    both = cli.run("fetch", str(info["ticket"]), "-o", "-", "--include", "a.txt",
                   *cli.node_args("getter"))
    assert both.returncode == 2 and "cannot go with it" in both.stderr


def test_file_streams_one_file_of_a_folder_to_stdout(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "album"
    make_folder(src)
    info = cli.start("share", str(src), "--json", *cli.node_args("sharer")).json()
    out = subprocess.run(cli.argv(["fetch", str(info["ticket"]), "-o", "-", "--file", "docs/b.bin",
                                   *cli.node_args("watcher")]),
                         capture_output=True, timeout=60, env=clean_env(), cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    want = (src / "docs" / "b.bin").read_bytes()
    assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(want).hexdigest()
    kept = tmp_path / "state" / "watcher" / "streamed" / "album"
    assert files_under(kept) == {"docs/b.bin": want}  # that file alone was fetched
    missing = cli.run("fetch", str(info["ticket"]), "-o", "-", "--file", "nope.bin",
                      *cli.node_args("watcher2"))
    assert missing.returncode == 2 and "has no file 'nope.bin'" in missing.stderr
    assert missing.stdout == ""
    alone = cli.run("fetch", str(info["ticket"]), "--file", "a.txt", *cli.node_args("watcher3"))
    assert alone.returncode == 2 and "--file picks the file to stream with -o -" in alone.stderr
