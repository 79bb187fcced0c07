"""``p2p share`` through a running node says what a direct share says, and ``--no-serve``
tells the truth about what serves the content: real processes.

Every wait is bounded by the next line of output or the process's exit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cliproc import CLI, Proc

from p2p import parse_id_or_ticket


def serve(cli: CLI, name: str) -> tuple[Proc, dict[str, Any]]:
    proc = cli.start("serve", "--json", *cli.node_args(name))
    return proc, proc.json()


def state(cli: CLI, name: str) -> list[str]:
    return ["--state-dir", str(cli.tmp / "state" / name)]


def album(tmp_path: Path) -> Path:
    """A folder with one file, two symlinks and an empty folder."""
    folder = tmp_path / "album"
    (folder / "disc1").mkdir(parents=True)
    (folder / "disc1" / "track.flac").write_bytes(b"x" * 1000)
    (folder / "empty").mkdir()
    (folder / "link").symlink_to(folder / "disc1" / "track.flac")
    (folder / "folder-link").symlink_to(folder / "disc1")
    return folder


def test_a_share_through_the_running_node_says_what_it_left_out(cli: CLI, tmp_path: Path) -> None:
    server, _ = serve(cli, "home")
    folder = album(tmp_path)
    text = cli.run("share", str(folder), *state(cli, "home"))
    assert text.returncode == 0, text.stderr
    assert "the running node of" in text.stderr, text.stderr  # it did go through the node
    assert "p2p: warning: left out 2 symlinks and 1 empty folder" in text.stderr, text.stderr
    machine = cli.run("share", str(folder), "--json", *state(cli, "home"))
    assert machine.returncode == 0, machine.stderr
    info = json.loads(machine.stdout)
    assert info["left_out"] == {"symlinks": 2, "empty_folders": 1, "unreadable": 0, "special": 0}
    clean = cli.run("share", str(folder / "disc1"), *state(cli, "home"))
    assert clean.returncode == 0 and "left out" not in clean.stderr, clean.stderr
    assert server.popen.poll() is None


def test_no_serve_with_a_running_node_is_served_and_announced_by_it(cli: CLI, tmp_path: Path) -> None:
    server, node = serve(cli, "home")
    src = tmp_path / "notes.txt"
    src.write_bytes(b"n" * 5000)
    shared = cli.run("share", str(src), "--no-serve", "--json", *state(cli, "home"))
    assert shared.returncode == 0, shared.stderr
    info = json.loads(shared.stdout)
    assert info["serving"] is True and info["peer_id"] == node["peer_id"]
    _, ticket = parse_id_or_ticket(info["ticket"])
    assert ticket is not None
    port = int(str(node["listen"]).rsplit(":", 1)[1])
    assert ticket.addresses and {p for _, p in ticket.addresses} == {port}
    # The ticket works: the running node serves it.
    dest = tmp_path / "copy.txt"
    got = cli.run("fetch", info["ticket"], "-o", str(dest), "--timeout", "10",
                  *cli.node_args("reader"))
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == src.read_bytes()
    assert server.popen.poll() is None


def test_no_serve_with_no_node_gives_a_ticket_without_addresses(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(b"n" * 5000)
    shared = cli.run("share", str(src), "--no-serve", "--json", *cli.node_args("alone"))
    assert shared.returncode == 0, shared.stderr
    info = json.loads(shared.stdout)
    assert info["serving"] is False and info["announced"] is False and info["addresses"] == []
    _, ticket = parse_id_or_ticket(info["ticket"])
    assert ticket is not None and ticket.addresses == ()
    assert str(ticket.content_id) == info["content_id"]
    assert "not served now (--no-serve): `p2p serve` for" in shared.stderr, shared.stderr
    # It is in the library, and `p2p serve` later serves it.
    listed = json.loads(cli.run("ls", "--json", *state(cli, "alone")).stdout)
    assert [s["content_id"] for s in listed["shares"]] == [info["content_id"]]
    _, later = serve(cli, "alone")
    assert later["shares"] == 1
