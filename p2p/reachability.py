"""Whether this node can be reached from outside, judged from evidence: pure, no I/O.

The evidence is of two kinds, gathered by :mod:`p2p.netcheck`:

* :class:`Mapping` -- a DHT node answered ``identify`` and said from which address it saw our
  UDP socket. That says where our packets come out (and whether two observers see the same
  external port: the NAT's mapping behaviour), never whether anyone can get in: the answer
  came back on a path we opened, which every NAT and firewall lets in.
* :class:`DialBack` -- we asked a DHT node to open a TCP connection to our listen port at our
  own observed IP, and it did so from a source we never sent to (a fresh port, or a second
  address of that server). Only such an inbound connection, seen by our own TCP server and
  authenticated as that server's peer id, proves reachability.

:func:`judge` turns them into a :class:`Reachability`. It never looks at address classes (a
"private" or "documentation" range says nothing: labs use 203.0.113.0/24 as the internet,
and many LANs are reachable), only at what was observed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .address import Address, format_address

PUBLIC = "public"
NAT = "nat"
FIREWALL_ONLY = "firewall-only"
UNKNOWN = "unknown"
VERDICTS = (PUBLIC, NAT, FIREWALL_ONLY, UNKNOWN)
"""What ``p2p netcheck --json`` may print as ``reachability``."""

CONFIRMATIONS = 2
"""Distinct dial-back sources that must reach us before we say we are reachable, and failed
dial-back attempts before we say we are not: one server (or one lost packet) decides nothing.
A single server counts twice when it dials from two sources (a second address, or a second
port), which is what a network with a single bootstrap has."""


class Outcome(Enum):
    """What became of one dial-back request."""

    REACHED = "reached"
    """An authenticated inbound connection from the server arrived at our TCP port."""
    NOT_REACHED = "not_reached"
    """The server accepted the request, yet nothing arrived within the wait."""
    REFUSED = "refused"
    """The server refused (rate limit, or the address was not ours to ask for)."""
    NO_ANSWER = "no_answer"
    """The server did not answer the request (it may not serve dial-backs)."""


@dataclass(frozen=True)
class Mapping:
    """``observer`` (the address we sent to) saw our ``local`` UDP socket at ``observed``."""

    observer: Address
    observed: Address
    local: Address


@dataclass(frozen=True)
class DialBack:
    """One dial-back request to ``server`` (peer id text) at ``server_address``."""

    server: str
    server_address: Address
    outcome: Outcome
    attempts: int = 1
    """Dials the server said it would make (from distinct sources)."""
    sources: tuple[Address, ...] = ()
    """Where the inbound connections came from (REACHED only)."""


@dataclass(frozen=True)
class Reachability:
    """What :func:`judge` concluded, with the evidence, as ``p2p netcheck`` prints it."""

    reachability: str
    nat: dict[str, Any] = field(default_factory=dict)
    """``present`` (bool or None), ``mapping`` (endpoint-independent, endpoint-dependent,
    unknown), ``filtering`` (endpoint-independent, endpoint-dependent, none, unknown),
    ``external`` (the address observers agree on, or None), ``port_preserved``."""
    evidence: tuple[str, ...] = ()

    @property
    def reachable(self) -> bool:
        """True only when dial-backs proved it: the DHT may then run as a server."""
        return self.reachability == PUBLIC

    def to_json(self) -> dict[str, Any]:
        """The one object ``p2p netcheck --json`` prints."""
        return {"reachability": self.reachability, "nat": dict(self.nat),
                "evidence": list(self.evidence)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Reachability:
        """The inverse of :meth:`to_json` (a running node's answer over the control socket)."""
        reach = obj.get("reachability")
        if reach not in VERDICTS:
            raise ValueError(f"unknown reachability {reach!r}")
        return cls(str(reach), dict(obj.get("nat") or {}),
                   tuple(str(e) for e in obj.get("evidence") or ()))


NOT_CHECKED = Reachability(UNKNOWN, {"present": None, "mapping": "unknown", "filtering": "unknown",
                                "external": None, "port_preserved": None},
                      ("not checked yet",))
"""The state of a node before its first check."""


def _mapping_kind(mappings: Sequence[Mapping]) -> tuple[str, list[str]]:
    """EIM when two distinct observers saw one local socket at one external address; EDM
    when they saw it at different ones."""
    notes: list[str] = []
    by_local: dict[Address, dict[Address, Address]] = {}
    for m in mappings:
        by_local.setdefault(m.local, {})[m.observer] = m.observed
    kind = "unknown"
    for local, seen in by_local.items():
        if len(seen) < 2:
            continue
        externals = set(seen.values())
        if len(externals) == 1:
            if kind == "unknown":
                kind = "endpoint-independent"
            notes.append(f"{len(seen)} observers saw {format_address(local)} at the same "
                         f"{format_address(next(iter(externals)))}: endpoint-independent mapping")
        else:
            kind = "endpoint-dependent"
            shown = ", ".join(f"{format_address(o)} saw {format_address(e)}"
                              for o, e in sorted(seen.items()))
            notes.append(f"observers disagree on where {format_address(local)} comes out "
                         f"({shown}): endpoint-dependent mapping")
    if kind == "unknown" and mappings:
        notes.append("only one observer of the UDP mapping: mapping behaviour unknown")
    return kind, notes


def _external(mappings: Sequence[Mapping]) -> Address | None:
    """The observed address named by the most observers (ties: the first seen)."""
    counts: dict[Address, set[Address]] = {}
    for m in mappings:
        counts.setdefault(m.observed, set()).add(m.observer)
    if not counts:
        return None
    return max(counts, key=lambda a: len(counts[a]))


def judge(local_hosts: Iterable[str], mappings: Sequence[Mapping],
          dialbacks: Sequence[DialBack]) -> Reachability:
    """The verdict from the evidence. ``local_hosts`` are this host's own IPs (the bound ones
    and the interfaces'): an observed IP among them means no address translation.

    * ``public``: inbound dial-backs from at least :data:`CONFIRMATIONS` distinct sources.
    * ``nat``: observers see us at an IP that is not ours, and at least
      :data:`CONFIRMATIONS` accepted dial-back attempts reached nothing.
    * ``firewall-only``: observers see our own IP, and the dial-backs reached nothing.
    * ``unknown``: anything less (no observer, too few dial-backs, or some but not enough
      reached us).
    """
    local = set(local_hosts)
    evidence: list[str] = []
    for m in mappings:
        evidence.append(f"{format_address(m.observer)} saw our UDP {format_address(m.local)} "
                        f"at {format_address(m.observed)}")
    mapping_kind, notes = _mapping_kind(mappings)
    evidence += notes
    external = _external(mappings)
    translated: bool | None = None
    if external is not None:
        translated = external[0] not in local
        evidence.append(f"our observed IP {external[0]} is "
                        + ("not one of this host's: address translation" if translated
                           else "this host's own: no address translation"))
    sources: set[Address] = set()
    failed = 0
    for d in dialbacks:
        where = f"{d.server[:16]} at {format_address(d.server_address)}"
        match d.outcome:
            case Outcome.REACHED:
                sources.update(d.sources)
                shown = ", ".join(format_address(s) for s in d.sources)
                evidence.append(f"dial-back by {where} reached our TCP port from {shown}")
                failed += max(0, d.attempts - len(d.sources))
            case Outcome.NOT_REACHED:
                failed += d.attempts
                evidence.append(f"dial-back by {where}: {d.attempts} attempt(s) accepted, "
                                "none reached our TCP port")
            case Outcome.REFUSED:
                evidence.append(f"dial-back by {where} refused")
            case Outcome.NO_ANSWER:
                evidence.append(f"dial-back by {where}: no answer")
    port_preserved = None
    if external is not None and mappings:
        port_preserved = any(m.observed[1] == m.local[1] for m in mappings if m.observed == external)
    nat: dict[str, Any] = {"present": translated, "mapping": mapping_kind,
                           "filtering": "unknown",
                           "external": None if external is None else format_address(external),
                           "port_preserved": port_preserved}
    if len(sources) >= CONFIRMATIONS:
        reach = PUBLIC
        nat["filtering"] = "none" if translated is False else "endpoint-independent"
        if translated:
            evidence.append("reachable behind address translation (a forwarded or mapped port)")
    elif sources:
        reach = UNKNOWN
        evidence.append(f"reached from {len(sources)} source only; {CONFIRMATIONS} needed")
    elif failed >= CONFIRMATIONS and translated is not None:
        reach = NAT if translated else FIREWALL_ONLY
        nat["filtering"] = "endpoint-dependent"
        evidence.append("unsolicited connections are dropped: "
                        + ("NAT" if translated else "a firewall, no NAT"))
    else:
        reach = UNKNOWN
        if translated is None:
            evidence.append("no DHT node told us where it saw us")
        if failed < CONFIRMATIONS:
            evidence.append(f"{failed} failed dial-back attempt(s); {CONFIRMATIONS} needed "
                            "for a verdict")
    return Reachability(reach, nat, tuple(evidence))
