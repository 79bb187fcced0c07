"""Content: chunking, hashing, content ids, signed manifests, tickets and path safety.

Pure code: no I/O beyond reading the files being hashed and the one safe way
to create files under a destination (:func:`open_under`).
"""

from .chunking import (
    MAX_CHUNK,
    MIN_CHUNK,
    FileInfo,
    chunk_size_for,
    hash_bytes,
    hash_chunk,
    hash_file,
    hash_files,
)
from .ids import ContentId
from .manifest import (
    MAX_LISTED_CHUNKS,
    MAX_MANIFEST_BYTES,
    MAX_TOTAL_CHUNKS,
    FileEntry,
    LeftOut,
    ListedRoot,
    Manifest,
    build_manifest,
    build_share_manifest,
    decode_manifest,
    directory_id,
    sign_manifest,
)
from .paths import check_relative_path, open_under
from .ticket import Ticket, make_ticket, parse_id_or_ticket

__all__ = [
    "MAX_CHUNK",
    "MAX_LISTED_CHUNKS",
    "MAX_MANIFEST_BYTES",
    "MAX_TOTAL_CHUNKS",
    "MIN_CHUNK",
    "ContentId",
    "FileEntry",
    "FileInfo",
    "LeftOut",
    "ListedRoot",
    "Manifest",
    "Ticket",
    "build_manifest",
    "build_share_manifest",
    "check_relative_path",
    "chunk_size_for",
    "decode_manifest",
    "directory_id",
    "hash_bytes",
    "hash_chunk",
    "hash_file",
    "hash_files",
    "make_ticket",
    "open_under",
    "parse_id_or_ticket",
    "sign_manifest",
]
