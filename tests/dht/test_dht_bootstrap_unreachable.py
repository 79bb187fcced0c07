"""A bootstrap that nobody answers names each address and why, on the DHT's own (fake) clock."""

from __future__ import annotations

import asyncio

import pytest
from dhtnet import FakeClock, config, raw_peer

from p2p.address import format_address
from p2p.dht import DHT
from p2p.errors import BootstrapUnreachable, NetworkError
from p2p.identity import Identity


async def test_silent_bootstrap_nodes_are_each_named_with_the_timeout() -> None:
    clock = FakeClock(10.0)
    cfg = config(monotonic_clock=clock, rpc_timeout=2.0, lookup_stall=0.5)
    async with DHT.open_ctx(Identity.generate(), cfg) as d, raw_peer() as one, raw_peer() as two:
        joining = asyncio.ensure_future(d.bootstrap([one.addr, two.addr]))
        async with asyncio.timeout(5):
            await one.received.get()
            await two.received.get()
        d.protocol.handle_timer(clock.advance(1.5))
        assert not joining.done()  # within the timeout: still waiting
        d.protocol.handle_timer(clock.advance(0.5))
        with pytest.raises(BootstrapUnreachable) as caught:
            async with asyncio.timeout(5):
                await joining
    err = caught.value
    assert isinstance(err, NetworkError) and err.exit_code == 5
    assert err.failures == ((format_address(one.addr), "no answer within 2 s"),
                            (format_address(two.addr), "no answer within 2 s"))
    assert str(err) == (f"could not reach the bootstrap node {format_address(one.addr)} "
                        f"(no answer within 2 s) nor the bootstrap node {format_address(two.addr)} "
                        "(no answer within 2 s)")


async def test_an_unresolvable_name_is_named_with_why() -> None:
    async with DHT.open_ctx(Identity.generate(), config()) as d:
        with pytest.raises(BootstrapUnreachable) as caught:
            async with asyncio.timeout(10):
                await d.bootstrap([("no-such-host.invalid", 7473)])
    ((where, why),) = caught.value.failures
    assert where == "no-such-host.invalid:7473" and why.startswith("cannot resolve no-such-host.invalid")
