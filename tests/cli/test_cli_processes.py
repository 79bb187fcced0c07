"""The ``p2p`` command as a person and a script use it: real processes on 127.0.0.1."""

from __future__ import annotations

import filecmp
import json
import signal
from pathlib import Path
from typing import Any

from cliproc import CLI, Proc, make_file

MiB = 1 << 20


def share(cli: CLI, name: str, path: Path, *extra: str) -> tuple[Proc, dict[str, Any]]:
    proc = cli.start("share", str(path), "--json", *cli.node_args(name), *extra)
    return proc, proc.json()


def test_fetch_by_id_from_three_sharers_through_bootstrap(cli: CLI, bootstrap: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "movie.bin", 48 * MiB)
    infos = [share(cli, f"sharer{i}", src, "--bootstrap", bootstrap)[1] for i in range(3)]
    assert len({i["content_id"] for i in infos}) == 1
    assert len({i["peer_id"] for i in infos}) == 3
    dest = tmp_path / "got.bin"
    # Shared settings before and after the command name alike.
    fetch = cli.start("--json", "fetch", str(infos[0]["content_id"]), "-o", str(dest),
                      *cli.node_args("fetcher"), "--bootstrap", bootstrap)
    assert fetch.wait() == 0, fetch.err()
    result = fetch.last_json()
    assert result["path"] == str(dest)
    assert result["content_id"] == infos[0]["content_id"]
    assert result["bytes"] == src.stat().st_size
    assert filecmp.cmp(src, dest, shallow=False)
    by_peer = result["chunks_by_peer"]
    assert sum(by_peer.values()) == result["chunks"] == result["fetched_chunks"]
    assert set(by_peer) <= {i["peer_id"] for i in infos}
    assert len([n for n in by_peer.values() if n]) > 1, by_peer
    assert result["peers"] > 1


