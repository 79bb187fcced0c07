"""Honest peers for the adversarial tests: real ``p2p`` processes and real nodes on 127.0.0.1.

Attackers come from :mod:`adversarial.hostile` (written from docs/PROTOCOL.md only); the
honest side is the code under test, started here. Every process is killed and every node
closed when its context ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import MiB, make_file, node_config

__all__ = [
    "CliResult",
    "MiB",
    "address",
    "cli",
    "cli_process",
    "fetch_args",
    "make_file",
    "node_config",
    "share_args",
]


def clean_env() -> dict[str, str]:
    """The environment without any P2P_* setting of the person running the tests."""
    return {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}


@dataclass
class CliResult:
    """A finished ``p2p`` command."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def completed(self) -> dict[str, Any]:
        """The ``completed`` event of a ``fetch --json`` (fails the test if there is none)."""
        done = [x for x in self.lines() if x.get("event") == "completed"]
        assert done, f"no completed event: exit {self.code}; stderr: {self.stderr[-2000:]}"
        return done[-1]


async def cli(*args: str, cwd: Path, timeout: float = 60.0) -> CliResult:
    """Run ``python -m p2p.cli ARGS`` to its end (killed if it outlives ``timeout``)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2p.cli", *args, cwd=cwd, env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)


class CliProcess:
    """A long-running ``p2p`` command (``share``, ``serve``) and its JSON stdout lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def json(self) -> dict[str, Any]:
        """The next stdout line as JSON (callers bound the wait)."""
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            raise AssertionError(f"p2p ended: {await self.proc.wait()}: {err.decode()[-2000:]}")
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj


@contextlib.asynccontextmanager
async def cli_process(*args: str, cwd: Path) -> AsyncIterator[CliProcess]:
    """Start ``python -m p2p.cli ARGS``; killed and reaped when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2p.cli", *args, cwd=cwd, env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        yield CliProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()


def fetch_args(state: Path, target: str, dest: Path, peers: Sequence[tuple[str, int]] = (),
               bootstrap: Sequence[tuple[str, int]] = (), timeout: float = 10) -> list[str]:
    """``fetch TARGET -o DEST --json`` from a fresh state dir, with ``--peer``/``--bootstrap``."""
    args = ["fetch", target, "-o", str(dest), "--json", "--state-dir", str(state),
            "--listen", "127.0.0.1:0", "--timeout", str(timeout)]
    for host, port in peers:
        args += ["--peer", f"{host}:{port}"]
    for host, port in bootstrap:
        args += ["--bootstrap", f"{host}:{port}"]
    return args


def share_args(state: Path, source: Path, bootstrap: Sequence[tuple[str, int]] = ()) -> list[str]:
    """``share SOURCE --json`` from state dir ``state`` on 127.0.0.1, any port."""
    args = ["share", str(source), "--json", "--state-dir", str(state), "--listen", "127.0.0.1:0"]
    for host, port in bootstrap:
        args += ["--bootstrap", f"{host}:{port}"]
    return args


def address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a tuple."""
    host, _, port = text.rpartition(":")
    return host, int(port)
