"""One node per state directory, and every command goes through it: real processes.

A running ``p2p serve`` owns its state directory (``node.lock``); ``share``, ``fetch``,
``ls``, ``rm``, ``pause`` and ``resume`` of the same state directory talk to it over its
control socket. Every wait is bounded by the next line of output or the process's exit.
"""

from __future__ import annotations

import filecmp
import json
import signal
from pathlib import Path
from typing import Any

from cliproc import CLI, Proc, make_file
from test_cli_processes import MiB, share

from p2p import parse_id_or_ticket
from p2p.exitcodes import EXIT_BUSY, EXIT_INTERRUPTED, EXIT_LOCAL


def serve(cli: CLI, name: str) -> tuple[Proc, dict[str, Any]]:
    proc = cli.start("serve", "--json", *cli.node_args(name))
    return proc, proc.json()


def state(cli: CLI, name: str) -> list[str]:
    return ["--state-dir", str(cli.tmp / "state" / name)]


def ls(cli: CLI, name: str) -> dict[str, Any]:
    proc = cli.run("ls", "--json", *state(cli, name))
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert isinstance(listed, dict)
    return listed


def download_row(cli: CLI, name: str, content_id: str) -> dict[str, Any]:
    rows = [d for d in ls(cli, name)["downloads"] if d["content_id"] == content_id]
    assert len(rows) == 1, rows
    return rows[0]


def test_share_and_fetch_go_through_the_running_node(cli: CLI, tmp_path: Path) -> None:
    server, info = serve(cli, "home")
    src = make_file(tmp_path / "report.bin", 3 * MiB + 5)
    shared = cli.run("share", str(src), "--json", *state(cli, "home"))
    assert shared.returncode == 0, shared.stderr
    record = json.loads(shared.stdout)
    # The running node shares it: its peer id, and a ticket with its real port.
    assert record["peer_id"] == info["peer_id"]
    _, ticket = parse_id_or_ticket(record["ticket"])
    assert ticket is not None
    port = int(info["listen"].rsplit(":", 1)[1])
    assert ticket.addresses and {p for _, p in ticket.addresses} == {port}
    assert server.popen.poll() is None  # still serving
    listed = ls(cli, "home")
    assert [s["content_id"] for s in listed["shares"]] == [record["content_id"]]

    # Another running node fetches it for its client, which prints the path and exits 0.
    _, other = serve(cli, "away")
    assert other["peer_id"] != info["peer_id"]
    dest = tmp_path / "copy.bin"
    fetched = cli.run("fetch", record["ticket"], "-o", str(dest), "--json", *state(cli, "away"))
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout.splitlines()[-1])["path"] == str(dest)
    assert filecmp.cmp(src, dest, shallow=False)
    assert download_row(cli, "away", record["content_id"])["state"] == "complete"
    peers = json.loads(cli.run("peers", "--json", *state(cli, "home")).stdout)["peers"]
    assert isinstance(peers, list)


def test_a_second_node_on_one_state_directory_is_refused(cli: CLI) -> None:
    server, info = serve(cli, "only")
    again = cli.run("serve", *cli.node_args("only"))
    assert again.returncode == EXIT_BUSY, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2p: error: "), again.stderr
    assert "already running" in lines[0] and f"pid {server.popen.pid}" in lines[0], lines[0]
    # The first one is unharmed and still answers.
    who = cli.run("id", "--json", *state(cli, "only"))
    assert json.loads(who.stdout)["running"] is True
    assert json.loads(who.stdout)["peer_id"] == info["peer_id"]
    assert server.stop(signal.SIGTERM) == 0
    # Once it stopped, a node starts there again.
    assert serve(cli, "only")[1]["peer_id"] == info["peer_id"]


