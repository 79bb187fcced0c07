"""The two programs of the hole punch lab test (test_punch_netns.py), run in namespaces.

``hub HOST PORT [DELAY]``: the public stand-in for a relay. Pairs the first two TCP
connections it gets, tells each where it saw the other and itself (one line: ``peer_ip
peer_port own_ip own_port``), then splices their bytes, each forwarded ``DELAY`` seconds
after it arrived (latency, which the punch's timing must make up for). Prints ``up`` once
listening.

``peer ROLE SEED PEER_SEED LAN_IP HUB_HOST HUB_PORT [public]``: a node of the punch
(``public``: it says it is reachable, so the other side dials it). Listens (the
chunk server) on 0.0.0.0:7473; connects to the hub from that same port; runs Noise XX with the
other peer through the hub (the relayed session, the dialler as initiator); punches with
:func:`p2p.wire.punch.punch`, the relayed session as the signal; on success a Ping/Pong goes
over the direct connection. Prints one JSON line: ``{"event": "punched", ...}`` or
``{"event": "failed", "reason": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from p2p.address import format_address
from p2p.identity import Identity
from p2p.testing import MemorySource
from p2p.wire.errors import ClosedByUs, ConnectionLost
from p2p.wire.messages import HolePunchConnect, HolePunchSync, Ping, Pong
from p2p.wire.punch import PunchChannel, PunchFailed, Role, punch
from p2p.wire.server import Server
from p2p.wire.transport import Connection, bound_socket, secure

PORT = 7473


async def hub(host: str, port: int, delay: float) -> None:
    waiting: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    paired = asyncio.Event()
    pumps: list[asyncio.Task[None]] = []

    loop = asyncio.get_running_loop()

    def forward(dst: asyncio.StreamWriter, data: bytes) -> None:
        if not dst.is_closing():
            dst.write(data)

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if delay > 0:
                    loop.call_later(delay, forward, dst, data)  # in order: equal delays
                else:
                    dst.write(data)
                    await dst.drain()
        except OSError:
            pass
        finally:
            loop.call_later(delay, dst.close)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        waiting.append((reader, writer))
        if len(waiting) != 2:
            return
        (r1, w1), (r2, w2) = waiting
        seen1, seen2 = w1.get_extra_info("peername")[:2], w2.get_extra_info("peername")[:2]
        w1.write(f"{seen2[0]} {seen2[1]} {seen1[0]} {seen1[1]}\n".encode())
        w2.write(f"{seen1[0]} {seen1[1]} {seen2[0]} {seen2[1]}\n".encode())
        pumps.extend((asyncio.create_task(pump(r1, w2)), asyncio.create_task(pump(r2, w1))))
        paired.set()

    server = await asyncio.start_server(handle, host, port)
    print("up", flush=True)
    async with server:
        await paired.wait()
        await asyncio.gather(*pumps)


async def read_line(loop: asyncio.AbstractEventLoop, sock: object) -> str:
    """One line from a raw socket, byte by byte: not one byte of the Noise stream after it."""
    out = bytearray()
    while not out.endswith(b"\n"):
        byte = await loop.sock_recv(sock, 1)  # type: ignore[arg-type]
        if not byte:
            raise ConnectionLost("the hub closed the connection")
        out += byte
    return out.decode().strip()


async def peer(role: Role, seed: bytes, peer_seed: bytes, lan_ip: str, hub_host: str,
               hub_port: int, public: bool) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    identity, other = Identity.from_seed(seed), Identity.from_seed(peer_seed)
    server = Server(identity, MemorySource())
    await server.start("0.0.0.0", PORT)
    sock = bound_socket(hub_host, PORT)
    async with asyncio.timeout(10):
        await loop.sock_connect(sock, (hub_host, hub_port))
        peer_ip, peer_port, own_ip, own_port = (await read_line(loop, sock)).split()
        relayed = await secure(sock, identity, initiator=role is Role.DIALLER,
                               expected_peer=other.peer_id)
    channel = PunchChannel(relayed.send)

    async def read_relayed(conn: Connection) -> None:
        try:
            async for msg in conn:
                if isinstance(msg, HolePunchConnect | HolePunchSync):
                    channel.deliver(msg)
        finally:
            channel.close()

    reader = asyncio.create_task(read_relayed(relayed))
    started = time.monotonic()
    try:
        direct = await punch(role, listen_port=PORT, identity=identity,
                             expected_peer=other.peer_id, signal=channel,
                             own_addrs=[(own_ip, int(own_port)), (lan_ip, PORT)],
                             peer_observed=[(peer_ip, int(peer_port))], public=public,
                             listener=server)
    except PunchFailed as exc:
        return {"event": "failed", "reason": exc.reason, "rounds": exc.rounds,
                "attempts": exc.attempts, "seconds": time.monotonic() - started}
    finally:
        await relayed.aclose()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    seconds = time.monotonic() - started
    async with asyncio.timeout(10):
        if role is Role.DIALLER:
            await direct.send(Ping(42))
            echoed = await direct.receive() == Pong(42)
        else:
            echoed = await direct.receive() == Ping(42)
            await direct.send(Pong(42))
            try:
                await direct.receive()  # until the dialler closes
            except (ConnectionLost, ClosedByUs):
                pass
    result = {"event": "punched", "peer": str(direct.remote_peer), "me": str(identity.peer_id),
              "local": format_address(direct.local_address),
              "remote": format_address(direct.remote_address), "echoed": echoed,
              "seconds": seconds}
    await direct.aclose()
    await server.aclose()
    return result


def main(argv: list[str]) -> None:
    match argv:
        case ["hub", host, port, *delay] if len(delay) <= 1:
            asyncio.run(hub(host, int(port), float(delay[0]) if delay else 0.0))
        case ["peer", role, seed, peer_seed, lan_ip, hub_host, hub_port, *flag] \
                if flag in ([], ["public"]):
            result = asyncio.run(peer(Role(role), bytes.fromhex(seed), bytes.fromhex(peer_seed),
                                      lan_ip, hub_host, int(hub_port), flag == ["public"]))
            print(json.dumps(result), flush=True)
        case _:
            raise SystemExit(f"usage: {__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
