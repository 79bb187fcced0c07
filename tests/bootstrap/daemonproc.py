"""Run ``python -m bootstrap`` as a real subprocess and talk to it (UDP, HTTP) from a test.

Not named ``bootstrap*``: this folder is on ``sys.path`` during the tests and must not
shadow the package under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from p2p.dht import DHT, DHTConfig
from p2p.dht.protocol import REQUEST, RESPONSE
from p2p.encoding import pack
from p2p.identity import Identity

START_TIMEOUT = 20.0
"""Seconds to wait for the daemon's first stdout line (a cold import on a loaded machine)."""
LOOPBACK_FLAGS = ("--max-contacts-per-ip", "none")
"""Every test peer shares 127.0.0.1, so the per-IP contact cap is lifted."""


@dataclass
class Daemon:
    """A running daemon subprocess and what it announced."""

    proc: asyncio.subprocess.Process
    stderr_path: Path
    announce: dict[str, Any] = field(default_factory=dict)

    @property
    def addr(self) -> tuple[str, int]:
        host, _, port = self.announce["listen"].rpartition(":")
        return host, int(port)

    @property
    def metrics(self) -> tuple[str, int]:
        host, _, port = self.announce["metrics"].rpartition(":")
        return host, int(port)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` and wait (bounded) for the exit code."""
        self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            return await self.proc.wait()


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("P2P_BOOTSTRAP_") and k != "PYTHONPATH"}
    env.update(extra or {})
    return env


async def spawn(cwd: Path, *args: str, env: dict[str, str] | None = None,
                stderr_name: str = "daemon.stderr") -> tuple[asyncio.subprocess.Process, Path]:
    """Start ``python -m bootstrap ARGS`` with stdout piped and stderr to a file."""
    stderr_path = cwd / stderr_name
    with stderr_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bootstrap", *args, cwd=cwd, env=daemon_env(env),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err,
        )
    return proc, stderr_path


@contextlib.asynccontextmanager
async def running(tmp_path: Path, state_dir: Path, *args: str, metrics: bool = True,
                  env: dict[str, str] | None = None, name: str = "daemon") -> AsyncIterator[Daemon]:
    """A daemon on 127.0.0.1 port 0 with JSON output; killed on exit if still running."""
    argv = ["--listen", "127.0.0.1:0", "--state-dir", str(state_dir), "--log-format", "json",
            *args]
    if metrics:
        argv += ["--metrics", "127.0.0.1:0"]
    proc, stderr_path = await spawn(tmp_path, *argv, env=env, stderr_name=f"{name}.stderr")
    daemon = Daemon(proc, stderr_path)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            line = await proc.stdout.readline()
        assert line, f"daemon exited before listening: {stderr_path.read_text()}"
        daemon.announce = json.loads(line)
        yield daemon
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- HTTP ------------------------------------------------------------------------------------


async def http_get(addr: tuple[str, int], path: str) -> tuple[int, bytes]:
    """One GET; returns (status, body)."""
    return await http_raw(addr, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def http_raw(addr: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as is; returns (status, body)."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(*addr)
        try:
            writer.write(request)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(addr: tuple[str, int]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: (sample name, sorted labels) -> value."""
    status, body = await http_get(addr, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """Sum of every sample called ``name`` (over all label values)."""
    return sum(v for (n, _), v in samples.items() if n == name)


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- DHT peers ---------------------------------------------------------------------------------


def peer_config(boot: tuple[str, int], host: str = "127.0.0.1") -> DHTConfig:
    return DHTConfig(host=host, port=0, bootstrap=(boot,), max_contacts_per_ip=None,
                     rate_limit_per_ip=None)


@contextlib.asynccontextmanager
async def peers(n: int, boot: tuple[str, int], batch: int = 10) -> AsyncIterator[list[DHT]]:
    """``n`` DHT peers that joined through ``boot`` (opened ``batch`` at a time)."""
    nodes: list[DHT] = []
    try:
        for start in range(0, n, batch):
            nodes.extend(await asyncio.gather(*(
                DHT.open(Identity.generate(), peer_config(boot))
                for _ in range(start, min(n, start + batch))
            )))
        yield nodes
    finally:
        await asyncio.gather(*(d.aclose() for d in nodes))


class RawSocket(asyncio.DatagramProtocol):
    """A bare UDP socket: hand-made datagrams out, everything received queued."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait(data)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def ping(self, addr: tuple[str, int], sender_id: bytes, timeout: float = 5.0) -> bytes:
        """Send a DHT ping and await its answer (other datagrams are dropped)."""
        msg_id = os.urandom(20)
        self.send(bytes([REQUEST]) + msg_id + pack(["ping", [sender_id]]), addr)
        async with asyncio.timeout(timeout):
            while True:
                data = await self.received.get()
                if data[:1] == bytes([RESPONSE]) and data[1:21] == msg_id:
                    return data[21:]


@contextlib.asynccontextmanager
async def raw_socket(host: str = "127.0.0.1") -> AsyncIterator[RawSocket]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(RawSocket, local_addr=(host, 0))
    try:
        yield proto
    finally:
        transport.close()