def test_ctrl_c_pauses_the_nodes_download_and_rm_keeps_or_deletes(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "big.bin", 192 * MiB)
    seeder, info = share(cli, "seed", src)
    server, _ = serve(cli, "home")
    dest = tmp_path / "big-copy.bin"
    args = ("fetch", str(info["ticket"]), "-o", str(dest), "--json", *state(cli, "home"))
    client = cli.start(*args)
    client.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 1)
    seeder.send(signal.SIGSTOP)  # frozen: the download stalls (well within --timeout) until SIGCONT
    client.send(signal.SIGINT)
    assert client.wait() == EXIT_INTERRUPTED, client.err()
    assert server.popen.poll() is None  # the node goes on; its download is paused
    row = download_row(cli, "home", info["content_id"])
    assert row["state"] == "paused", row
    assert Path(row["partial"]).exists()
    # The same fetch resumes it, through the node.
    seeder.send(signal.SIGCONT)
    again = cli.start(*args)
    started = again.json_until(lambda o: o.get("event") == "started")
    assert started["resumed_chunks"] > 0
    again.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 1)
    seeder.send(signal.SIGSTOP)
    # Paused from another terminal: the fetching client is told, with the interrupt code.
    paused = cli.run("pause", str(info["content_id"]), *state(cli, "home"))
    assert paused.returncode == 0, paused.stderr
    assert again.wait() == EXIT_INTERRUPTED
    assert "paused" in again.err()
    assert download_row(cli, "home", info["content_id"])["state"] == "paused"
    # rm keeps the partial data by default, and says where it is.
    kept = cli.run("rm", str(info["content_id"]), *state(cli, "home"))
    assert kept.returncode == 0, kept.stderr
    partial = Path(row["partial"])
    assert "kept" in kept.stdout and str(partial) in kept.stdout
    assert partial.exists()
    assert ls(cli, "home")["downloads"] == []
    missing = cli.run("rm", str(info["content_id"]), *state(cli, "home"))
    assert missing.returncode == 3, missing.stderr
    # A fetch to the same place checks the kept data and reuses it.
    seeder.send(signal.SIGCONT)
    resumed = cli.start(*args)
    started = resumed.json_until(lambda o: o.get("event") == "started")
    seeder.send(signal.SIGSTOP)
    assert started["resumed_chunks"] > 0
    # Removed from another terminal while it runs: the fetching client is told that, not
    # that it was paused.
    deleted = cli.run("rm", "--delete", "--json", str(info["content_id"]), *state(cli, "home"))
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["deleted"] is True
    assert resumed.wait() == EXIT_INTERRUPTED
    told = resumed.last_json()
    assert told["kind"] == "interrupted", told
    assert "removed (`p2p rm`)" in told["error"] and "paused" not in told["error"], told
    assert not partial.exists() and not dest.exists()
    seeder.send(signal.SIGCONT)


