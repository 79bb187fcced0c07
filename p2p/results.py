"""What the node hands back to front ends: typed, frozen, with their JSON form beside them.

The command line, the terminal app and the daemon render these; none of them
reaches into the node's parts to work a figure out for itself, so each figure
(a peer's rate, a verify verdict, the DHT summary) is computed once, here or in
the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .address import Address, format_address, parse_address
from .content import ContentId, LeftOut, Manifest, Ticket
from .errors import IntegrityError
from .identity import PeerId
from .units import plural

__all__ = ["DHTSummary", "FetchResult", "PeerInfo", "ShareResult", "Verdict", "VerifyReport"]


@dataclass(frozen=True)
class ShareResult:
    """What ``share`` made: the manifest, its id and a ticket to hand out."""

    manifest: Manifest
    ticket: Ticket
    left_out: LeftOut = field(default_factory=LeftOut)
    """What a folder share left out (symlinks, empty folders, unreadable and special files)."""

    @property
    def content_id(self) -> ContentId:
        """The content id of what was shared."""
        return self.manifest.content_id


@dataclass(frozen=True)
class FetchResult:
    """A finished fetch: where the verified content is and how it got there."""

    content_id: ContentId
    path: Path
    """The verified file or folder."""
    name: str
    size: int
    """Bytes of content."""
    chunks: int
    fetched_chunks: int
    """Chunks downloaded and verified by this fetch."""
    resumed_chunks: int
    """Chunks that were already here (an earlier, interrupted fetch; or a local copy)."""
    chunks_by_peer: dict[PeerId, int]
    """Verified chunks each peer supplied during this fetch."""
    seconds: float
    """From the call to the verified path."""
    local: bool = False
    """True when the content was already complete here and nothing was downloaded."""
    files: int | None = None
    """Files put in place (the selected ones, with ``--include``/``--exclude``)."""
    complete: bool = True
    """Every file of the content is here (False: only the selected ones)."""
    paths: dict[PeerId, str] = field(default_factory=dict)
    """How each peer that supplied chunks was reached: ``direct``, ``punched`` or ``relayed``."""

    @property
    def rate(self) -> float:
        """Bytes of content per second of this fetch."""
        return self.size / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``completed`` record of ``p2p fetch --json``."""
        return {"event": "completed", "path": str(self.path), "content_id": str(self.content_id),
                "bytes": self.size, "seconds": round(self.seconds, 3),
                "peers": len(self.chunks_by_peer), "chunks": self.chunks,
                "fetched_chunks": self.fetched_chunks, "resumed_chunks": self.resumed_chunks,
                "files": self.files, "complete": self.complete,
                "chunks_by_peer": {str(p): n for p, n in self.chunks_by_peer.items()},
                "paths": {str(p): self.paths.get(p, "direct") for p in self.chunks_by_peer}}


@dataclass(frozen=True)
class PeerInfo:
    """One connection to a peer, for ``p2p peers`` and the terminal app."""

    peer: PeerId
    address: Address
    direction: Literal["in", "out"]
    """``"in"`` (it dialled us) or ``"out"``."""
    bytes_in: int
    bytes_out: int
    rate_in: float = 0.0
    """Bytes per second received, over the node's last rate sample (about a second)."""
    rate_out: float = 0.0
    """Bytes per second sent, over the same sample."""
    strikes: int = 0
    """Bad chunks this peer sent to a running download."""
    via: PeerId | None = None
    """The relay the connection runs through (its ``address`` is then the relay's); None
    when direct."""
    punched: bool = False
    """A direct connection a hole punch opened (to a peer first reached through a relay)."""
    lan: bool = False
    """The peer was found by LAN discovery (mDNS) on this network."""

    @property
    def path(self) -> str:
        """``direct``, ``punched`` or ``relayed``."""
        if self.via is not None:
            return "relayed"
        return "punched" if self.punched else "direct"

    def to_json(self) -> dict[str, Any]:
        """One row of ``p2p peers --json``."""
        row = {"peer_id": str(self.peer), "address": format_address(self.address),
               "direction": self.direction, "bytes_in": self.bytes_in,
               "bytes_out": self.bytes_out, "rate_in": self.rate_in, "rate_out": self.rate_out,
               "strikes": self.strikes, "path": self.path,
               "source": "lan" if self.lan else "network"}
        if self.via is not None:
            row["via"] = str(self.via)
        return row


Verdict = Literal["ok", "incomplete", "missing", "corrupt"]
"""``ok``: every chunk present and good. ``incomplete``: an unfinished download, its
missing chunks expected. ``missing``: content that should be whole lacks chunks (moved,
changed or deleted files). ``corrupt``: some chunks do not match their hashes."""


