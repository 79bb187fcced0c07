"""Shared helpers for the terminal app's tests: configs on 127.0.0.1 port 0, bounded waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from testbed import make_file, node_config
from textual.pilot import Pilot

__all__ = ["make_file", "node_config", "wait_until"]


async def wait_until(pilot: Pilot[object], condition: Callable[[], bool], seconds: float = 20,
                     step: float = 0.05) -> None:
    """Let the app run until ``condition()`` holds; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not condition():
            await pilot.pause(step)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path
