"""The config file's pure parts: the precedence rule, key checks, and the writer's round trip."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootstrap.config import parse as parse_daemon
from p2p import BadInput, build_settings
from p2p.config import (
    ConfigFile,
    config_path,
    dump_config,
    load_config,
    save_config,
    set_config_value,
    unset_config_value,
)
from p2p.settings import choose

FILE = ConfigFile(None, {"listen": "127.0.0.3:7003", "bootstrap": ["127.0.0.3:9003"]})


@pytest.mark.parametrize(("flag", "env", "expected"), [
    ("127.0.0.1:7001", {"P2P_LISTEN": "127.0.0.2:7002"}, ("127.0.0.1:7001", "flag")),
    (None, {"P2P_LISTEN": "127.0.0.2:7002"}, ("127.0.0.2:7002", "env")),
    (None, {"P2P_LISTEN": ""}, ("127.0.0.3:7003", "file")),  # an empty variable is unset
    (None, {}, ("127.0.0.3:7003", "file")),
])
def test_precedence_of_a_single_value(flag: str | None, env: dict[str, str],
                                      expected: tuple[str, str]) -> None:
    assert choose("listen", flag, env, FILE) == expected


def test_precedence_of_a_list_and_the_default() -> None:
    env = {"P2P_BOOTSTRAP": "127.0.0.2:1, 127.0.0.2:2"}
    assert choose("bootstrap", ["127.0.0.1:1"], env, FILE) == (["127.0.0.1:1"], "flag")
    assert choose("bootstrap", [], env, FILE) == (["127.0.0.2:1", "127.0.0.2:2"], "env")
    assert choose("bootstrap", [], {}, FILE) == (["127.0.0.3:9003"], "file")
    assert choose("announce", [], {}, FILE) == (None, "default")


def test_config_path_honours_p2p_config_then_an_absolute_xdg_home(tmp_path: Path) -> None:
    assert config_path({"P2P_CONFIG": str(tmp_path / "x.toml"),
                        "XDG_CONFIG_HOME": "/elsewhere"}) == tmp_path / "x.toml"
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "p2p" / "config.toml"
    # The XDG spec: a relative XDG_CONFIG_HOME is ignored.
    assert config_path({"XDG_CONFIG_HOME": "relative"}).name == "config.toml"
    assert not str(config_path({"XDG_CONFIG_HOME": "relative"})).startswith("relative")


def test_set_checks_values_and_a_list_key_takes_one_or_several(tmp_path: Path) -> None:
    empty = ConfigFile(None, {})
    assert set_config_value(empty, "bootstrap", "127.0.0.1:7473").get("bootstrap") == ["127.0.0.1:7473"]
    assert set_config_value(empty, "bootstrap", "a.example:1, [::1]:2").get("bootstrap") == [
        "a.example:1", "[::1]:2"]
    assert set_config_value(empty, "bootstrap", "").get("bootstrap") == []
    assert set_config_value(empty, "download_dir", "rel").get("download_dir") == str(Path("rel").resolve())
    assert set_config_value(empty, "download_dir", "~/x").get("download_dir") == "~/x"
    assert set_config_value(empty, "daemon.max_contacts_per_ip", "None").get(
        "daemon.max_contacts_per_ip") == "none"
    assert set_config_value(empty, "daemon.save_interval", "2.5").get("daemon.save_interval") == 2.5
    for name, text, says in [("listen", "127.0.0.1:99999", "between 0 and 65535"),
                             ("bootstrap", "no spaces allowed:1", "bootstrap"),
                             ("daemon.log_level", "loud", "expected one of"),
                             ("daemon.rate_limit_burst", "-1", "positive number"),
                             ("bootstrp", "x", "unknown config key 'bootstrp'"),
                             ("max_upload_rate", "5 parsecs", "expected a rate such as 5MiB/s")]:
        with pytest.raises(BadInput, match=says):
            set_config_value(empty, name, text)
    assert unset_config_value(set_config_value(empty, "listen", "127.0.0.1:1"), "listen").values == {}


def test_load_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_config(path).values == {}  # no file: empty
    for text, says in [('listen = "127.0.0.1:1"\nlisten =', "not valid TOML"),
                       ('bootstrp = ["127.0.0.1:1"]', "unknown config key"),
                       ("bootstrap = [1, 2]", "bootstrap in .*: expected a list"),
                       ('listen = "127.0.0.1:99999"', "listen in .*config.toml"),
                       ('daemon = "x"', r"\[daemon\] must be a table"),
                       ('max_download_rate = "1 MiB/h"', "max_download_rate in .*expected a rate")]:
        path.write_text(text)
        with pytest.raises(BadInput, match=says):
            load_config(path)
    # The key being replaced is not checked: `p2p config set` repairs a bad value.
    path.write_text('listen = "127.0.0.1:99999"\nbootstrap = "127.0.0.1:5"\n')
    assert load_config(path, replacing="listen").values == {"bootstrap": ["127.0.0.1:5"]}


def test_save_writes_what_load_reads_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "config.toml"
    config = ConfigFile(None, {"bootstrap": ["127.0.0.1:1"], "daemon.log_format": "json",
                               "daemon.save_interval": 30, "download_dir": "/tmp/a \"quoted\" \\ dir"})
    save_config(config, path)
    assert load_config(path).values == config.values
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary left


@given(st.dictionaries(st.sampled_from(["listen", "download_dir", "daemon.state_dir"]),
                       st.text(), max_size=3),
       st.lists(st.text(), max_size=4))
def test_the_writer_round_trips_any_text_through_tomllib(texts: dict[str, str],
                                                         items: list[str]) -> None:
    values: dict[str, str | list[str]] = {**texts, "bootstrap": items}
    data = tomllib.loads(dump_config(values))
    flat = {k: v for k, v in data.items() if k != "daemon"}
    flat.update({f"daemon.{k}": v for k, v in data.get("daemon", {}).items()})
    assert flat == values


def test_build_settings_layers_the_file_under_env_and_flags(tmp_path: Path) -> None:
    file = ConfigFile(None, {"listen": "127.0.0.5:7005", "download_dir": str(tmp_path / "file"),
                             "bootstrap": ["127.0.0.9:9009"]})
    s = build_settings(env={"P2P_DOWNLOAD_DIR": str(tmp_path / "env")}, config=file,
                       state_dir=tmp_path / "s")
    assert s.listen == ("127.0.0.5", 7005) and s.bootstrap == (("127.0.0.9", 9009),)
    assert s.download_dir == tmp_path / "env"
    assert s.sources == {"state_dir": "flag", "listen": "file", "bootstrap": "file",
                         "announce": "default", "download_dir": "env",
                         "max_upload_rate": "default", "max_download_rate": "default",
                         "lan": "default", "hole_punch": "default"}
    # The file's port is the long-running node's: a short command takes a free one, an
    # explicitly given port is used as given.
    assert s.node_config(long_running=True).port == 7005
    assert s.node_config(long_running=False).port == 0
    given_port = build_settings(env={"P2P_LISTEN": "127.0.0.5:7006"}, config=file,
                                state_dir=tmp_path / "s")
    assert given_port.node_config(long_running=False).port == 7006


def test_the_daemon_reads_its_own_table_under_its_flags_and_environment(tmp_path: Path) -> None:
    file = ConfigFile(None, {"listen": "127.0.0.1:1", "daemon.listen": "127.0.0.1:7100",
                             "daemon.log_format": "json", "daemon.bootstrap": ["127.0.0.1:7200"],
                             "daemon.max_contacts_per_ip": "none",
                             "daemon.state_dir": str(tmp_path / "d")})
    config = parse_daemon([], {}, file)
    assert config.listen == ("127.0.0.1", 7100) and config.log_format == "json"
    assert config.bootstrap == (("127.0.0.1", 7200),) and config.max_contacts_per_ip is None
    assert config.state_dir == tmp_path / "d"
    over = parse_daemon(["--log-format", "text"], {"P2P_BOOTSTRAP_LISTEN": "127.0.0.1:7300"}, file)
    assert over.listen == ("127.0.0.1", 7300) and over.log_format == "text"


def test_the_terminal_app_reads_the_same_file(tmp_path: Path) -> None:
    from tui.config import config_from_args

    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = config_path(env)
    save_config(set_config_value(ConfigFile(path, {}), "bootstrap", "127.0.0.1:7010"), path)
    save_config(set_config_value(load_config(path), "download_dir", str(tmp_path / "dl")), path)
    config = config_from_args(["--state-dir", str(tmp_path / "s")], env)
    assert config.bootstrap == (("127.0.0.1", 7010),) and config.download_dir == tmp_path / "dl"
    flagged = config_from_args(["--state-dir", str(tmp_path / "s"), "--download-dir",
                                str(tmp_path / "x")], env | {"P2P_BOOTSTRAP": "127.0.0.1:7011"})
    assert flagged.bootstrap == (("127.0.0.1", 7011),) and flagged.download_dir == tmp_path / "x"


def test_daemon_relay_keys_are_checked() -> None:
    from p2p.config import ConfigFile, set_config_value

    empty = ConfigFile.empty()
    assert set_config_value(empty, "daemon.relay", "false").get("daemon.relay") == "off"
    assert set_config_value(empty, "daemon.relay_rate", "5MiB/s").get("daemon.relay_rate") == "5MiB/s"
    assert set_config_value(empty, "daemon.relay_max_circuits", "3").get(
        "daemon.relay_max_circuits") == 3
    with pytest.raises(BadInput, match="on or off"):
        set_config_value(empty, "daemon.relay", "maybe")
    with pytest.raises(BadInput, match="positive integer"):
        set_config_value(empty, "daemon.relay_max_circuits", "0")


def test_daemon_relay_settings_flag_over_environment_over_file(tmp_path: Path) -> None:
    from p2p.config import ConfigFile

    file = ConfigFile(None, {"daemon.relay_max_circuits": 5, "daemon.relay_rate": "1MiB/s"})
    base = ["--state-dir", str(tmp_path)]
    config = parse_daemon(base, {}, file)
    assert config.relay is True  # on by default
    assert config.relay_limits.max_circuits == 5 and config.relay_limits.rate == 1 << 20
    config = parse_daemon([*base, "--relay-max-circuits", "7", "--relay-circuit-bytes", "1GiB"],
                          {"P2P_BOOTSTRAP_RELAY_MAX_CIRCUITS": "6"}, file)
    assert config.relay_limits.max_circuits == 7 and config.relay_limits.circuit_bytes == 1 << 30
    assert parse_daemon(base, {"P2P_BOOTSTRAP_RELAY_MAX_CIRCUITS": "6"}, file
                        ).relay_limits.max_circuits == 6
    assert parse_daemon([*base, "--no-relay"], {}, file).relay is False
    assert parse_daemon(base, {"P2P_BOOTSTRAP_RELAY": "off"}, file).relay is False
    assert parse_daemon(base, {}, ConfigFile(None, {"daemon.relay": "off"})).relay is False
    assert parse_daemon([*base, "--relay-circuit-seconds", "0"], {}, file
                        ).relay_limits.circuit_seconds == 0
    with pytest.raises(BadInput, match="--relay-max-circuits"):
        parse_daemon([*base, "--relay-max-circuits", "0"], {}, file)
    with pytest.raises(BadInput, match="--relay-rate"):
        parse_daemon([*base, "--relay-rate", "fast"], {}, file)
    assert config.node_config().relay is True


def test_lan_discovery_is_on_unless_the_flag_env_or_file_turns_it_off(tmp_path: Path) -> None:
    from p2p.config import ConfigFile as File

    def lan(env: dict[str, str], file: dict[str, str], no_lan: bool = False) -> tuple[bool, bool]:
        s = build_settings(env=env, config=File(None, file), no_lan=no_lan,
                           state_dir=tmp_path / "s")
        return s.lan, s.node_config(long_running=True).lan_discovery

    assert lan({}, {}) == (True, True)
    assert lan({}, {}, no_lan=True) == (False, False)
    assert lan({"P2P_LAN": "off"}, {}) == (False, False)
    assert lan({}, {"lan": "off"}) == (False, False)
    assert lan({"P2P_LAN": "on"}, {"lan": "off"}) == (True, True)
    with pytest.raises(BadInput, match="P2P_LAN"):
        lan({"P2P_LAN": "maybe"}, {})


def test_hole_punching_is_on_unless_the_flag_env_or_file_turns_it_off(tmp_path: Path) -> None:
    from p2p.config import ConfigFile as File

    def punch(env: dict[str, str], file: dict[str, str], no: bool = False) -> tuple[bool, bool]:
        s = build_settings(env=env, config=File(None, file), no_hole_punch=no,
                           state_dir=tmp_path / "s")
        return s.hole_punch, s.node_config(long_running=False).hole_punching

    assert punch({}, {}) == (True, True)
    assert punch({}, {}, no=True) == (False, False)
    assert punch({"P2P_HOLE_PUNCH": "off"}, {}) == (False, False)
    assert punch({}, {"hole_punch": "off"}) == (False, False)
    assert punch({"P2P_HOLE_PUNCH": "on"}, {"hole_punch": "off"}) == (True, True)
    with pytest.raises(BadInput, match="P2P_HOLE_PUNCH"):
        punch({"P2P_HOLE_PUNCH": "maybe"}, {})
