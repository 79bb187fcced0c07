"""Messages a person can act on, through real ``p2p`` processes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from cliproc import CLI, WAIT


def test_a_folder_share_says_what_it_leaves_out(cli: CLI, tmp_path: Path) -> None:
    folder = tmp_path / "album"
    (folder / "disc1").mkdir(parents=True)
    (folder / "disc1" / "track.flac").write_bytes(b"x" * 1000)
    (folder / "empty").mkdir()
    (folder / "link").symlink_to(folder / "disc1" / "track.flac")
    (folder / "folder-link").symlink_to(folder / "disc1")
    text = cli.run("share", str(folder), "--no-serve", *cli.node_args("s"))
    assert text.returncode == 0, text.stderr
    assert ("p2p: warning: left out 2 symlinks and 1 empty folder" in text.stderr
            and "(3.2 KiB, 1 chunk)" not in text.stderr and "1 chunk)" in text.stderr), text.stderr
    machine = cli.run("share", str(folder), "--no-serve", "--json", *cli.node_args("s"))
    info = json.loads(machine.stdout)
    assert info["left_out"] == {"symlinks": 2, "empty_folders": 1, "unreadable": 0, "special": 0}
    clean = cli.run("share", str(folder / "disc1"), "--no-serve", *cli.node_args("s"))
    assert clean.returncode == 0 and "left out" not in clean.stderr


def test_a_port_in_use_names_our_process_and_what_to_do(cli: CLI, tmp_path: Path) -> None:
    first = cli.start("serve", "--json", *cli.node_args("first"))
    port = int(str(first.json()["listen"]).rpartition(":")[2])
    second = cli.run("serve", "--json", *cli.node_args("second", f"127.0.0.1:{port}"))
    assert second.returncode == 5, second.stderr
    error = json.loads(second.stdout)
    assert error["event"] == "error" and error["exit_code"] == 5 and error["kind"] == "network"
    message = str(error["error"])
    assert "in use" in message and f"process {first.popen.pid}" in message, message
    assert "p2p serve" in message and "--listen 0.0.0.0:0" in message, message
    assert second.stderr.count("p2p: error: ") == 1  # the person's line on stderr as well
    # The same state directory twice: "already running", a local problem (6), not a bug (1).
    again = cli.run("serve", *cli.node_args("first"))
    assert again.returncode == 6, again.stderr
    assert "already running" in again.stderr
    assert first.stop() == 0


def test_json_errors_are_objects_on_stdout(cli: CLI, tmp_path: Path) -> None:
    peer_id = json.loads(cli.run("id", "--json", *cli.node_args("me")).stdout)["peer_id"]
    for args, code, says in [
        (("fetch", "p2pc1abc"), 2, "truncated content id"),
        (("fetch", str(peer_id)), 2, "is a peer id"),
        (("fetch",), 2, "required: ID-or-TICKET"),  # argparse's own error
        (("config", "set", "nope", "1"), 2, "unknown config key"),
    ]:
        done = cli.run("--json", *args, *cli.node_args("me"))
        assert done.returncode == code, done.stderr
        [line] = done.stdout.splitlines()
        obj = json.loads(line)
        assert obj["event"] == "error" and obj["exit_code"] == code and says in obj["error"], obj


def test_an_interrupted_json_command_says_so_on_stdout(cli: CLI, tmp_path: Path) -> None:
    boot = cli.start("serve", "--json", *cli.node_args("boot"))
    address = str(boot.json()["listen"])
    fetch = cli.start("fetch", "p2pc1" + "a" * 52, "--json", "--timeout", "60",
                      "--bootstrap", address, *cli.node_args("fetcher"))
    # Await the fetcher's provider search reaching the bootstrap node (it answered a `get`):
    # the fetcher is then in its search, with its signal handlers in place. (A fetcher is a
    # DHT client: it never enters the bootstrap node's routing table, so contacts stay 0.)
    deadline = time.monotonic() + WAIT
    while True:
        seen = cli.run("dht", "--json", "--state-dir", str(tmp_path / "state" / "boot"))
        assert seen.returncode == 0, seen.stderr
        if json.loads(seen.stdout)["stats"].get("rpcs_received", {}).get("get", 0) >= 1:
            break
        assert time.monotonic() < deadline, "the fetcher's search never reached the DHT"
    fetch.send(signal.SIGINT)
    assert fetch.wait() == 130, fetch.err()
    obj = fetch.last_json()
    assert obj == {"event": "interrupted", "signal": "SIGINT", "exit_code": 130, "resumable": True}
    assert boot.stop() == 0


def test_pasted_tickets_ids_paths_and_the_dht_table(cli: CLI, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(b"n" * 5000)
    sharer = cli.start("share", str(src), "--json", *cli.node_args("sharer"))
    info = sharer.json()
    ticket = str(info["ticket"])
    # As a terminal or a mail wraps it: line breaks and indentation inside.
    wrapped = "\n   ".join(ticket[i:i + 40] for i in range(0, len(ticket), 40)) + "\n"
    dest = tmp_path / "got.txt"
    done = cli.run("fetch", wrapped, "-o", str(dest), *cli.node_args("fetcher"))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == src.read_bytes()
    assert "from 1 peer" in done.stderr and "1 peers" not in done.stderr
    # Something different already at the destination: refused as a local problem (6).
    (tmp_path / "other.txt").write_bytes(b"different")
    taken = cli.run("fetch", ticket, "-o", str(tmp_path / "other.txt"), *cli.node_args("fetcher2"))
    assert taken.returncode == 6 and "already exists" in taken.stderr, taken.stderr
    assert (tmp_path / "other.txt").read_bytes() == b"different"
    cid = str(info["content_id"])
    verify = cli.run("verify", cid[:30] + " " + cid[30:], *cli.node_args("fetcher"))
    assert verify.returncode == 0, verify.stderr
    assert "1/1 chunk good" in verify.stdout
    # `id --json` gives absolute paths, even for a relative --state-dir.
    ident = cli.run("id", "--json", "--state-dir", "relative-state")
    assert json.loads(ident.stdout)["state_dir"] == str(tmp_path / "relative-state")
    # `p2p dht` is a table, not a Python dict or list.
    dht = cli.run("dht", "--bootstrap", str(info["listen"]), *cli.node_args("asker"))
    assert dht.returncode == 0, dht.stderr
    assert "BUCKET  CONTACTS" in dht.stdout
    assert not any(ch in dht.stdout for ch in "{}[]"), dht.stdout
    assert sharer.stop() == 0


def test_a_state_directory_that_is_a_file_and_verify_of_unshared_content(cli: CLI,
                                                                        tmp_path: Path) -> None:
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_bytes(b"x")
    for args, env in [(["--state-dir", str(not_a_folder)], None),
                      ([], {"P2P_STATE_DIR": str(not_a_folder)})]:
        got = cli.run(*args, "ls", env=env)
        assert got.returncode == 2, got.stderr
        assert f"the state directory {not_a_folder} is not a folder" in got.stderr, got.stderr
    src = tmp_path / "notes.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    state = ["--state-dir", str(tmp_path / "state")]
    shared = cli.run("share", "--no-serve", "--json", str(src), *state)
    assert shared.returncode == 0, shared.stderr
    cid = json.loads(shared.stdout.splitlines()[0])["content_id"]
    assert cli.run("unshare", cid, *state).returncode == 0
    # Not "N chunks missing" (an integrity failure): it is simply not here any more.
    got = cli.run("verify", cid, *state)
    assert got.returncode == 3, got.stderr
    assert "neither shared nor downloaded here" in got.stderr, got.stderr
