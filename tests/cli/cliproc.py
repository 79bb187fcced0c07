"""Real ``p2p`` processes for the command-line tests (used through the fixtures in conftest).

Every process is started through the ``cli`` fixture, which kills whatever is
still running at teardown. Output is read line by line by a reader thread into a
queue, and every wait is a bounded ``queue.get(timeout=...)``: no sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from testbed import make_file

WAIT = 30.0
"""Longest wait for one expected line or exit."""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without any P2P_* setting inherited from the person running the tests,
    and with LAN discovery off unless ``extra`` turns it on: nodes of unrelated tests on this
    host's own network must not find each other (the LAN tests run in namespaces)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2P_")}
    env["P2P_LAN"] = "off"
    env.update(extra or {})
    return env


__all__ = ["CLI", "Proc", "make_file"]


class Proc:
    """A running ``p2p`` process whose stdout lines arrive in a queue."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, env=env, cwd=cwd, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.lines), daemon=True),
            threading.Thread(target=self._drain, args=(self.popen.stderr,), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: Any, out: queue.Queue[str | None]) -> None:
        for line in stream:
            self.stdout.append(line)
            out.put(line)
        out.put(None)

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self.stderr.append(line)

    def line(self, timeout: float = WAIT) -> str:
        """The next stdout line; fails if the process ends or nothing comes in time."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output within {timeout} s from {self.argv}; stderr: {self.err()}")
        if line is None:
            self.popen.wait(timeout=WAIT)
            pytest.fail(f"{self.argv} exited {self.popen.returncode} early; stderr: {self.err()}")
        return line

    def json(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next stdout line, parsed as one JSON object."""
        obj = json.loads(self.line(timeout))
        assert isinstance(obj, dict)
        return obj

    def json_until(self, accept: Callable[[dict[str, Any]], bool],
                   timeout: float = WAIT) -> dict[str, Any]:
        """Read JSON lines until ``accept`` says yes (overall deadline ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.json(max(0.1, deadline - time.monotonic()))
            if accept(obj):
                return obj

    def send(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        """Exit code, once the process has ended and its output is read."""
        code = self.popen.wait(timeout=timeout)
        self._close_pipes(timeout)
        return code

    def _close_pipes(self, timeout: float) -> None:
        for t in self._readers:
            t.join(timeout)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the process and return its exit code."""
        self.send(signum)
        return self.wait()

    def kill(self) -> None:
        """Kill the process if it still runs; release its pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=WAIT)
        self._close_pipes(WAIT)

    def err(self) -> str:
        return "".join(self.stderr)[-3000:]

    def last_json(self) -> dict[str, Any]:
        """The last stdout line as JSON (after :meth:`wait`)."""
        obj = json.loads(self.stdout[-1])
        assert isinstance(obj, dict)
        return obj


class CLI:
    """Starts ``python -m p2p.cli`` processes; kills every one still running at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[Proc] = []

    def argv(self, args: Sequence[str], prefix: Sequence[str] = ()) -> list[str]:
        return [*prefix, sys.executable, "-m", "p2p.cli", *args]

    def node_args(self, name: str, listen: str = "127.0.0.1:0") -> list[str]:
        """``--state-dir`` of node ``name`` under tmp_path, and ``--listen``."""
        return ["--state-dir", str(self.tmp / "state" / name), "--listen", listen]

    def start(self, *args: str, prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> Proc:
        proc = Proc(self.argv(args, prefix), clean_env(env), self.tmp)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = WAIT, env: dict[str, str] | None = None,
            prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(args, prefix), capture_output=True, text=True,
                              timeout=timeout, env=clean_env(env), cwd=self.tmp, check=False)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
