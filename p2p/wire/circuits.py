"""Relay rules: reservations, circuits and their limits, as a pure object.

The relay's asyncio shell (:mod:`p2p.wire.relay`) asks :class:`RelayTable` before it does
anything: may this peer reserve, may this dialler reach that target, which circuits and
reservations are past their time. Every call is given ``now``; nothing here reads a clock,
opens a socket or knows about sessions. :class:`KeepaliveRules` is the same for the other
side: when a node holding a reservation pings its relay and refreshes the reservation.

Limits follow libp2p's Circuit Relay v2 (docs/PROTOCOL.md, Relays, has every value and
why), except the per-circuit time and bytes: ours default to what a relayed fetch of
several GiB needs, not libp2p's 2 min and 128 KiB signalling budget.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections import Counter
from dataclasses import dataclass, field

from ..identity import PeerId
from .messages import TOKEN_LEN, RelayCode

__all__ = [
    "ACCEPT_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_TIMEOUT",
    "MIN_REFRESH",
    "REFRESH_AT",
    "RESERVATION_IDLE_TIMEOUT",
    "Circuit",
    "KeepaliveRules",
    "Refusal",
    "RelayLimits",
    "RelayTable",
    "Reservation",
    "host_of",
]

KEEPALIVE_INTERVAL = 20.0
"""Seconds between the pings a node sends on its reservation connection. Home routers drop
idle TCP mappings after as little as 30-60 s (Linux conntrack keeps them 5 days, routers far
less); 15-25 s keeps one alive everywhere (iroh pings its relay every 15 s)."""
KEEPALIVE_TIMEOUT = 2 * KEEPALIVE_INTERVAL + 5.0
"""Seconds without a Pong after which a node takes its relay for gone and reserves again."""
RESERVATION_IDLE_TIMEOUT = 3 * KEEPALIVE_INTERVAL
"""Seconds of silence after which the relay drops a reservation connection: three missed
pings (a node that vanished without a FIN must not hold a slot for an hour)."""
REFRESH_AT = 0.75
"""Fraction of the reservation's lifetime after which the node refreshes it."""
MIN_REFRESH = 60.0
"""The soonest a node refreshes its reservation, whatever lifetime the relay grants: a relay
that grants a few seconds (or none) cannot make it send Reserve in a loop."""
ACCEPT_TIMEOUT = 10.0
"""Seconds a target has, after the relay sent it Stop, to open its side of the circuit;
then the dialler is told CONNECTION_FAILED."""


