"""Shared helpers for the terminal app's tests: configs on 127.0.0.1 port 0, bounded waits."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from p2p.node import NodeConfig

Address = tuple[str, int]


def node_config(base: Path, name: str, bootstrap: tuple[Address, ...] = ()) -> NodeConfig:
    """A node on 127.0.0.1, any free port, with its own state and download folders."""
    return NodeConfig(state_dir=base / name / "state", host="127.0.0.1", port=0,
                      bootstrap=bootstrap, max_contacts_per_ip=None,
                      download_dir=base / name / "downloads")


async def wait_until(pilot: Pilot[object], condition: Callable[[], bool], seconds: float = 20,
                     step: float = 0.05) -> None:
    """Let the app run until ``condition()`` holds; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not condition():
            await pilot.pause(step)


def random_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path
