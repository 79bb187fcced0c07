"""Shared helpers for the DHT tests: real UDP nodes on 127.0.0.1 and ::1 (port 0), a fake clock
and hand-made datagrams."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

from p2p import testing
from p2p.dht import DHT, DHTConfig
from p2p.dht.protocol import REQUEST, RESPONSE
from p2p.encoding import pack, unpack
from p2p.identity import Identity

LOOPBACK = DHTConfig(max_contacts_per_ip=None, rate_limit_per_ip=None)
"""Every test node shares 127.0.0.1, so the per-IP caps are lifted."""
V4, V6 = "127.0.0.1", "::1"
DUAL = (V4, V6)


class FakeClock(testing.FakeClock):
    """:class:`p2p.testing.FakeClock` starting at a plausible Unix time, so that it can stand
    in for ``DHTConfig.wall_clock`` (record expiry) as well as the monotonic clock."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        super().__init__(start)


def config(**overrides: Any) -> DHTConfig:
    return dataclasses.replace(LOOPBACK, **overrides)


@contextlib.asynccontextmanager
async def network(n: int, **overrides: Any) -> AsyncIterator[list[DHT]]:
    """``n`` nodes; node 0 is the bootstrap, the others join it (a few at a time)."""
    nodes: list[DHT] = []
    try:
        first = await DHT.open(Identity.generate(), config(**overrides))
        nodes.append(first)
        boot = first.listen_addresses()[:1]
        for start in range(1, n, 10):
            batch = await asyncio.gather(*(
                DHT.open(Identity.generate(), config(bootstrap=boot, **overrides))
                for _ in range(start, min(n, start + 10))
            ))
            nodes.extend(batch)
        yield nodes
    finally:
        await asyncio.gather(*(d.aclose() for d in nodes))




def record_loop_errors(errors: list[dict[str, Any]]) -> None:
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket for hand-crafted datagrams; replies are queued."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def raw_peer(protocol: type[RawPeer] = RawPeer, host: str = V4,
                   **kwargs: Any) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: protocol(**kwargs), local_addr=(host, 0)
    )
    try:
        yield proto
    finally:
        transport.close()


def request(name: str, args: list[Any], msg_id: bytes | None = None) -> bytes:
    return bytes([REQUEST]) + (msg_id or os.urandom(20)) + pack([name, args])


def response(msg_id: bytes, value: Any) -> bytes:
    return bytes([RESPONSE]) + msg_id + pack(value)


def parse_request(data: bytes) -> tuple[bytes, str, list[Any]]:
    assert data[0] == REQUEST
    name, args = unpack(data[21:], max_bin=4096)
    return data[1:21], name, args
