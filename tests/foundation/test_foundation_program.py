"""How a node names the process that holds a state directory (``already running (pid N,
p2p serve)``): the command word, not an option's value before it."""

from __future__ import annotations

import sys

import pytest

from p2p.node import _program


@pytest.mark.parametrize(("argv", "name"), [
    (["/venv/bin/p2p", "serve"], "p2p serve"),
    (["/venv/bin/p2p", "--state-dir", "state/D", "serve", "--listen", "0.0.0.0:7473"],
     "p2p serve"),
    (["/venv/bin/p2p", "--listen", "127.0.0.1:0", "--json", "fetch", "p2pc1abc"], "p2p fetch"),
    (["/repo/p2p/cli/__main__.py", "--state-dir=../x", "share", "/data"], "p2p share"),
    (["/venv/bin/p2p-tui", "--state-dir", "my-state"], "p2p-tui"),
    (["/venv/bin/p2p"], "p2p"),
])
def test_the_command_word_names_the_process(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                            name: str) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    assert _program() == name
