"""A read-only view of a peer's library: what it shares and what it downloads.

``p2p ls``, id-prefix look-up (``p2p verify abc1``) and the terminal app's Library
tab read through this view; they never open the store or name its file. A running
node hands out a view over its own store (:attr:`p2p.node.Node.library`); a
command with no node opens one with :meth:`Library.open`, which works whether or
not a node of that state directory is running (the database allows many readers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .bitfield import bit_indexes
from .content import ContentId, Manifest, parse_id_or_ticket
from .errors import BadInput
from .identity import PeerId
from .store import DB_FILE, DownloadInfo, ShareHealth, ShareInfo, Store

__all__ = ["Ban", "DownloadInfo", "Library", "ShareHealth", "ShareInfo"]


@dataclass(frozen=True)
class Ban:
    """A peer this node refuses to talk to."""

    peer: PeerId
    reason: str
    since: float
    """When it was banned (seconds since the epoch)."""
    until: float | None
    """When the ban ends (seconds since the epoch); None for good."""

    def active(self, now: float) -> bool:
        """Whether the ban holds at ``now`` (seconds since the epoch)."""
        return self.until is None or self.until > now


class Library:
    """Shares, downloads, manifests and bans of one state directory; reads only."""

    def __init__(self, store: Store | None) -> None:
        self._store = store

    @classmethod
    @contextlib.contextmanager
    def open(cls, state_dir: Path) -> Iterator[Library]:
        """The library of ``state_dir`` for the duration of the block (empty if it has none yet)."""
        if not (Path(state_dir) / DB_FILE).exists():
            yield cls(None)
            return
        with Store(state_dir) as store:
            yield cls(store)

    def shares(self) -> list[ShareInfo]:
        """Everything served in full, oldest first."""
        return self._store.shares() if self._store else []

    def share_health(self, content_id: ContentId) -> ShareHealth:
        """Whether the files of a share are as they were shared (``ok``, ``changed``,
        ``missing``, with counts): a ``stat`` per file, no hashing, so a folder of 100,000
        files takes a fraction of a second; still, call it in a thread, never on an event
        loop. ``p2p verify ID`` hashes."""
        return self._store.share_health(content_id) if self._store else ShareHealth(0)

    def downloads(self) -> list[DownloadInfo]:
        """Every download, with its progress."""
        return self._store.downloads() if self._store else []

    def download(self, content_id: ContentId) -> DownloadInfo | None:
        """One download's row, or None."""
        return self._store.download_info(content_id) if self._store else None

    def manifest(self, content_id: ContentId) -> Manifest | None:
        """The verified manifest of ``content_id``, if this library has it."""
        return self._store.get_manifest(content_id) if self._store else None

    def is_shared(self, content_id: ContentId) -> bool:
        """Whether ``content_id`` is served in full."""
        return bool(self._store and self._store.is_shared(content_id))

    def find_share(self, root: Path) -> ShareInfo | None:
        """The share whose files lie at ``root``, if any."""
        where = Path(root).expanduser().resolve()
        return next((s for s in self.shares() if s.root == where), None)

    def held_chunks(self, content_id: ContentId) -> tuple[int, list[int]]:
        """(chunk count, indexes of the chunks held here) for a download or a share."""
        info = self.download(content_id)
        if (info is not None and info.state == "complete") or self.is_shared(content_id):
            manifest = self.manifest(content_id)
            count = manifest.chunk_count if manifest else (info.chunks if info else 0)
            return count, list(range(count))
        if self._store is None:
            return 0, []
        recorded = self._store.recorded_bitfield(content_id)
        if recorded is None:
            return (info.chunks if info else 0), []
        count, bits = recorded
        return count, bit_indexes(bits, count)

    def bans(self) -> list[Ban]:
        """Every ban, current or expired."""
        if self._store is None:
            return []
        return [Ban(peer, reason, since, until) for peer, reason, since, until in self._store.bans()]

    def is_banned(self, peer: PeerId) -> bool:
        """Whether ``peer`` is banned now."""
        return bool(self._store and self._store.is_banned(peer))

    def resolve(self, text: str) -> ContentId:
        """A content id from a full id, a ticket, or an unambiguous prefix of an id held here.

        Raises :class:`BadInput` when ``text`` is none of these.
        """
        try:
            return parse_id_or_ticket(text)[0]
        except BadInput:
            found = self._store.resolve_prefix(text.strip()) if self._store else None
            if found is not None:
                return found
            raise
