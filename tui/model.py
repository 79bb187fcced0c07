"""Plain state the views render: folded from node events and periodic snapshots.

Nothing here touches the network, the node or Textual. The app feeds events and
snapshots in; widgets get the frozen ``*Data`` objects out (attributes down).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from p2p import (
    Ban,
    ChunkFailed,
    ChunkRequested,
    ChunkVerified,
    ContentId,
    DHTSummary,
    DownloadCompleted,
    DownloadFailed,
    DownloadInfo,
    DownloadPaused,
    DownloadProgress,
    DownloadStarted,
    Event,
    PeerId,
    PeerInfo,
    format_address,
    plural,
)


def counted(n: int, word: str, many: str | None = None) -> str:
    """:func:`p2p.plural` with thousands separators: '1 file', '12,345 files'."""
    return plural(n, word, many).replace(str(n), f"{n:,}", 1)


RATE_HISTORY = 60
"""Rate samples kept per transfer for its sparkline."""

PALETTE = (
    "#4e9af1", "#f1a94e", "#5fd068", "#e05d9c", "#b48ef0", "#e8d44d",
    "#49c6c6", "#f07167", "#9bc53d", "#c77dff", "#ff9f1c", "#2ec4b6",
)
"""Colours given to peers in the order they first deliver a chunk (stable for the session)."""


class Cell(enum.IntEnum):
    """State of one chunk (or group of chunks) in the chunk map."""

    MISSING = 0
    IN_FLIGHT = 1
    VERIFIED = 2
    FAILED = 3


class PeerPalette:
    """Gives each peer a stable colour: the first peer seen gets the first colour, and so on."""

    def __init__(self) -> None:
        self._index: dict[PeerId, int] = {}

    def index(self, peer: PeerId) -> int:
        """The palette slot of ``peer`` (assigned on first sight, never changed)."""
        if peer not in self._index:
            self._index[peer] = len(self._index)
        return self._index[peer]

    def colour(self, peer: PeerId) -> str:
        """The colour of ``peer``."""
        return PALETTE[self.index(peer) % len(PALETTE)]


@dataclass(frozen=True)
class ChunkMapData:
    """What the chunk map draws: one state per chunk, and who delivered each verified chunk.

    ``owners[i]`` is a label into ``legend`` (``""`` for chunks held before this run).
    """

    states: tuple[Cell, ...] = ()
    owners: tuple[str, ...] = ()
    legend: tuple[tuple[str, str], ...] = ()
    """(peer label, colour), in palette order."""


@dataclass(frozen=True)
class TransferRow:
    """One line of the transfers table."""

    content_id: ContentId
    name: str
    size: int
    done_chunks: int
    chunk_count: int
    bytes_done: int
    rate: float
    eta: float | None
    peers: int
    state: str
    """``active``, ``paused``, ``complete``, ``failed`` or ``selected`` (the files picked are
    in place, the rest was not fetched)."""
    error: str | None = None
    rates: tuple[float, ...] = ()

    @property
    def size_known(self) -> bool:
        """The listing arrived (or the download finished): chunk count and size are real.
        A fetch that failed before (not found, refused) knows neither."""
        return self.chunk_count > 0 or self.state in ("complete", "selected")

    @property
    def fraction(self) -> float:
        """Share of chunks verified (0..1); 0 while the size is unknown, 1 for a finished
        empty file or folder."""
        if self.chunk_count == 0:
            return 1.0 if self.state in ("complete", "selected") else 0.0
        return self.done_chunks / self.chunk_count


@dataclass
class _Transfer:
    content_id: ContentId
    name: str = ""
    size: int = 0
    chunk_count: int = 0
    done_chunks: int = 0
    bytes_done: int = 0
    rate: float = 0.0
    eta: float | None = None
    peers: int = 0
    state: str = "active"
    error: str | None = None
    some_files: bool = False
    """Only some files are fetched: the figures are theirs, and completing leaves the
    other chunks missing on the map."""
    states: bytearray = field(default_factory=bytearray)
    owners: list[PeerId | None] = field(default_factory=list)
    rates: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=RATE_HISTORY))

    def ensure(self, count: int) -> None:
        if len(self.states) != count:
            self.chunk_count = count
            self.states = bytearray(count)
            self.owners = [None] * count

    def row(self) -> TransferRow:
        # A fetch that failed before its listing arrived has no name yet: show its id.
        return TransferRow(self.content_id, self.name or self.content_id.short(), self.size, self.done_chunks,
                           self.chunk_count, self.bytes_done, self.rate, self.eta, self.peers,
                           self.state, self.error, tuple(self.rates))


class Transfers:
    """Every download this app knows about, folded from events and the store's rows."""

    def __init__(self, palette: PeerPalette | None = None) -> None:
        self.palette = palette or PeerPalette()
        self._items: dict[ContentId, _Transfer] = {}

    def __contains__(self, cid: object) -> bool:
        return cid in self._items

    def _get(self, cid: ContentId) -> _Transfer:
        if cid not in self._items:
            self._items[cid] = _Transfer(cid)
        return self._items[cid]

    def apply(self, event: Event) -> bool:
        """Fold one event in. True if it concerned a known transfer.

        Only a start (or a failure, which may come before any start) creates a transfer;
        late events for one that was cancelled and forgotten are dropped."""
        match event:
            case DownloadStarted(content_id=cid, name=name, size=size, chunk_count=count,
                                 held_indexes=held) as started:
                t = self._get(cid)
                t.name, t.size, t.state, t.error = name, size, "active", None
                t.ensure(count)
                for i in held:
                    if 0 <= i < count:
                        t.states[i] = Cell.VERIFIED
                t.done_chunks = sum(1 for s in t.states if s == Cell.VERIFIED)
                t.some_files = started.wanted_chunks is not None
                if started.wanted_chunks is not None:
                    t.chunk_count = started.wanted_chunks
                    t.size = started.wanted_size if started.wanted_size is not None else size
                    t.done_chunks = started.wanted_held or 0
            case ChunkRequested(content_id=cid, index=i):
                t = self._items.get(cid)  # type: ignore[assignment]
                if t is None:
                    return False  # e.g. a cancelled (forgotten) transfer: never re-created
                if 0 <= i < len(t.states) and t.states[i] != Cell.VERIFIED:
                    t.states[i] = Cell.IN_FLIGHT
            case ChunkVerified(content_id=cid, index=i, peer=peer):
                t = self._items.get(cid)  # type: ignore[assignment]
                if t is None:
                    return False  # e.g. a cancelled (forgotten) transfer: never re-created
                if 0 <= i < len(t.states):
                    if t.states[i] != Cell.VERIFIED:
                        t.done_chunks += 1
                    t.states[i] = Cell.VERIFIED
                    t.owners[i] = peer
                    self.palette.index(peer)
            case ChunkFailed(content_id=cid, index=i):
                t = self._items.get(cid)  # type: ignore[assignment]
                if t is None:
                    return False  # e.g. a cancelled (forgotten) transfer: never re-created
                if 0 <= i < len(t.states) and t.states[i] != Cell.VERIFIED:
                    t.states[i] = Cell.FAILED
            case DownloadProgress(content_id=cid) as p:
                t = self._items.get(cid)  # type: ignore[assignment]
                if t is None:
                    return False  # e.g. a cancelled (forgotten) transfer: never re-created
                t.done_chunks, t.bytes_done, t.size = p.done_chunks, p.bytes_done, p.size
                t.rate, t.eta, t.peers = p.rate, p.eta, p.peers
                if not t.states:
                    t.ensure(p.chunk_count)
                t.chunk_count = p.chunk_count
                t.rates.append(p.rate)
            case DownloadCompleted(content_id=cid, size=size):
                t = self._items.get(cid)  # type: ignore[assignment]
                if t is None:
                    return False  # e.g. a cancelled (forgotten) transfer: never re-created
                t.state, t.size, t.bytes_done, t.rate, t.eta, t.peers = \
                    "selected" if t.some_files else "complete", size, size, 0.0, None, 0
                for i, s in enumerate(t.states):
                    if s == Cell.IN_FLIGHT or (s != Cell.VERIFIED and not t.some_files):
                        t.states[i] = Cell.MISSING if t.some_files else Cell.VERIFIED
                t.done_chunks = t.chunk_count
            case DownloadFailed(content_id=cid, error=error):
                t = self._get(cid)
                t.state, t.error, t.rate, t.eta, t.peers = "failed", error, 0.0, None, 0
                self._settle(t)
            case DownloadPaused(content_id=cid):
                t = self._items.get(cid)  # type: ignore[assignment]
                if t is None:
                    return False  # the pause that comes with a cancel: the transfer is gone
                t.state, t.rate, t.eta, t.peers = "paused", 0.0, None, 0
                self._settle(t)
            case _:
                return False
        return True

    @staticmethod
    def _settle(t: _Transfer) -> None:
        # Requests in flight are void once a download stops.
        for i, s in enumerate(t.states):
            if s == Cell.IN_FLIGHT:
                t.states[i] = Cell.MISSING

    def merge_store(self, rows: Iterable[DownloadInfo], running: set[ContentId]) -> None:
        """Take in the store's download rows (downloads from earlier runs, their state)."""
        for info in rows:
            t = self._get(info.content_id)
            t.name, t.size = info.name, info.size
            if not t.states:
                t.chunk_count = info.chunks
            if info.content_id not in running:
                t.done_chunks = info.done_chunks
                if t.state == "active" or info.state in ("complete", "failed", "selected"):
                    t.state = "paused" if info.state == "active" else info.state
                t.error = info.error
                if t.state == "complete":
                    t.bytes_done = t.size

    def set_held(self, cid: ContentId, count: int, held: Sequence[int]) -> None:
        """Mark chunks held on disk (a stopped download shown after a restart)."""
        t = self._get(cid)
        if t.states:
            return
        t.ensure(count)
        for i in held:
            t.states[i] = Cell.VERIFIED

    def forget(self, cid: ContentId) -> None:
        """Drop a transfer (cancelled)."""
        self._items.pop(cid, None)

    def rows(self) -> list[TransferRow]:
        """Every transfer, in the order first seen."""
        return [t.row() for t in self._items.values()]

    def row(self, cid: ContentId) -> TransferRow | None:
        t = self._items.get(cid)
        return t.row() if t else None

    def chunk_map(self, cid: ContentId | None) -> ChunkMapData:
        """The chunk map of one transfer (empty when unknown)."""
        t = self._items.get(cid) if cid is not None else None
        if t is None:
            return ChunkMapData()
        owners = tuple(p.short() if p is not None else "" for p in t.owners)
        seen = sorted({p for p in t.owners if p is not None}, key=self.palette.index)
        legend = tuple((p.short(), self.palette.colour(p)) for p in seen)
        return ChunkMapData(tuple(Cell(s) for s in t.states), owners, legend)