@dataclass(frozen=True)
class VerifyReport:
    """Result of re-hashing the local copy of some content, with its verdict."""

    content_id: ContentId
    chunks: int
    good: int
    bad: list[int]
    """Indexes of chunks whose bytes do not match their hash."""
    missing: int
    """Chunks not held here."""
    downloading: bool = False
    """True for a download that has not finished (missing chunks are expected)."""

    @property
    def verdict(self) -> Verdict:
        """The one reading of this report every front end shows."""
        if self.bad:
            return "corrupt"
        if self.missing:
            return "incomplete" if self.downloading else "missing"
        return "ok"

    @property
    def ok(self) -> bool:
        """Every chunk is present and good."""
        return self.verdict == "ok"

    def problem(self) -> IntegrityError | None:
        """The integrity error a front end raises for this verdict (None when nothing is wrong)."""
        match self.verdict:
            case "corrupt":
                bad = len(self.bad)
                return IntegrityError(f"{plural(bad, 'chunk')} of {self.content_id} "
                                      f"{'does' if bad == 1 else 'do'} not match "
                                      f"{'its hash' if bad == 1 else 'their hashes'} "
                                      f"(first: {', '.join(map(str, self.bad[:5]))})")
            case "missing":
                return IntegrityError(f"{plural(self.missing, 'chunk')} of {self.content_id} "
                                      f"{'is' if self.missing == 1 else 'are'} missing "
                                      "here (moved, changed or deleted?)")
            case _:
                return None

    def summary(self) -> str:
        """One line: '<id>: 10/12 chunks good, 2 missing'."""
        return (f"{self.content_id}: {self.good}/{plural(self.chunks, 'chunk')} good"
                + (f", {len(self.bad)} bad" if self.bad else "")
                + (f", {self.missing} missing" if self.missing else ""))

    def to_json(self) -> dict[str, Any]:
        """``p2p verify --json`` and the control socket's answer."""
        return {"content_id": str(self.content_id), "chunks": self.chunks, "good": self.good,
                "bad": self.bad, "missing": self.missing, "downloading": self.downloading,
                "verdict": self.verdict, "ok": self.ok}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyReport:
        """Read back what :meth:`to_json` wrote."""
        return cls(ContentId.parse(str(data["content_id"])), int(data["chunks"]),
                   int(data["good"]), [int(i) for i in data["bad"]], int(data["missing"]),
                   bool(data.get("downloading", False)))


@dataclass(frozen=True)
class DHTSummary:
    """The DHT as this node sees it: routing table, records held, bootstrap status."""

    node_id: str
    """This node's DHT id, hex."""
    buckets: tuple[int, ...]
    """Contacts per k-bucket."""
    bootstrap: tuple[Address, ...]
    """The bootstrap nodes this node was configured with."""
    bootstrap_error: str | None
    """Why joining through them failed, if it did."""
    addresses: tuple[Address, ...]
    """Where other peers can reach this node, best first."""
    records: dict[str, int] = field(default_factory=dict)
    """Records held for others, by kind."""
    uptime: float = 0.0
    """Seconds since the DHT started."""
    restored_contacts: int = 0
    """Saved contacts that answered when the DHT started."""
    saved_contacts: int = 0
    """Contacts the saved routing table listed when the node started."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Every counter the DHT keeps (RPCs, rejected packets...), for metrics and ``--json``."""

    @property
    def contacts(self) -> int:
        """Contacts in the routing table."""
        return sum(self.buckets)

    def to_json(self) -> dict[str, Any]:
        """``p2p dht --json`` and the control socket's answer."""
        return {"node_id": self.node_id, "buckets": list(self.buckets), "contacts": self.contacts,
                "bootstrap": [format_address(a) for a in self.bootstrap],
                "bootstrap_error": self.bootstrap_error,
                "addresses": [format_address(a) for a in self.addresses],
                "records": dict(self.records), "uptime": self.uptime,
                "restored_contacts": self.restored_contacts,
                "saved_contacts": self.saved_contacts, "stats": self.stats}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DHTSummary:
        """Read back what :meth:`to_json` wrote."""

        def addrs(key: str) -> tuple[Address, ...]:
            return tuple(parse_address(str(a), resolve=False) for a in data.get(key, ()))

        return cls(str(data["node_id"]), tuple(int(b) for b in data["buckets"]),
                   addrs("bootstrap"), data.get("bootstrap_error"), addrs("addresses"),
                   {str(k): int(v) for k, v in dict(data.get("records", {})).items()},
                   float(data.get("uptime", 0.0)), int(data.get("restored_contacts", 0)),
                   int(data.get("saved_contacts", 0)), dict(data.get("stats", {})))
