"""An unreachable ``--bootstrap`` is called that, naming each address (issue 15, item 4):
real ``p2p`` processes against a UDP port nobody answers on and one nobody listens on.

The wait is the DHT's own request timeout (1 s) inside the process; the test waits for the
process to exit, never for time to pass.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliproc import CLI

from p2p import ContentId


@pytest.fixture
def unreachable() -> Iterator[tuple[str, str]]:
    """Two bootstrap addresses: a UDP socket that never answers, and a port with nothing on it."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        yield f"127.0.0.1:{silent.getsockname()[1]}", f"127.0.0.1:{closed_port}"
    finally:
        silent.close()


def boot(addrs: tuple[str, ...]) -> list[str]:
    return [arg for a in addrs for arg in ("--bootstrap", a)]


def named(stderr: str, addrs: tuple[str, ...]) -> bool:
    return all(f"the bootstrap node {a} (no answer within 1 s)" in stderr for a in addrs)


def some_id() -> str:
    return str(ContentId(os.urandom(32)))


def test_fetch_ls_and_publish_by_id_say_the_bootstrap_is_unreachable(
        cli: CLI, tmp_path: Path, unreachable: tuple[str, str]) -> None:
    cid = some_id()
    got = cli.run("fetch", cid, "-o", str(tmp_path / "out.bin"), *cli.node_args("reader"),
                  *boot(unreachable))  # the default 30 s timeout: not waited for
    assert got.returncode == 5, got.stderr
    assert "p2p: error: could not reach the bootstrap node" in got.stderr
    assert named(got.stderr, unreachable), got.stderr
    assert "not found" not in got.stderr and "warning" not in got.stderr, got.stderr
    assert not (tmp_path / "out.bin").exists()

    machine = cli.run("fetch", cid, "--json", *cli.node_args("reader"), *boot(unreachable[:1]))
    assert machine.returncode == 5, machine.stderr
    error = json.loads(machine.stdout.splitlines()[-1])
    assert error["event"] == "error" and error["kind"] == "network" and error["exit_code"] == 5
    assert error["error"] == (f"could not reach the bootstrap node {unreachable[0]} "
                              "(no answer within 1 s)")

    listing = cli.run("ls", cid, *cli.node_args("reader"), *boot(unreachable))
    assert listing.returncode == 5 and named(listing.stderr, unreachable), listing.stderr

    src = tmp_path / "x.txt"
    src.write_bytes(b"x" * 100)
    shared = cli.run("share", str(src), "--no-serve", "--json", *cli.node_args("author"))
    assert shared.returncode == 0, shared.stderr
    own = json.loads(shared.stdout)["content_id"]
    published = cli.run("publish", "nightly", own, *cli.node_args("author"), *boot(unreachable))
    assert published.returncode == 5 and named(published.stderr, unreachable), published.stderr


def test_share_warns_and_a_ticket_fetch_goes_on(cli: CLI, tmp_path: Path,
                                                 unreachable: tuple[str, str]) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(b"n" * 5000)
    sharer = cli.start("share", str(src), "--json", *cli.node_args("sharer"), *boot(unreachable))
    info = sharer.json()
    got = cli.run("fetch", str(info["ticket"]), "-o", str(tmp_path / "copy.txt"),
                  *cli.node_args("reader"), *boot(unreachable))
    assert got.returncode == 0, got.stderr  # the ticket's address works without a DHT
    assert (tmp_path / "copy.txt").read_bytes() == src.read_bytes()
    assert "p2p: warning: could not reach the bootstrap node" in got.stderr, got.stderr
    assert named(got.stderr, unreachable), got.stderr
    assert sharer.stop(signal.SIGINT) == 0
    assert "p2p: warning: could not reach the bootstrap node" in sharer.err()
    assert named(sharer.err(), unreachable), sharer.err()


def test_serve_warns_keeps_running_and_its_fetch_by_id_says_why(
        cli: CLI, tmp_path: Path, unreachable: tuple[str, str]) -> None:
    server = cli.start("serve", "--json", *cli.node_args("home"), *boot(unreachable))
    server.json()  # it serves
    state = ["--state-dir", str(tmp_path / "state" / "home")]
    got = cli.run("fetch", some_id(), "-o", str(tmp_path / "out.bin"), *state)
    assert got.returncode == 5, got.stderr
    assert named(got.stderr, unreachable), got.stderr
    assert server.popen.poll() is None  # still serving
    src = tmp_path / "notes.txt"
    src.write_bytes(b"n" * 5000)
    shared = cli.run("share", str(src), *state)
    assert shared.returncode == 0, shared.stderr
    assert "the running node has no DHT: could not reach the bootstrap node" in shared.stderr
    assert server.stop(signal.SIGTERM) == 0
    assert named(server.err(), unreachable), server.err()


def test_a_bootstrap_that_answers_but_knows_no_provider_is_not_found(
        cli: CLI, bootstrap: str, tmp_path: Path) -> None:
    got = cli.run("fetch", some_id(), "--timeout", "1", *cli.node_args("reader"),
                  "--bootstrap", bootstrap)
    assert got.returncode == 3, got.stderr
    assert "bootstrap" not in got.stderr, got.stderr
