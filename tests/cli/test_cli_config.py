"""The config file through real processes: ``p2p config``, the precedence table, the daemon's table."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cliproc import CLI, clean_env, make_file


def xdg(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def show(cli: CLI, *args: str, env: dict[str, str]) -> dict[str, Any]:
    proc = cli.run("config", "show", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert isinstance(obj, dict)
    return obj


def test_config_set_writes_the_file_under_xdg_config_home(cli: CLI, tmp_path: Path) -> None:
    env = xdg(tmp_path)
    path = cli.run("config", "path", env=env)
    assert path.returncode == 0 and path.stdout.strip() == str(tmp_path / "xdg" / "p2p" / "config.toml")
    assert "no file there yet" in path.stderr
    done = cli.run("config", "set", "bootstrap", "127.0.0.1:7473", env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "xdg" / "p2p" / "config.toml").read_text().count('bootstrap = ["127.0.0.1:7473"]') == 1
    assert show(cli, env=env)["settings"]["bootstrap"] == ["127.0.0.1:7473"]
    # The limits are settings in force too: shown with where they came from.
    assert cli.run("config", "set", "max_upload_rate", "5MiB/s", env=env).returncode == 0
    shown = show(cli, env=env)
    assert shown["settings"]["max_upload_rate"] == 5 * 1024 * 1024
    assert shown["sources"]["max_upload_rate"] == "file"
    assert shown["settings"]["max_download_rate"] == 0 and shown["sources"]["max_download_rate"] == "default"
    text = cli.run("config", "show", env=env).stdout
    assert "max_upload_rate   5.0 MiB/s  (file)" in text, text
    assert cli.run("config", "unset", "max_upload_rate", env=env).returncode == 0
    # A mistyped key, a malformed rate and a bad value: exit 2, one line each, file unchanged.
    before = (tmp_path / "xdg" / "p2p" / "config.toml").read_text()
    for args, says in [(("bootstrp", "x"), "unknown config key 'bootstrp'"),
                       (("max_upload_rate", "5 parsecs"), "expected a rate such as 5MiB/s"),
                       (("listen", "127.0.0.1:70000"), "between 0 and 65535"),
                       # this machine's own address: a name that does not resolve is refused
                       # now, not found out by every later command
                       (("listen", "no-such-host.invalid:7473"), "an address of this machine")]:
        bad = cli.run("config", "set", *args, env=env)
        assert bad.returncode == 2 and says in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert (tmp_path / "xdg" / "p2p" / "config.toml").read_text() == before
    # A broken file stops every command with its name, and `config set` repairs it.
    (tmp_path / "xdg" / "p2p" / "config.toml").write_text('listen = "127.0.0.1:99999"\n')
    broken = cli.run("id", env=env)
    assert broken.returncode == 2 and "config.toml" in broken.stderr and "listen" in broken.stderr
    fixed = cli.run("config", "set", "listen", "127.0.0.1:0", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert cli.run("id", env=env).returncode == 0


ROWS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize(("flag", "env_set", "file_set"), ROWS)
def test_precedence_table_flag_env_file_default(cli: CLI, tmp_path: Path, flag: bool,
                                                env_set: bool, file_set: bool) -> None:
    env = xdg(tmp_path)
    if file_set:
        for key, value in [("listen", "127.0.0.3:7003"), ("state_dir", str(tmp_path / "file")),
                           ("bootstrap", "127.0.0.3:9003")]:
            assert cli.run("config", "set", key, value, env=env).returncode == 0
    if env_set:
        env |= {"P2P_LISTEN": "127.0.0.2:7002", "P2P_STATE_DIR": str(tmp_path / "env"),
                "P2P_BOOTSTRAP": "127.0.0.2:9002"}
    args = (["--listen", "127.0.0.1:7001", "--state-dir", str(tmp_path / "flag"),
             "--bootstrap", "127.0.0.1:9001"] if flag else [])
    source, n = (("flag", 1) if flag else ("env", 2) if env_set else ("file", 3) if file_set
                 else ("default", 0))
    got = show(cli, *args, env=env)
    assert got["sources"] == {"state_dir": source, "listen": source, "bootstrap": source,
                              "announce": "default", "download_dir": "default",
                              "max_upload_rate": "default", "max_download_rate": "default",
                              "lan": "env", "hole_punch": "default"}
    if n:
        assert got["settings"]["listen"] == f"127.0.0.{n}:700{n}"
        assert got["settings"]["bootstrap"] == [f"127.0.0.{n}:900{n}"]
    else:
        assert got["settings"]["bootstrap"] == []
    # `p2p id` (an ordinary command) sees the same state directory.
    ident = cli.run("id", "--json", *args, env=env)
    assert ident.returncode == 0, ident.stderr
    expected_state = {"flag": tmp_path / "flag", "env": tmp_path / "env",
                      "file": tmp_path / "file"}.get(source)
    if expected_state is not None:
        assert json.loads(ident.stdout)["state_dir"] == str(expected_state)


def test_download_dir_from_the_file_then_from_p2p_download_dir(cli: CLI, tmp_path: Path) -> None:
    env = xdg(tmp_path)
    src = make_file(tmp_path / "notes.bin", 200_000)
    sharer = cli.start("share", str(src), "--json", *cli.node_args("sharer"), env=env)
    ticket = str(sharer.json()["ticket"])
    (tmp_path / "from-file").mkdir()
    (tmp_path / "from-env").mkdir()
    assert cli.run("config", "set", "download_dir", str(tmp_path / "from-file"),
                   env=env).returncode == 0
    by_file = cli.run("fetch", ticket, "--json", *cli.node_args("a"), env=env)
    assert by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout.splitlines()[-1])["path"] == str(tmp_path / "from-file" / "notes.bin")
    by_env = cli.run("fetch", ticket, "--json", *cli.node_args("b"),
                     env=env | {"P2P_DOWNLOAD_DIR": str(tmp_path / "from-env")})
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_env.stdout.splitlines()[-1])["path"] == str(tmp_path / "from-env" / "notes.bin")
    assert sharer.stop() == 0


def test_the_daemon_reads_its_table_and_refuses_a_bad_one(cli: CLI, tmp_path: Path) -> None:
    env = xdg(tmp_path)
    assert cli.run("config", "set", "daemon.log_level", "loud", env=env).returncode == 2
    (tmp_path / "xdg" / "p2p").mkdir(parents=True)
    (tmp_path / "xdg" / "p2p" / "config.toml").write_text('[daemon]\nlisten = "127.0.0.1:99999"\n')
    daemon = subprocess.run([sys.executable, "-m", "bootstrap", "--state-dir", str(tmp_path / "d")],
                            capture_output=True, text=True, timeout=30, env=clean_env(env),
                            cwd=tmp_path, check=False)
    assert daemon.returncode == 2, daemon.stderr
    lines = daemon.stderr.splitlines()
    assert len(lines) == 1 and "daemon.listen" in lines[0] and "config.toml" in lines[0]


def test_version(cli: CLI) -> None:
    got = cli.run("--version")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().startswith("p2p ") and got.stdout.strip()[4:5].isdigit(), got.stdout