def group_cells(data: ChunkMapData, cells: int) -> list[tuple[Cell, str]]:
    """Fold chunks into at most ``cells`` cells: (state, owner label) per cell.

    A group is verified only when all its chunks are; otherwise failed if any failed,
    in flight if any is, else missing. A verified group takes its most frequent owner.
    """
    n = len(data.states)
    if n == 0 or cells <= 0:
        return []
    groups = min(n, cells)
    out: list[tuple[Cell, str]] = []
    for g in range(groups):
        lo, hi = g * n // groups, (g + 1) * n // groups
        states = data.states[lo:hi]
        if all(s == Cell.VERIFIED for s in states):
            owner = collections.Counter(data.owners[lo:hi]).most_common(1)[0][0]
            out.append((Cell.VERIFIED, owner))
        elif Cell.FAILED in states:
            out.append((Cell.FAILED, ""))
        elif Cell.IN_FLIGHT in states:
            out.append((Cell.IN_FLIGHT, ""))
        else:
            out.append((Cell.MISSING, ""))
    return out


@dataclass(frozen=True)
class PeerRow:
    """One line of the peers table."""

    peer: PeerId
    address: str
    direction: str
    bytes_in: int
    bytes_out: int
    rate_in: float
    rate_out: float
    strikes: int
    connected: bool
    banned: str | None = None
    """The ban reason, when banned."""
    path: str = "direct"
    """How the connection runs: ``direct``, ``punched`` (a hole punch) or ``relayed``."""
    via: PeerId | None = None
    """The relay it runs through, when relayed."""
    lan: bool = False
    """Found by LAN discovery on this network."""

    @property
    def path_text(self) -> str:
        """The path as the table shows it: ``relayed via ABCDEFGH`` names the relay; a peer
        found on this network says ``direct, LAN``."""
        text = f"{self.path} via {self.via.short()[:8]}" if self.via is not None else self.path
        return f"{text}, LAN" if self.lan else text