def test_fetch_by_ticket_alone_then_share_stops_cleanly(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "notes.bin", 3 * MiB + 17)
    sharer, info = share(cli, "alone", src)
    dest = tmp_path / "out"
    dest.mkdir()
    fetch = cli.run("fetch", str(info["ticket"]), "-o", str(dest), "--json",
                    *cli.node_args("ticketholder"))
    assert fetch.returncode == 0, fetch.stderr
    result = json.loads(fetch.stdout.splitlines()[-1])
    assert Path(str(result["path"])) == dest / "notes.bin"
    assert filecmp.cmp(src, dest / "notes.bin", shallow=False)
    # The library of the fetcher, offline.
    ls = cli.run("ls", "--json", "--state-dir", str(tmp_path / "state" / "ticketholder"))
    assert ls.returncode == 0, ls.stderr
    lib = json.loads(ls.stdout)
    assert [d["state"] for d in lib["downloads"]] == ["complete"]
    # A share stopped by SIGINT exits cleanly, with 0.
    assert sharer.stop(signal.SIGINT) == 0, sharer.err()
    assert not (tmp_path / "state" / "alone" / "control.sock").exists()
    # The same state dir again, still with no DHT to announce to: it still works.
    again = cli.run("share", str(src), "--no-serve", "--json", *cli.node_args("alone"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["content_id"] == info["content_id"]


def test_wrong_publisher_exits_4_and_writes_nothing(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "signed.bin", 1 * MiB)
    _, info = share(cli, "publisher", src)
    other = cli.run("id", "--json", "--state-dir", str(tmp_path / "state" / "someone-else"))
    assert other.returncode == 0, other.stderr
    impostor = json.loads(other.stdout)["peer_id"]
    dest = tmp_path / "never.bin"
    fetch = cli.run("fetch", str(info["ticket"]), "-o", str(dest), "--from", impostor,
                    "--timeout", "5", *cli.node_args("careful"))
    assert fetch.returncode == 4, fetch.stderr
    assert fetch.stderr.startswith("p2p: error: ")
    assert "Traceback" not in fetch.stderr
    assert not dest.exists()
    assert not list(tmp_path.glob("never.bin*"))
    # The right publisher works.
    ok = cli.run("fetch", str(info["ticket"]), "-o", str(dest), "--from", str(info["publisher"]),
                 *cli.node_args("careful"))
    assert ok.returncode == 0, ok.stderr
    assert filecmp.cmp(src, dest, shallow=False)


def test_malformed_input_exits_2_with_one_clear_line(cli: CLI, tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state" / "x")]
    cases = {
        ("fetch", "not-an-id"): "not a content id",
        ("fetch", "p2pc1!!!!"): "mistyped content id: '!'",
        ("fetch", "p2pt1aaaa"): "malformed ticket",
        ("fetch", "p2pc1" + "a" * 52, "--from", "someone"): "not a peer id",
        ("fetch", "p2pc1" + "a" * 52, "--peer", "nowhere"): "peer address",
        ("--listen", "1.2.3.4:99999", "id"): "port",
    }
    for args, words in cases.items():
        proc = cli.run(*args, *state)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("p2p: error: "), (args, proc.stderr)
        assert words in lines[0], (args, lines[0])
    usage = cli.run("fetch", *state)  # argparse: missing argument
    assert usage.returncode == 2
    assert "p2p: error:" in usage.stderr
    assert cli.run("no-such-command").returncode == 2


def test_unknown_content_exits_3_within_the_timeout(cli: CLI, bootstrap: str, tmp_path: Path) -> None:
    # Bounded, not timed: a fetch that ignored --timeout would hang until the bound fails it.
    proc = cli.run("fetch", "p2pc1" + "a" * 52, "--timeout", "2", "--bootstrap", bootstrap,
                   "-o", str(tmp_path / "nothing"), *cli.node_args("seeker"), timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("p2p: error: ")
    assert not (tmp_path / "nothing").exists()


def test_sigint_during_fetch_exits_130_and_the_next_fetch_resumes(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "big.bin", 256 * MiB)
    _, info = share(cli, "seed", src)
    dest = tmp_path / "big-copy.bin"
    args = ("fetch", str(info["ticket"]), "-o", str(dest), "--json", *cli.node_args("resumer"))
    first = cli.start(*args)
    started = first.json_until(lambda o: o.get("event") == "started")
    assert started["resumed_chunks"] == 0
    # Progress lines are JSON too: interrupt once at least one chunk is verified.
    first.json_until(lambda o: o.get("event") == "progress" and o["fetched_chunks"] >= 1)
    first.send(signal.SIGINT)
    assert first.wait() == 130, first.err()
    assert "interrupted" in first.err()
    assert not dest.exists()
    assert Path(str(dest) + ".p2p-partial").exists()
    second = cli.start(*args)
    assert second.wait() == 0, second.err()
    result = second.last_json()
    assert result["fetched_chunks"] + result["resumed_chunks"] == result["chunks"]
    assert result["resumed_chunks"] > 0
    assert result["fetched_chunks"] < result["chunks"]
    assert filecmp.cmp(src, dest, shallow=False)


def test_peers_dht_verify_and_unshare_through_the_running_node(cli: CLI, tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state" / "seed")]
    none = cli.run("peers", *state)
    assert none.returncode == 5
    assert "no node is running" in none.stderr
    src = make_file(tmp_path / "small.bin", 2 * MiB)
    sharer, info = share(cli, "seed", src)
    seeder = cli.start("fetch", str(info["ticket"]), "-o", str(tmp_path / "copy.bin"), "--seed",
                       "--json", *cli.node_args("client"))
    assert seeder.json_until(lambda o: o.get("event") == "completed")["fetched_chunks"] > 0
    peers = cli.run("peers", "--json", *state)
    assert peers.returncode == 0, peers.stderr
    assert isinstance(json.loads(peers.stdout)["peers"], list)
    dht = cli.run("dht", "--json", *state)
    assert dht.returncode == 0, dht.stderr
    assert json.loads(dht.stdout)["source"] == "running node"
    who = cli.run("id", "--json", *state)
    assert json.loads(who.stdout)["running"] is True
    assert json.loads(who.stdout)["listen"] == info["listen"]
    # verify (through the seeding fetcher): good, then the copy changes on disk: exit 4.
    client = ["--state-dir", str(tmp_path / "state" / "client")]
    assert cli.run("verify", str(info["content_id"]), *client).returncode == 0
    with (tmp_path / "copy.bin").open("r+b") as f:
        f.write(b"tampered")
    bad = cli.run("verify", "--json", str(info["content_id"]), *client)
    assert bad.returncode == 4, bad.stderr
    assert json.loads(bad.stdout.splitlines()[0])["ok"] is False
    # unshare through the running sharer, then the id is no longer listed as shared.
    gone = cli.run("unshare", str(info["content_id"]), *state)
    assert gone.returncode == 0, gone.stderr
    assert cli.run("unshare", str(info["content_id"]), *state).returncode == 3
    assert sharer.stop(signal.SIGTERM) == 0
    assert seeder.stop(signal.SIGINT) == 0  # fetch --seed: stopping the seeding is a clean exit
    lib = json.loads(cli.run("ls", "--json", *state).stdout)
    assert lib["shares"] == []


def test_environment_settings_and_option_precedence(cli: CLI, tmp_path: Path) -> None:
    env_dir, opt_dir = tmp_path / "state" / "from-env", tmp_path / "state" / "from-option"
    by_env = cli.run("id", "--json", env={"P2P_STATE_DIR": str(env_dir)})
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_env.stdout)["state_dir"] == str(env_dir)
    by_opt = cli.run("id", "--json", "--state-dir", str(opt_dir),
                     env={"P2P_STATE_DIR": str(env_dir), "P2P_LISTEN": "127.0.0.1:9"})
    info = json.loads(by_opt.stdout)
    assert info["state_dir"] == str(opt_dir)
    assert info["listen"] == "127.0.0.1:9"
    assert info["peer_id"] != json.loads(by_env.stdout)["peer_id"]
    bad = cli.run("id", env={"P2P_BOOTSTRAP": "10.0.0.1:1,nonsense:port"})
    assert bad.returncode == 2
    help_text = cli.run("--help")
    assert help_text.returncode == 0
    assert "exit codes:" in help_text.stdout and "130" in help_text.stdout


def test_demo_small(cli: CLI) -> None:
    proc = cli.run("demo", "--peers", "3", "--size", "16M", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["identical"] is True and summary["verified"] is True
    assert summary["peers_used"] > 1
    assert sum(summary["chunks_by_peer"].values()) == summary["chunks"]


def test_publish_and_resolve_a_channel(cli: CLI, bootstrap: str, tmp_path: Path) -> None:
    src = make_file(tmp_path / "release.bin", 1 * MiB)
    boot = ["--bootstrap", bootstrap]
    shared = cli.run("share", str(src), "--no-serve", "--json", *cli.node_args("author"), *boot)
    assert shared.returncode == 0, shared.stderr
    info = json.loads(shared.stdout)
    published = cli.run("publish", "nightly", str(info["content_id"]), "--json",
                        *cli.node_args("author"), *boot)
    assert published.returncode == 0, published.stderr
    ref = json.loads(published.stdout)["ref"]
    assert ref == f"{info['publisher']}/nightly"
    resolved = cli.run("resolve", ref, "--json", *cli.node_args("reader"), *boot)
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout)["content_id"] == info["content_id"]
    missing = cli.run("resolve", f"{info['publisher']}/nothing", *cli.node_args("reader"), *boot)
    assert missing.returncode == 3, missing.stderr
    assert cli.run("resolve", "nobody/nightly", *cli.node_args("reader"), *boot).returncode == 2
    assert cli.run("publish", "x", str(info["content_id"]),
                   *cli.node_args("author")).returncode == 2  # no DHT to publish to
