"""Gathering reachability evidence: the I/O around the pure :mod:`p2p.reachability`.

One check, with a node's DHT and TCP server (docs/PROTOCOL.md, Reachability):

1. ask each server (bootstrap nodes, then routing-table contacts) where it sees our UDP
   socket (``identify``);
2. ask it to dial our TCP port back at that IP (``dialback``), and each observer endpoint it
   names where it sees us (a second observer, for the NAT's mapping behaviour);
3. wait for the authenticated inbound connections from that server's peer id, which our own
   TCP server reports (:meth:`DialBackWatch.inbound`);
4. :func:`p2p.reachability.judge` the lot.

The serving side is :func:`dialer`: what a node does when another asks it to dial back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .address import Address, format_address, is_unspecified, primary_ip
from .dht.protocol import DIALBACK_ACCEPTED
from .dht.routing import ip_version
from .errors import IntegrityError, NetworkError, RemoteProtocolError
from .identity import Identity, PeerId
from .reachability import DialBack, Mapping, Outcome, Reachability, judge
from .wire.transport import connect

log = logging.getLogger(__name__)

DIALBACK_WAIT = 3.0
"""Seconds we wait for a server's dial-backs after it accepted: a TCP and Noise handshake
across a continent take well under a second; a NAT that drops the SYN never answers, so the
wait is what a "not reachable" verdict costs."""
DIALBACK_TIMEOUT = 2.5
"""Seconds one dial-back (TCP connect and handshake) may take on the serving side, below
:data:`DIALBACK_WAIT` so that the requester's wait covers it."""
MAX_SERVERS = 4
"""Servers asked in one check: two confirm, the others cover a server that is down or
refuses."""
DIAL_SOURCES = 2
"""Dials a serving node makes per request, each from a fresh source port (the second one from
its second address, when it has one): so that a network with one bootstrap still gets two
confirmations, and a NAT that lets in one remote port only is not mistaken for open."""


class DialBackWatch:
    """Inbound connections by peer id, for the dial-backs a check is waiting on."""

    def __init__(self) -> None:
        self._waiting: dict[PeerId, tuple[list[Address], asyncio.Event]] = {}

    def expect(self, peer: PeerId) -> None:
        """Start collecting ``peer``'s inbound connections."""
        self._waiting.setdefault(peer, ([], asyncio.Event()))

    def inbound(self, peer: PeerId, address: Address) -> None:
        """Our TCP server authenticated ``peer`` on a connection from ``address``."""
        entry = self._waiting.get(peer)
        if entry is not None:
            entry[0].append(address)
            entry[1].set()

    async def wait(self, peer: PeerId, count: int, timeout: float,
                   exclude: Address) -> tuple[Address, ...]:
        """Distinct sources of ``peer``'s inbound connections (never ``exclude``, the address we
        sent to) once ``count`` arrived or ``timeout`` passed; stops collecting."""
        sources, event = self._waiting[peer]
        try:
            async with asyncio.timeout(timeout):
                while len(set(sources) - {exclude}) < count:
                    event.clear()
                    await event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting.pop(peer, None)
        return tuple(dict.fromkeys(s for s in sources if s != exclude))

    def forget(self, peer: PeerId) -> None:
        """Stop collecting ``peer``'s connections."""
        self._waiting.pop(peer, None)


def local_hosts(bound: Sequence[str], servers: Sequence[Address]) -> list[str]:
    """This host's own IPs as far as they matter here: the bound ones (not wildcards), and
    the source address the kernel picks toward the default route and toward each server.
    Never an address someone told us (an observed one would hide a NAT)."""
    found = [h for h in bound if not is_unspecified(h)]
    for version in (4, 6):
        ip = primary_ip(version)
        if ip is not None:
            found.append(ip)
    for host, _port in servers:
        ip = primary_ip(ip_version(host), toward=host)
        if ip is not None:
            found.append(ip)
    return list(dict.fromkeys(found))


_ERRORS = (NetworkError, RemoteProtocolError, IntegrityError)


async def _ask(dht: Any, server: Address, port: int, watch: DialBackWatch,
               mappings: list[Mapping], wait: float) -> DialBack:
    """Steps 1-3 for one server."""
    try:
        pubkey, observed, local = await dht.observe(server)
    except _ERRORS:
        return DialBack("?", server, Outcome.NO_ANSWER, 0)
    mappings.append(Mapping(server, observed, local))
    peer = PeerId(pubkey)
    watch.expect(peer)
    try:
        status, attempts, observers = await dht.request_dialback(server, (observed[0], port))
    except _ERRORS:
        watch.forget(peer)
        return DialBack(str(peer), server, Outcome.NO_ANSWER, 0)
    for extra in observers:
        try:
            _key, seen, local_seen = await dht.observe(extra)
        except _ERRORS:
            continue
        mappings.append(Mapping(extra, seen, local_seen))
    if status != DIALBACK_ACCEPTED or attempts < 1:
        watch.forget(peer)
        return DialBack(str(peer), server, Outcome.REFUSED, 0)
    sources = await watch.wait(peer, attempts, wait, server)
    outcome = Outcome.REACHED if sources else Outcome.NOT_REACHED
    return DialBack(str(peer), server, outcome, attempts, sources)


async def check(dht: Any, port: int, local_hosts: Sequence[str], servers: Sequence[Address],
                watch: DialBackWatch, wait: float = DIALBACK_WAIT) -> Reachability:
    """Run one check against ``servers`` (at most :data:`MAX_SERVERS`, in parallel) for our TCP
    ``port``; ``local_hosts`` are this host's IPs. Never raises for the network's failures:
    they are evidence."""
    picked = list(dict.fromkeys(servers))[:MAX_SERVERS]
    mappings: list[Mapping] = []
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_ask(dht, s, port, watch, mappings, wait)) for s in picked]
    verdict = judge(local_hosts, mappings, [t.result() for t in tasks])
    if not picked:
        return Reachability(verdict.reachability, verdict.nat,
                       ("no DHT node to ask (no --bootstrap, empty routing table)",
                        *verdict.evidence))
    return verdict


def dialer(identity: Identity, second_source: str | None, agent: str
           ) -> Callable[[Address, bytes], Coroutine[Any, Any, None]]:
    """What a node runs for an accepted ``dialback``: :data:`DIAL_SOURCES` TCP connections to
    ``target``, each from a fresh port (the second from ``second_source`` when given), each
    running the handshake expecting ``pubkey`` and closed at once."""

    async def one(target: Address, peer: PeerId, source: str | None) -> None:
        try:
            conn = await connect(target[0], target[1], identity, expected_peer=peer,
                                 agent=agent, timeout=DIALBACK_TIMEOUT, source=source)
        except (NetworkError, RemoteProtocolError, OSError) as exc:
            log.debug("dial-back to %s failed: %s", format_address(target), exc)
            return
        await conn.aclose("dial-back done")

    async def dial(target: Address, pubkey: bytes) -> None:
        peer = PeerId(pubkey)
        second = second_source
        if second is not None and ip_version(second) != ip_version(target[0]):
            second = None  # that address cannot reach this family: a second fresh port
        sources = [None, second][:DIAL_SOURCES]
        async with asyncio.TaskGroup() as group:
            for source in sources:
                group.create_task(one(target, peer, source))

    return dial
