"""Swarm downloads between peers in separate processes (tests/swarm/peer_process.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from p2p.node import Node

from .conftest import MiB, make_file, node_config

RUNNER = Path(__file__).with_name("peer_process.py")
SIZE = 16 * MiB
CHUNKS = SIZE // (64 * 1024)  # 256


class Peer:
    """A runner process and its JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> dict[str, Any]:
        """The next JSON line (callers bound the wait with asyncio.timeout)."""
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            raise AssertionError(f"peer process ended: rc={await self.proc.wait()} {err.decode()[-2000:]}")
        return dict(json.loads(raw))

    async def until(self, event: str) -> dict[str, Any]:
        while (line := await self.line())["event"] != event:
            if line["event"] == "error":
                raise AssertionError(f"peer failed: {line}")
        return line


@contextlib.asynccontextmanager
async def peer_process(*args: str) -> AsyncIterator[Peer]:
    """Run the runner with ``args``; always killed and reaped on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(RUNNER), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield Peer(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()


@contextlib.asynccontextmanager
async def seeders(tmp_path: Path, source: Path, count: int, boot: tuple[str, int],
                  throttle: float = 0.0) -> AsyncIterator[list[dict[str, Any]]]:
    """``count`` seeder processes sharing ``source``; yields their "seeding" lines."""
    async with contextlib.AsyncExitStack() as stack:
        procs = []
        for i in range(count):
            procs.append(await stack.enter_async_context(peer_process(
                "seed", str(tmp_path / f"seed{i}"), str(source),
                "--bootstrap", f"{boot[0]}:{boot[1]}", "--throttle", str(throttle))))
        async with asyncio.timeout(60):
            yield [await p.until("seeding") for p in procs]


def fetch_args(tmp_path: Path, info: list[dict[str, Any]], dest: Path) -> list[str]:
    args = ["fetch", str(tmp_path / "downloader"), info[0]["content_id"], "--dest", str(dest)]
    for s in info:
        args += ["--peer", f"127.0.0.1:{s['port']}"]
    return args


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_file(tmp_path / "src" / "data.bin", SIZE, seed=7)


async def test_three_seeder_processes_one_downloader(tmp_path: Path, source: Path) -> None:
    async with (asyncio.timeout(120), Node(node_config(tmp_path, "boot")) as boot,
                seeders(tmp_path, source, 3, boot.listen_address()) as info):
        assert len({s["content_id"] for s in info}) == 1
        dest = tmp_path / "out.bin"
        async with peer_process(*fetch_args(tmp_path, info, dest)) as dl:
            lines = []
            while (line := await dl.line())["event"] != "done":
                assert line["event"] != "error", line
                lines.append(line)
            assert await dl.proc.wait() == 0
    assert dest.read_bytes() == source.read_bytes()
    assert line["fetched_this_run"] == CHUNKS
    supplied = line["chunks_by_peer"]
    assert sum(supplied.values()) == CHUNKS
    assert set(supplied) <= {s["peer_id"] for s in info}
    assert len(supplied) > 1, supplied
    assert sorted(x["index"] for x in lines if x["event"] == "chunk") == list(range(CHUNKS))


async def test_killed_downloader_resumes_without_refetching(tmp_path: Path, source: Path) -> None:
    # Seeders sleep 20 ms per chunk: about 150 chunks/s from three, so the kill lands mid-way.
    async with (asyncio.timeout(150), Node(node_config(tmp_path, "boot")) as boot,
                seeders(tmp_path, source, 3, boot.listen_address(), throttle=0.02) as info):
        dest = tmp_path / "out.bin"
        args = fetch_args(tmp_path, info, dest)
        reported: set[int] = set()
        async with peer_process(*args) as first:
            started = await first.until("started")
            assert started["chunks"] == CHUNKS and started["held"] == 0
            while len(reported) < CHUNKS // 2:
                line = await first.line()
                assert line["event"] == "chunk", f"download ended before the kill: {line}"
                reported.add(line["index"])
            first.proc.send_signal(signal.SIGKILL)
            assert await first.proc.wait() == -signal.SIGKILL
        assert not dest.exists()
        async with peer_process(*args) as second:
            resumed = await second.until("started")
            chunks = []
            while (line := await second.line())["event"] != "done":
                assert line["event"] != "error", line
                chunks.append(line["index"])
            assert await second.proc.wait() == 0
    assert dest.read_bytes() == source.read_bytes()
    held = resumed["held"]
    # Everything the first run reported verified was written before it was reported; what
    # was not yet committed is re-hashed on resume (PartialDownload.recover), so none of it
    # is fetched again.
    assert held >= len(reported), (held, len(reported))
    assert not reported & set(chunks)
    assert held + line["fetched_this_run"] == CHUNKS
    assert line["fetched_this_run"] == len(chunks)
    assert held < CHUNKS