def test_downloads_of_a_killed_node_resume_when_it_starts(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "movie.bin", 192 * MiB)
    _, info = share(cli, "seed", src)
    server, _ = serve(cli, "home")
    dest = tmp_path / "movie-copy.bin"
    client = cli.start("fetch", str(info["ticket"]), "-o", str(dest), "--json", *state(cli, "home"))
    client.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 1)
    server.send(signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL
    assert client.wait() != 0
    # Nothing runs it now: not shown as active.
    row = download_row(cli, "home", info["content_id"])
    assert row["state"] == "interrupted", row
    # A new node of that state directory resumes it at once; a fetch of it follows it.
    _, restarted = serve(cli, "home")
    assert restarted["resumed"] == [info["content_id"]]
    done = cli.run("fetch", str(info["content_id"]), "-o", str(dest), "--json", *state(cli, "home"),
                   timeout=120)
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(src, dest, shallow=False)
    assert download_row(cli, "home", info["content_id"])["state"] == "complete"


def test_a_paused_download_stays_paused_across_restarts(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "album.bin", 192 * MiB)
    seeder, info = share(cli, "seed", src)
    server, _ = serve(cli, "home")
    client = cli.start("fetch", str(info["ticket"]), "-o", str(tmp_path / "a.bin"), "--json",
                       *state(cli, "home"))
    client.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 1)
    seeder.send(signal.SIGSTOP)  # the download stalls until SIGCONT: pausing it races nothing
    assert cli.run("pause", str(info["content_id"]), *state(cli, "home")).returncode == 0
    assert client.wait() == EXIT_INTERRUPTED
    seeder.send(signal.SIGCONT)
    assert server.stop(signal.SIGTERM) == 0
    assert download_row(cli, "home", info["content_id"])["state"] == "paused"
    _, restarted = serve(cli, "home")
    assert restarted["resumed"] == []
    resumed = cli.run("resume", "--json", str(info["content_id"]), *state(cli, "home"))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["was"] == "paused"
    done = cli.run("fetch", str(info["content_id"]), "-o", str(tmp_path / "a.bin"), "--json",
                   *state(cli, "home"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(src, tmp_path / "a.bin", shallow=False)


def test_the_destination_is_settled_before_a_byte_moves(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    src = make_file(tmp_path / "src" / "song.bin", 2 * MiB + 3)
    _, info = share(cli, "seed", src)
    _, _ = serve(cli, "home")
    ticket = str(info["ticket"])
    # The same content already there: checked and kept, nothing fetched.
    same = tmp_path / "same.bin"
    same.write_bytes(src.read_bytes())
    reused = cli.run("fetch", ticket, "-o", str(same), "--json", *state(cli, "home"))
    assert reused.returncode == 0, reused.stderr
    record = json.loads(reused.stdout.splitlines()[-1])
    assert record["path"] == str(same) and record["fetched_chunks"] == 0
    assert download_row(cli, "home", info["content_id"])["state"] == "complete"
    # Something else there: refused with a hint, untouched, no partial data left behind.
    other_state = state(cli, "fresh")
    differs = tmp_path / "differs.bin"
    differs.write_bytes(b"not the song")
    refused = cli.run("fetch", ticket, "-o", str(differs), *other_state)
    assert refused.returncode == EXIT_LOCAL, refused.stderr  # a local problem you can fix
    assert "--rename" in refused.stderr and "differs (1).bin" in refused.stderr
    assert differs.read_bytes() == b"not the song"
    assert not list(tmp_path.glob("differs*.p2p-partial"))
    renamed = cli.run("fetch", ticket, "-o", str(differs), "--rename", "--json", *other_state)
    assert renamed.returncode == 0, renamed.stderr
    assert json.loads(renamed.stdout.splitlines()[-1])["path"] == str(tmp_path / "differs (1).bin")
    assert filecmp.cmp(src, tmp_path / "differs (1).bin", shallow=False)
    # Held here already (at same.bin): `fetch ID` puts a copy where asked, by default the
    # current folder, without the network.
    here = tmp_path / "elsewhere"
    here.mkdir()
    copied = cli.run("fetch", str(info["content_id"]), "--json", *state(cli, "home"))
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout.splitlines()[-1])["path"] == str(tmp_path / "song.bin")
    assert filecmp.cmp(src, tmp_path / "song.bin", shallow=False)
    into = cli.run("fetch", str(info["content_id"]), "-o", str(here), "--json", *state(cli, "home"))
    assert into.returncode == 0, into.stderr
    assert filecmp.cmp(src, here / "song.bin", shallow=False)
    # Held as a share (by the sharer's running node): a copy where asked as well.
    mine = cli.run("fetch", str(info["content_id"]), "-o", str(tmp_path / "mine.bin"), "--json",
                   "--timeout", "2", *state(cli, "seed"))
    assert mine.returncode == 0, mine.stderr
    assert filecmp.cmp(src, tmp_path / "mine.bin", shallow=False)


def test_ls_says_so_when_a_partial_was_deleted(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "disk.img", 192 * MiB)
    seeder, info = share(cli, "seed", src)
    dest = tmp_path / "disk-copy.img"
    # No node runs for this state directory: the fetch runs a node of its own.
    client = cli.start("fetch", str(info["ticket"]), "-o", str(dest), "--json", *cli.node_args("mine"))
    client.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 1)
    seeder.send(signal.SIGSTOP)
    client.send(signal.SIGINT)
    assert client.wait() == EXIT_INTERRUPTED
    seeder.send(signal.SIGCONT)
    row = download_row(cli, "mine", info["content_id"])
    assert row["state"] == "paused" and row["done_chunks"] > 0, row
    Path(row["partial"]).unlink()
    row = download_row(cli, "mine", info["content_id"])
    assert row["state"] == "gone" and row["done_chunks"] == 0, row
    text = cli.run("ls", *state(cli, "mine"))
    assert text.returncode == 0, text.stderr
    line = next(li for li in text.stdout.splitlines() if info["content_id"] in li)
    assert "gone" in line and "partial data deleted" in line and "%" not in line, line
    assert "failed" not in line and "active" not in line


def test_a_plain_fetch_serves_the_control_socket_while_it_runs(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "slow.bin", 16 * MiB)
    seeder, info = share(cli, "seed", src, "--max-upload-rate", "2MiB/s")
    out = tmp_path / "new-folder" / "deeper"
    fetch = cli.start("fetch", str(info["ticket"]), "-o", f"{out}/", "--json",
                      *state(cli, "home"), "--listen", "127.0.0.1:0")
    try:
        fetch.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 1)
        # Other commands on its state directory go through it, not "no node is running".
        ident = cli.run("id", "--json", *state(cli, "home"))
        assert ident.returncode == 0, ident.stderr
        assert json.loads(ident.stdout)["running"], ident.stdout
        peers = cli.run("peers", "--json", *state(cli, "home"))
        assert peers.returncode == 0, peers.stderr
        assert str(info["peer_id"]) in peers.stdout
        assert fetch.wait() == 0, fetch.err()
    finally:
        fetch.kill()
        seeder.kill()
    # `-o DIR/` named a folder that was not there: made, and the file put inside it.
    assert (out / "slow.bin").read_bytes() == src.read_bytes()