class Peers:
    """Connected (and recently seen) peers, with the rates the node measured, and bans."""

    def __init__(self) -> None:
        self._rows: dict[tuple[PeerId, str], PeerRow] = {}

    def seen(self, peer: PeerId, address: tuple[str, int] | None, inbound: bool) -> None:
        """A peer connected (from an event): show it before the next snapshot."""
        key = (peer, "in" if inbound else "out")
        if key not in self._rows:
            addr = format_address(address) if address else "-"
            self._rows[key] = PeerRow(peer, addr, key[1], 0, 0, 0.0, 0.0, 0, True)

    def update(self, infos: Sequence[PeerInfo], bans: Sequence[Ban], now: float) -> None:
        """Fold in a snapshot of ``node.peers()`` and the library's bans; ``now`` is wall time."""
        banned = {ban.peer: ban.reason for ban in bans if ban.active(now)}
        live: set[tuple[PeerId, str]] = set()
        for info in infos:
            key: tuple[PeerId, str] = (info.peer, info.direction)
            live.add(key)
            self._rows[key] = PeerRow(info.peer, format_address(info.address), info.direction,
                                      info.bytes_in, info.bytes_out, info.rate_in, info.rate_out,
                                      info.strikes, True, banned.get(info.peer),
                                      str(getattr(info, "path", "direct")), info.via,
                                      bool(getattr(info, "lan", False)))
        for key, row in list(self._rows.items()):
            if key not in live:
                self._rows[key] = PeerRow(row.peer, row.address, row.direction, row.bytes_in,
                                          row.bytes_out, 0.0, 0.0, row.strikes, False,
                                          banned.get(row.peer), row.path, row.via, row.lan)
        for peer, reason in banned.items():
            if not any(k[0] == peer for k in self._rows):
                self._rows[(peer, "-")] = PeerRow(peer, "-", "-", 0, 0, 0.0, 0.0, 0, False, reason,
                                                  "-")

    def rows(self) -> list[PeerRow]:
        """Connected peers first, then recently seen ones."""
        return sorted(self._rows.values(), key=lambda r: (not r.connected, str(r.peer)))


