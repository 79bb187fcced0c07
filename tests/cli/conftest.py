"""Fixtures for the command-line tests: every process started here is killed at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cliproc import CLI


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    runner = CLI(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def bootstrap(cli: CLI) -> str:
    """A running ``p2p serve`` with an empty store (a DHT bootstrap node); its HOST:PORT."""
    proc = cli.start("serve", "--json", *cli.node_args("bootstrap"))
    info = proc.json()
    assert info["shares"] == 0
    return str(info["listen"])
