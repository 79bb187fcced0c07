"""Failing fast and saying why (issue 15, item 4), through real ``p2p`` processes: a ticket
whose only sharer is gone, and a sharer whose file changed after it was shared."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from cliproc import CLI, make_file
from test_cli_processes import MiB, share


def test_a_ticket_whose_only_sharer_is_gone_fails_with_could_not_connect(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "gone.bin", MiB)
    sharer, info = share(cli, "sharer", src)
    sharer.kill()  # its port now refuses connections
    listen = str(info["listen"])
    got = cli.run("fetch", str(info["ticket"]), "-o", str(tmp_path / "out.bin"),
                  *cli.node_args("reader"))  # the default 30 s timeout: not waited for
    assert got.returncode == 5, got.stderr
    assert f"could not connect to {listen} (connection refused)" in got.stderr
    assert not (tmp_path / "out.bin").exists()


def test_a_changed_shared_file_is_withdrawn_and_the_downloader_is_told(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "notes.bin", MiB)
    sharer, info = share(cli, "sharer", src)
    with open(src, "r+b") as f:  # same size, other bytes, a newer mtime
        f.write(b"edited")
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    # The default 30 s timeout: told at once, so well within the 15 s this waits.
    got = cli.run("fetch", str(info["ticket"]), "-o", str(tmp_path / "out.bin"),
                  *cli.node_args("reader"), timeout=15)
    # Its only peer no longer has it: nobody provides the content (exit 3), and the reason is named.
    assert got.returncode == 3, got.stderr
    assert "no peer left to download" in got.stderr, got.stderr
    assert not (tmp_path / "out.bin").exists()
    assert "no longer has it (its copy changed on disk)" in got.stderr, got.stderr
    sharer.stop(signal.SIGINT)
    # The sharer says so on its own terminal.
    assert f"{src.resolve()} changed since it was shared; no longer serving it" in sharer.err()


def test_a_frozen_only_seeder_is_dropped_named_and_the_fetch_fails_with_a_network_error(
        cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "slow.bin", 16 * MiB)
    # 1 MiB/s: the transfer is surely still running when the sharer is frozen
    sharer, info = share(cli, "sharer", src, "--max-upload-rate", "1MiB/s")
    fetch = cli.start("--json", "fetch", str(info["ticket"]), "-o", str(tmp_path / "out.bin"),
                      *cli.node_args("reader"))
    try:
        fetch.json_until(lambda e: e.get("event") == "progress" and e["fetched_chunks"] > 0)
        sharer.send(signal.SIGSTOP)  # suspended: its sockets stay open, nothing answers
        # Dropped after the 20 s no-response timeout, then failed at once: no other peer, no
        # DHT to find one. Without the drop it would wait for the whole 30 s stall timeout.
        assert fetch.wait(timeout=28) == 5, fetch.err()
        error = fetch.last_json()
        assert error["kind"] == "network", error
        assert "no peer left to download" in error["error"], error
        assert "stopped answering (nothing for 20 s)" in error["error"], error
        assert "stopped answering (nothing for 20 s)" in fetch.err(), fetch.err()
    finally:
        sharer.send(signal.SIGCONT)
        sharer.kill()
        fetch.kill()
