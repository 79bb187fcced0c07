"""The local store: one SQLite database plus files on disk.

What lives where (all under the state directory, except the files themselves):

* ``store.sqlite3`` (WAL mode): shares, manifests, downloads and their verified-chunk
  bitfields, a download's source addresses, bans (:mod:`~p2p.store.database`).
* Shared files are served **in place**, never copied. At share time the store records each
  file's size and mtime; every read checks both and re-hashes the chunk, so a file that
  changed is never served as the old content (:mod:`~p2p.store.serving`).
* A download writes into a partial file (a partial folder for a directory) beside its
  destination: ``NAME.p2p-partial``. Verified chunks are synced before the record that says
  they are complete, so a killed download resumes without lying; on completion the partial
  data is renamed into place and becomes a share served from there
  (:mod:`~p2p.store.partial`, writing through :mod:`~p2p.store.directio`).

Several processes may open the same state directory: SQLite (WAL, busy timeout) keeps the
database consistent, and a download holds an exclusive ``flock`` on its partial file, so a
second process fetching the same content gets :class:`~p2p.errors.StateDirLocked` instead of
corrupting it.

The modules, one concern each:

* :mod:`~p2p.store.store` -- :class:`Store`, the one object that wires the rest together;
* :mod:`~p2p.store.database` -- the schema, its migrations, every query, and the one place
  SQLite's errors become ours; the :class:`ShareInfo` and :class:`DownloadInfo` rows;
* :mod:`p2p.bitfield` (beside the store: the wire uses it too) -- every operation on the bits of a bitfield (the wire's layout);
* :mod:`~p2p.store.chunks` -- :class:`ChunkMap`, a manifest's chunk numbering;
* :mod:`~p2p.store.serving` -- shared files read in place, and the change check;
* :mod:`~p2p.store.partial` -- :class:`PartialDownload` and :func:`seal`;
* :mod:`~p2p.store.directio` -- ``O_DIRECT`` aligned writes and the buffered fallback.
"""

from ..bitfield import bit_count, bit_get, bit_set, bitfield_new, full_bitfield
from .chunks import ChunkMap
from .database import DB_FILE, DownloadInfo, ShareInfo
from .partial import PARTIAL_SUFFIX, PartialDownload, seal
from .serving import ShareHealth
from .store import Store

__all__ = [
    "DB_FILE",
    "PARTIAL_SUFFIX",
    "ChunkMap",
    "DownloadInfo",
    "PartialDownload",
    "ShareHealth",
    "ShareInfo",
    "Store",
    "bit_count",
    "bit_get",
    "bit_set",
    "bitfield_new",
    "full_bitfield",
    "seal",
]
