"""Bandwidth limits through real processes: the rate flags, the environment and the config
file set a node's limits (flag over environment over file), ``p2p limit`` shows and changes
them on the running node, and a malformed rate is refused with exit 2, naming where it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cliproc import CLI

MiB = 1024 * 1024


def limits(cli: CLI, state: Path, *args: str) -> dict[str, Any]:
    proc = cli.run("limit", "--json", *args, "--state-dir", str(state))
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert isinstance(obj, dict)
    return obj


def test_limits_from_flag_env_and_file_then_changed_live(cli: CLI, tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "P2P_MAX_DOWNLOAD_RATE": "3MiB/s"}
    for key, value in (("max_upload_rate", "1MiB/s"), ("max_download_rate", "2MiB/s")):
        done = cli.run("config", "set", key, value, env=env)
        assert done.returncode == 0, done.stderr
    state = tmp_path / "state" / "node"
    serve = cli.start("serve", "--json", "--state-dir", str(state), "--listen", "127.0.0.1:0",
                      "--max-upload-rate", "5MiB/s", env=env)
    serve.json()
    # The flag beats the file for upload; the environment beats the file for download.
    now = limits(cli, state)
    assert (now["up"]["rate"], now["down"]["rate"]) == (5 * MiB, 3 * MiB)
    changed = limits(cli, state, "--up", "512KiB/s", "--down", "0")
    assert (changed["up"]["rate"], changed["down"]["rate"]) == (512 * 1024, 0)
    assert limits(cli, state)["up"]["rate"] == 512 * 1024
    text = cli.run("limit", "--state-dir", str(state))
    assert text.returncode == 0 and "512.0 KiB/s" in text.stdout, text.stdout
    # Malformed rates: refused, the limits unchanged.
    bad = cli.run("limit", "--up", "5 parsecs", "--state-dir", str(state))
    assert bad.returncode == 2 and "--up" in bad.stderr, bad.stderr
    assert limits(cli, state)["up"]["rate"] == 512 * 1024
    assert serve.stop() == 0


def test_a_malformed_rate_flag_or_variable_is_refused_before_a_node_starts(
        cli: CLI, tmp_path: Path) -> None:
    state = tmp_path / "state" / "n"
    flag = cli.run("serve", "--max-upload-rate", "fast", "--state-dir", str(state),
                   "--listen", "127.0.0.1:0")
    assert flag.returncode == 2 and "--max-upload-rate" in flag.stderr, flag.stderr
    var = cli.run("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0",
                  env={"P2P_MAX_DOWNLOAD_RATE": "10 mbps"})
    assert var.returncode == 2 and "P2P_MAX_DOWNLOAD_RATE" in var.stderr, var.stderr


def test_limit_without_a_running_node_says_so(cli: CLI, tmp_path: Path) -> None:
    done = cli.run("limit", "--state-dir", str(tmp_path / "state" / "none"))
    assert done.returncode == 5 and "no node is running" in done.stderr, done.stderr
