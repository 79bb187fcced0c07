"""``p2p ls ID-or-TICKET`` (the files of remote content, from its verified listing only) and
``p2p fetch ID -o -`` (a file streamed to stdout as it arrives)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from cliproc import CLI, clean_env, make_file

from p2p.content import ContentId

MiB = 1 << 20


def make_folder(root: Path) -> dict[str, int]:
    """A small folder tree; returns each file's relative path and size."""
    files = {"a.txt": 5, "docs/b.bin": MiB + 3, "docs/deep/c d.bin": 70_000, "e.bin": 0}
    for rel, size in files.items():
        make_file(root / rel, size)
    return files


def test_ls_of_a_ticket_lists_every_file_and_downloads_none(cli: CLI, tmp_path: Path) -> None:
    files = make_folder(tmp_path / "album")
    sharer = cli.start("share", str(tmp_path / "album"), "--json", *cli.node_args("sharer"))
    info = sharer.json()
    listing = cli.run("ls", str(info["ticket"]), "--json", *cli.node_args("looker"))
    assert listing.returncode == 0, listing.stderr
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {r["path"]: r["size"] for r in rows} == files
    assert all(ContentId.parse(r["content_id"]) for r in rows)
    # Nothing was downloaded: the looker's library is empty, no file landed anywhere.
    lib = cli.run("ls", "--json", *cli.node_args("looker"))
    assert json.loads(lib.stdout) == {"shares": [], "downloads": []}
    assert not list((tmp_path / "state" / "looker").rglob("*.bin"))


def test_ls_by_id_and_peer_prints_one_file_per_line(cli: CLI, tmp_path: Path) -> None:
    files = make_folder(tmp_path / "album")
    sharer = cli.start("share", str(tmp_path / "album"), "--json", *cli.node_args("sharer"))
    info = sharer.json()
    listing = cli.run("ls", str(info["content_id"]), "--peer", str(info["listen"]),
                      *cli.node_args("looker"))
    assert listing.returncode == 0, listing.stderr
    # "SIZE  PATH", the size right-aligned, the path as the manifest has it (spaces kept).
    paths = [line.lstrip().split("  ", 1)[1] for line in listing.stdout.splitlines()]
    assert sorted(paths) == sorted(files)
    assert "4 files" in listing.stderr


def test_ls_of_content_nobody_has_exits_3(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "x.bin", 1000)
    local = cli.run("share", str(src), "--no-serve", "--json", *cli.node_args("other"))
    cid = json.loads(local.stdout)["content_id"]
    listing = cli.run("ls", cid, "--timeout", "1", *cli.node_args("looker"))
    assert listing.returncode == 3, listing.stderr
    assert "no peer provided" in listing.stderr


def test_fetch_to_stdout_streams_the_file_and_only_the_file(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "src" / "film.bin", 9 * MiB + 4321)
    sharer = cli.start("share", str(src), "--json", *cli.node_args("sharer"))
    info = sharer.json()
    out = subprocess.run(cli.argv(["fetch", str(info["content_id"]), "--peer", str(info["listen"]),
                                   "-o", "-", "--json", *cli.node_args("watcher")]),
                         capture_output=True, timeout=60, env=clean_env(), cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith(b"{")]
    assert events and events[0]["event"] == "started"  # --json records: on stderr, not in the file
    kept = tmp_path / "state" / "watcher" / "streamed" / "film.bin"
    assert kept.read_bytes() == src.read_bytes()  # kept in the state directory, not here
    assert not (tmp_path / "film.bin.p2p-partial").exists()


def test_a_folder_is_not_streamed(cli: CLI, tmp_path: Path) -> None:
    make_folder(tmp_path / "album")
    sharer = cli.start("share", str(tmp_path / "album"), "--json", *cli.node_args("sharer"))
    info = sharer.json()
    out = cli.run("fetch", str(info["content_id"]), "--peer", str(info["listen"]), "-o", "-",
                  *cli.node_args("watcher"))
    assert out.returncode == 2, out.stderr
    assert "only a single file can be streamed" in out.stderr
    assert out.stdout == ""


def test_a_stream_whose_reader_goes_away_pauses_the_download(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "src" / "film.bin", 40 * MiB)
    sharer = cli.start("share", str(src), "--json", *cli.node_args("sharer"))
    info = sharer.json()
    proc = subprocess.Popen(cli.argv(["fetch", str(info["content_id"]), "--peer", str(info["listen"]),
                                      "-o", "-", *cli.node_args("watcher")]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                            cwd=tmp_path)
    try:
        assert proc.stdout is not None
        head = proc.stdout.read(1 << 20)  # a player that read a little and quit
        assert head == src.read_bytes()[:1 << 20]
        proc.stdout.close()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert b"stdout closed" in err
    lib = cli.run("ls", "--json", *cli.node_args("watcher"))
    downloads = json.loads(lib.stdout)["downloads"]
    assert [d["state"] for d in downloads] in (["paused"], ["complete"])  # complete: it raced ahead
