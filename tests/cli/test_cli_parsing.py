"""Fast tests of the command line's pure parts: addresses, sizes, settings, the exit-code map."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2p.address import format_address, parse_address
from p2p.cli import app, control
from p2p.cli.demo import parse_size
from p2p.errors import (
    BadInput,
    IntegrityError,
    NetworkError,
    NotFound,
    StoreError,
    UnsafePath,
    WrongPublisher,
)
from p2p.node import DEFAULT_PORT
from p2p.settings import build_settings


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:7473", ("127.0.0.1", 7473)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9000", ("::1", 9000)),
    ("[2001:db8::1]:1", ("2001:db8::1", 1)),
    ("10.1.2.3", ("10.1.2.3", DEFAULT_PORT)),
    ("[::]", ("::", DEFAULT_PORT)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, default_port=DEFAULT_PORT) == expected


@pytest.mark.parametrize("text", ["1.2.3.4:x", "1.2.3.4:70000", "::1:80", "[::1", "[::1]x", ":80"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(BadInput):
        parse_address(text, default_port=DEFAULT_PORT)


def test_format_address_brackets_v6() -> None:
    assert format_address(("::1", 5)) == "[::1]:5"
    assert format_address(("10.0.0.1", 5)) == "10.0.0.1:5"


@pytest.mark.parametrize(("text", "size"), [
    ("64M", 64 << 20), ("1G", 1 << 30), ("500k", 500 << 10), ("1.5GiB", 3 << 29), ("4096", 4096),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "12Q", "-1M", "M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_settings_options_win_over_environment(tmp_path: Path) -> None:
    env = {"P2P_STATE_DIR": str(tmp_path / "env"), "P2P_LISTEN": "127.0.0.1:1",
           "P2P_BOOTSTRAP": "10.0.0.1:2, 10.0.0.2:3", "P2P_ANNOUNCE_ADDR": "192.0.2.1:4"}
    from_env = build_settings(state_dir=None, listen=None, bootstrap=[], announce=[], json=False,
                              verbose=0, quiet=False, env=env)
    assert from_env.state_dir == tmp_path / "env"
    assert from_env.listen == ("127.0.0.1", 1) and from_env.listen_given
    assert from_env.bootstrap == (("10.0.0.1", 2), ("10.0.0.2", 3))
    assert from_env.announce == (("192.0.2.1", 4),)
    given = build_settings(state_dir=str(tmp_path / "opt"), listen="[::1]:0",
                           bootstrap=["10.9.9.9:5"], announce=[], json=True, verbose=2,
                           quiet=False, env=env)
    assert given.state_dir == tmp_path / "opt"
    assert given.listen == ("::1", 0)
    assert given.bootstrap == (("10.9.9.9", 5),)
    defaults = build_settings(state_dir=None, listen=None, bootstrap=[], announce=[], json=False,
                              verbose=0, quiet=True, env={})
    assert defaults.listen == ("0.0.0.0", DEFAULT_PORT) and not defaults.listen_given
    assert defaults.verbosity == -1
    # Short-lived commands take any free port unless --listen was given.
    assert defaults.node_config(long_running=False).port == 0
    assert defaults.node_config(long_running=True).port == DEFAULT_PORT
    with pytest.raises(BadInput):
        build_settings(state_dir=None, listen=None, bootstrap=["0.0.0.0:1"], announce=[],
                       json=False, verbose=0, quiet=False, env={})


def test_shared_options_before_and_after_the_command(tmp_path: Path) -> None:
    args, run = app.parse(["--json", "--bootstrap", "10.0.0.1:1", "fetch", "p2pc1x",
                           "--bootstrap", "10.0.0.2:2", "-v", "--state-dir", str(tmp_path)])
    assert args.command == "fetch"
    assert run.settings.json
    assert run.settings.state_dir == tmp_path
    assert run.settings.bootstrap == (("10.0.0.1", 1), ("10.0.0.2", 2))
    assert run.settings.verbosity == 1
    _, run = app.parse(["fetch", "p2pc1x", "--json"])
    assert run.settings.json


def test_one_map_from_errors_to_exit_codes() -> None:
    code = app.exit_code
    assert code(BadInput("x")) == 2
    assert code(UnsafePath("x")) == 4
    assert code(NotFound("x")) == 3
    assert code(IntegrityError("x")) == 4
    assert code(WrongPublisher("x")) == 4
    assert code(NetworkError("x")) == 5
    assert code(control.NoRunningNode("x")) == 5
    assert code(StoreError("x")) == 6  # a local problem, not a bug
    assert code(RuntimeError("bug")) == 1
    assert code(KeyboardInterrupt()) == 130
    assert code(app.Interrupted(signal.SIGINT, serving=False)) == 130
    assert code(app.Interrupted(signal.SIGTERM, serving=False)) == 143
    assert code(app.Interrupted(signal.SIGINT, serving=True)) == 0
    assert code(control.ControlError("refused", 3)) == 3
    assert code(ExceptionGroup("one", [NotFound("x")])) == 3


def test_every_front_end_uses_the_one_exit_code_map() -> None:
    """The daemon and the terminal app exit with the same codes as the command line."""
    import bootstrap.daemon
    import tui.app
    from p2p import exit_code_for

    assert bootstrap.daemon.exit_code is exit_code_for
    assert tui.app.exit_code_for is exit_code_for
    assert exit_code_for(NotFound("x")) == 3  # the daemon used to exit 1 for these two
    assert exit_code_for(IntegrityError("x")) == 4


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` sets logger levels for the process; put them back for the tests that follow."""
    names = ("p2p", "kademlia", "rpcudp", "p2p.dht", "asyncio")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_main_prints_one_plain_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert app.main(["fetch", "nonsense", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("p2p: error: not a content id")
    assert app.main(["--help"]) == 0
    assert "exit codes:" in capsys.readouterr().out


def test_control_query_without_a_node_says_so(tmp_path: Path) -> None:
    with pytest.raises(control.NoRunningNode, match="no node is running"):
        asyncio.run(control.query(tmp_path, {"cmd": "peers"}))


def test_control_socket_with_a_long_state_dir_path(tmp_path: Path) -> None:
    """Unix socket paths are limited to ~107 bytes; a deep state dir still works."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)

    async def go() -> object:
        class FakeNode:
            class config:
                state_dir = deep

            closing = False

            def peers(self) -> list[object]:
                return []

        async with control.control_endpoint(FakeNode()) as path:  # type: ignore[arg-type]
            assert path is not None
            assert path.stat().st_mode & 0o777 == 0o600
            return await control.query(deep, {"cmd": "peers"})

    assert asyncio.run(go()) == []
    assert not (deep / "control.sock").exists()


def test_output_json_line_is_compact() -> None:
    from p2p.cli.output import to_json
    assert json.loads(to_json({"path": Path("/x"), "n": 1})) == {"path": "/x", "n": 1}
