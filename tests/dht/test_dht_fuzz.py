"""Fuzzed datagrams never raise in the event loop, never close the socket, and lookups go on."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from dhtnet import LOOPBACK, raw_peer, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.dht import DHT
from p2p.dht.protocol import REQUEST, RESPONSE, RPC_ARITY
from p2p.encoding import pack
from p2p.identity import Identity

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=40)
    | st.text(max_size=20) | st.sampled_from([b"\0" * 20, "127.0.0.1", 70000, 0, -1]),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return draw(st.binary(max_size=200))
    msg_id = draw(st.binary(min_size=20, max_size=20))
    if shape == 1:
        name = draw(st.sampled_from(sorted(RPC_ARITY)) | st.text(max_size=10))
        args = draw(st.lists(values, max_size=4))
        if draw(st.booleans()):
            args = [b"\x07" * 20, *args]
        try:
            return bytes([REQUEST]) + msg_id + pack([name, args])
        except (TypeError, OverflowError):
            return bytes([REQUEST]) + msg_id
    if shape == 2:
        try:
            return bytes([RESPONSE]) + msg_id + pack(draw(values))
        except (TypeError, OverflowError):
            return bytes([RESPONSE]) + msg_id
    return bytes([draw(st.sampled_from([REQUEST, RESPONSE, 0, 1]))]) + msg_id + draw(st.binary(max_size=100))


def test_fuzzed_datagrams() -> None:
    loop = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    cfg = LOOPBACK.__class__(max_contacts_per_ip=None, rate_limit_per_ip=None,
                             rpc_timeout=0.1, lookup_stall=0.1)

    async def open_pair() -> tuple[DHT, DHT]:
        a = await DHT.open(Identity.generate(), cfg)
        b = await DHT.open(Identity.generate(), cfg.__class__(
            **{**cfg.__dict__, "bootstrap": (("127.0.0.1", a.port),)}))
        return a, b

    a, b = loop.run_until_complete(open_pair())
    try:
        source = ("127.0.0.1", b.port)  # datagrams appear to come from an honest node

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(datagrams(), min_size=1, max_size=5))
        def feed(batch: list[bytes]) -> None:
            async def deliver() -> None:  # as the transport does: inside the running loop
                for data in batch:
                    a.protocol.datagram_received(data, source)

            loop.run_until_complete(deliver())

        feed()

        async def afterwards() -> None:
            # the same over the real socket, then an honest exchange proves it is alive
            async with raw_peer() as raw:
                for data in (b"", b"\x10" * 21, os.urandom(9000), request("ping", [1, 2, 3])):
                    raw.send(data, ("127.0.0.1", a.port))
                raw.send(request("ping", [b"\x07" * 20]), ("127.0.0.1", a.port))
                async with asyncio.timeout(5):
                    reply, _ = await raw.received.get()
                assert reply[0] == RESPONSE
            cid = os.urandom(32)
            assert await b.announce(cid) >= 1
            c = await DHT.open(Identity.generate(), cfg.__class__(
                **{**cfg.__dict__, "bootstrap": (("127.0.0.1", a.port),)}))
            try:
                found = await c.find_providers(cid)
                assert [r.peer_id for r in found] == [b._identity.peer_id]
            finally:
                await c.aclose()

        loop.run_until_complete(afterwards())
        assert not a.protocol.transport.is_closing()
        assert a.summary().rejected.get("internal_error", 0) == 0
    finally:
        loop.run_until_complete(a.aclose())
        loop.run_until_complete(b.aclose())
        loop.close()
    assert errors == []