@dataclass(frozen=True)
class RelayLimits:
    """How much a relay gives (all configurable on the daemon; 0 where noted means none)."""

    max_reservations: int = 128
    """Reservations held at once (go-libp2p's default): each costs one idle connection."""
    max_reservations_per_ip: int = 8
    """Reservations from one IP (IPv4 address or IPv6 /64): a household behind one NAT, not a
    crowd of fresh keys from one host."""
    max_circuits: int = 64
    """Circuits open (or being opened) at once, over all peers."""
    max_circuits_per_peer: int = 8
    """Circuits one peer id takes part in, as dialler or target."""
    max_circuits_per_ip: int = 16
    """Circuits dialled from one IP (IPv4 address or IPv6 /64)."""
    reservation_ttl: int = 3600
    """Seconds a reservation lasts unless refreshed (libp2p: 1 h)."""
    circuit_seconds: int = 7200
    """Longest a circuit may last (0: no limit). 2 h carries 1 GiB at 150 KB/s."""
    circuit_bytes: int = 4 << 30
    """Bytes one circuit may carry, both directions together (0: no limit). 4 GiB: a relayed
    fetch of 1 GiB completes with room for its encryption and requests."""
    rate: float = 0.0
    """Bytes per second the relay splices over all circuits together (0: no limit)."""

    def __post_init__(self) -> None:
        for name in ("max_reservations", "max_reservations_per_ip", "max_circuits",
                     "max_circuits_per_peer", "max_circuits_per_ip", "reservation_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("circuit_seconds", "circuit_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
        if not (self.rate >= 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a number >= 0, not {self.rate!r}")


@dataclass(frozen=True)
class Refusal:
    """Why the relay said no: the code the wire carries and a sentence for people."""

    code: RelayCode
    reason: str


@dataclass
class Reservation:
    """A peer the relay can reach (it keeps a connection to the relay open)."""

    peer: PeerId
    host: str
    """Its IP (IPv6 as its /64), for the per-IP limit."""
    expires: float
    last_seen: float


@dataclass
class Circuit:
    """A dialler spliced (or about to be) to a target that holds a reservation."""

    token: bytes
    source: PeerId
    target: PeerId
    source_host: str
    started: float
    accept_by: float
    """Until this time the target may open its side (pending circuits only)."""
    open: bool = False
    deadline: float = math.inf
    """When an open circuit is cut (its duration limit)."""
    bytes: int = 0
    """Bytes spliced so far, both ways."""


@dataclass
class Expired:
    """What :meth:`RelayTable.expire` removed."""

    reservations: list[Reservation] = field(default_factory=list)
    pending: list[Circuit] = field(default_factory=list)
    """Circuits whose target never accepted: their diallers get CONNECTION_FAILED."""
    circuits: list[Circuit] = field(default_factory=list)
    """Open circuits past their duration limit: both sides are closed."""


def host_of(ip: str) -> str:
    """The unit per-IP limits count: the IPv4 address, or an IPv6 address's /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False).network_address) + "/64"
    return str(addr)


class RelayTable:
    """Reservations and circuits of one relay, and the limits they are held to."""

    def __init__(self, limits: RelayLimits) -> None:
        self.limits = limits
        self.reservations: dict[PeerId, Reservation] = {}
        self.circuits: dict[bytes, Circuit] = {}
        self.refused: Counter[str] = Counter()
        """Refusals so far, by :class:`RelayCode` name (for metrics)."""
        self.circuits_opened = 0
        self.circuits_closed: Counter[str] = Counter()
        """Circuits ended, by why (``closed``, ``duration``, ``bytes``, ``failed``)."""
        self.bytes_relayed = 0

    # -- reservations ---------------------------------------------------------------------

    def reserve(self, peer: PeerId, ip: str, now: float) -> Reservation | Refusal:
        """A new reservation for ``peer`` (or a refresh of its own), or why not."""
        host = host_of(ip)
        held = self.reservations.get(peer)
        if held is not None:
            held.expires = now + self.limits.reservation_ttl
            held.last_seen = now
            held.host = host
            return held
        if len(self.reservations) >= self.limits.max_reservations:
            return self._refuse(RelayCode.RESOURCE_LIMIT_EXCEEDED,
                                f"relay full: {self.limits.max_reservations} reservations held")
        same_host = sum(1 for r in self.reservations.values() if r.host == host)
        if same_host >= self.limits.max_reservations_per_ip:
            return self._refuse(RelayCode.RESOURCE_LIMIT_EXCEEDED,
                                f"{self.limits.max_reservations_per_ip} reservations from {host} "
                                "already")
        reservation = Reservation(peer, host, now + self.limits.reservation_ttl, now)
        self.reservations[peer] = reservation
        return reservation

    def seen(self, peer: PeerId, now: float) -> None:
        """The reserving peer sent something (a ping): it is still there."""
        held = self.reservations.get(peer)
        if held is not None:
            held.last_seen = now

    def release(self, peer: PeerId) -> None:
        """The reservation's connection ended."""
        self.reservations.pop(peer, None)

    # -- circuits ------------------------------------------------------------------------

    def connect(self, source: PeerId, ip: str, target: PeerId, now: float) -> Circuit | Refusal:
        """A pending circuit from ``source`` to ``target`` (the relay then sends Stop), or why not."""
        if target == source:
            return self._refuse(RelayCode.PERMISSION_DENIED, "a peer cannot relay to itself")
        if target not in self.reservations:
            return self._refuse(RelayCode.NO_RESERVATION,
                                f"{target.short()} holds no reservation on this relay")
        if len(self.circuits) >= self.limits.max_circuits:
            return self._refuse(RelayCode.RESOURCE_LIMIT_EXCEEDED,
                                f"relay full: {self.limits.max_circuits} circuits open")
        for peer in (source, target):
            if self._circuits_of(peer) >= self.limits.max_circuits_per_peer:
                return self._refuse(RelayCode.RESOURCE_LIMIT_EXCEEDED,
                                    f"{peer.short()} takes part in "
                                    f"{self.limits.max_circuits_per_peer} circuits already")
        host = host_of(ip)
        if sum(1 for c in self.circuits.values() if c.source_host == host) \
                >= self.limits.max_circuits_per_ip:
            return self._refuse(RelayCode.RESOURCE_LIMIT_EXCEEDED,
                                f"{self.limits.max_circuits_per_ip} circuits from {host} already")
        token = os.urandom(TOKEN_LEN)
        circuit = Circuit(token, source, target, host, now, now + ACCEPT_TIMEOUT)
        self.circuits[token] = circuit
        return circuit

    def accept(self, token: bytes, peer: PeerId, now: float) -> Circuit | Refusal:
        """The target opened its side of circuit ``token``: it is open from now on."""
        circuit = self.circuits.get(token)
        if circuit is None or circuit.open or circuit.target != peer:
            # Unknown, already taken, or someone else's: a token is not a capability to
            # take over another peer's circuit.
            return self._refuse(RelayCode.PERMISSION_DENIED, "no such circuit for this peer")
        circuit.open = True
        seconds = self.limits.circuit_seconds
        circuit.deadline = now + seconds if seconds else math.inf
        self.circuits_opened += 1
        return circuit

    def charge(self, circuit: Circuit, nbytes: int) -> bool:
        """Count ``nbytes`` spliced on ``circuit``; False once it is past its byte limit."""
        circuit.bytes += nbytes
        self.bytes_relayed += nbytes
        limit = self.limits.circuit_bytes
        return not limit or circuit.bytes <= limit

    def close(self, circuit: Circuit, why: str) -> None:
        """The circuit ended (either side closed, a limit, a failure)."""
        if self.circuits.pop(circuit.token, None) is not None:
            self.circuits_closed[why] += 1

    def _circuits_of(self, peer: PeerId) -> int:
        return sum(1 for c in self.circuits.values() if peer in (c.source, c.target))

    # -- time ------------------------------------------------------------------------------

    def expire(self, now: float) -> Expired:
        """Remove what is past its time; the shell closes what it returns."""
        out = Expired()
        for peer, held in list(self.reservations.items()):
            if held.expires <= now or held.last_seen + RESERVATION_IDLE_TIMEOUT <= now:
                del self.reservations[peer]
                out.reservations.append(held)
        for token, circuit in list(self.circuits.items()):
            if not circuit.open and circuit.accept_by <= now:
                del self.circuits[token]
                self.circuits_closed["failed"] += 1
                out.pending.append(circuit)
            elif circuit.open and circuit.deadline <= now:
                del self.circuits[token]
                self.circuits_closed["duration"] += 1
                out.circuits.append(circuit)
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`expire` has something to do, or None."""
        times = [min(r.expires, r.last_seen + RESERVATION_IDLE_TIMEOUT)
                 for r in self.reservations.values()]
        times += [c.deadline if c.open else c.accept_by for c in self.circuits.values()]
        return min(times) if times else None

    def _refuse(self, code: RelayCode, reason: str) -> Refusal:
        self.refused[code.name] += 1
        return Refusal(code, reason)

    def counts(self) -> dict[str, int]:
        """Gauges for metrics: reservations, open and pending circuits."""
        open_ = sum(1 for c in self.circuits.values() if c.open)
        return {"reservations": len(self.reservations), "circuits": open_,
                "pending": len(self.circuits) - open_}


class KeepaliveRules:
    """When a node that holds a reservation pings its relay, refreshes the reservation, and
    gives the relay up for gone. Pure: the shell sleeps until :meth:`next_deadline`, then
    asks :meth:`due`."""

    def __init__(self, now: float, ttl: float) -> None:
        self.last_ping = now
        self.last_heard = now
        self.refresh_at = now + max(MIN_REFRESH, ttl * REFRESH_AT)

    def heard(self, now: float) -> None:
        """Something (a Pong, a Stop, a status) arrived from the relay."""
        self.last_heard = now

    def reserved(self, now: float, ttl: float) -> None:
        """The relay granted or refreshed the reservation for ``ttl`` seconds."""
        self.last_heard = now
        self.refresh_at = now + max(MIN_REFRESH, ttl * REFRESH_AT)

    def due(self, now: float) -> str | None:
        """``dead`` (reconnect), ``refresh`` (send Reserve), ``ping`` or None."""
        if now - self.last_heard >= KEEPALIVE_TIMEOUT:
            return "dead"
        if now >= self.refresh_at:
            self.refresh_at = math.inf  # until the relay answers
            self.last_ping = now
            return "refresh"
        if now - self.last_ping >= KEEPALIVE_INTERVAL:
            self.last_ping = now
            return "ping"
        return None

    def next_deadline(self) -> float:
        """The earliest time :meth:`due` may have something to do."""
        return min(self.last_heard + KEEPALIVE_TIMEOUT, self.refresh_at,
                   self.last_ping + KEEPALIVE_INTERVAL)