@dataclass(frozen=True)
class LibraryRow:
    """One line of the library: something shared or downloaded."""

    content_id: ContentId
    name: str
    size: int
    origin: str
    """``shared``, ``downloaded`` or a download's state (``active``, ``paused``...)."""
    providers: int | None = None
    """Peers providing it according to the DHT (None until looked up)."""
    status: str = ""
    """For a share: ``ok``, ``changed`` or ``missing`` (``ShareHealth.status``, from
    ``Library.share_health`` run in a worker); "" when not checked."""


@dataclass(frozen=True)
class DhtData:
    """What the DHT view shows."""

    node_id: str = ""
    peer_id: str = ""
    buckets: tuple[int, ...] = ()
    contacts: int = 0
    records: tuple[tuple[str, int], ...] = ()
    bootstrap: tuple[str, ...] = ()
    bootstrap_error: str | None = None
    addresses: tuple[str, ...] = ()
    listen: str = ""

    @classmethod
    def from_summary(cls, summary: DHTSummary, peer_id: str, listen: str) -> DhtData:
        """Build from :meth:`p2p.Node.dht_summary`."""
        return cls(
            node_id=summary.node_id,
            peer_id=peer_id,
            buckets=summary.buckets,
            contacts=summary.contacts,
            records=tuple(sorted(summary.records.items())),
            bootstrap=tuple(format_address(a) for a in summary.bootstrap),
            bootstrap_error=summary.bootstrap_error,
            addresses=tuple(format_address(a) for a in summary.addresses),
            listen=listen,
        )
