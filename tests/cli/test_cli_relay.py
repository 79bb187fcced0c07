"""``p2p serve --relay`` as a person runs it: a real process that takes reservations."""

from __future__ import annotations

import asyncio

from cliproc import CLI

from p2p.address import parse_address
from p2p.identity import Identity
from p2p.wire.messages import RelayCode, RelayStatus, Reserve
from p2p.wire.transport import connect


async def reserve(address: str) -> RelayStatus:
    host, port = parse_address(address, what="relay")
    conn = await connect(host, port, Identity.generate(), first=(Reserve(),))
    try:
        async with asyncio.timeout(30):
            status = await conn.receive()
    finally:
        await conn.aclose()
    assert isinstance(status, RelayStatus)
    return status


async def test_serve_relays_only_when_asked(cli: CLI) -> None:
    relaying = cli.start("serve", "--relay", "--json", *cli.node_args("relay"))
    info = relaying.json()
    assert info["relay"] is True
    status = await reserve(info["listen"])
    assert status.code == RelayCode.OK and status.ttl == 3600
    plain = cli.start("serve", "--json", *cli.node_args("plain"))
    info = plain.json()
    assert info["relay"] is False
    assert (await reserve(info["listen"])).code == RelayCode.PERMISSION_DENIED
    assert relaying.stop() == 0 and plain.stop() == 0
