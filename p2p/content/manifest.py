"""Signed manifests: what a publisher says a content id is made of.

Encoding (canonical msgpack, see :mod:`p2p.encoding`)::

    body     = [FORMAT_VERSION, kind, name, entries, publisher_key]
    entries  = [[path, size, chunk_size, hashes], ...]      # sorted by path, paths unique
    manifest = body + [signature]                             # one flat list of 6 fields
    signature = Ed25519(publisher, SIGNING_PREFIX + pack(body))

``kind`` is ``"file"`` (exactly one entry, whose path is the name) or ``"dir"``.
For a file, the content id is the file's id (:attr:`FileInfo.content_id`). For a
directory, each file keeps its own file id, and the directory's id is BLAKE3 over
``pack([FORMAT_VERSION, "dir", [[path, file_id, size], ...]])``: the same tree of
bytes always has the same id, whoever shares it and whatever the folder is called.

:meth:`Manifest.verify` is the check a downloader runs before it trusts
anything: the entries hash to the id that was asked for
(:class:`ContentIdMismatch`), the signature verifies (:class:`BadSignature`),
and the publisher is the required one (:class:`WrongPublisher`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import blake3

from ..encoding import expect_bytes, expect_int, expect_list, expect_str, pack, unpack_canonical
from ..errors import BadInput, ContentIdMismatch, DecodeError, UnsafePath, WrongPublisher
from ..identity import SIGNATURE_LEN, Identity, PeerId
from .chunking import FORMAT_VERSION, HASH_LEN, MAX_CHUNKS, FileInfo, hash_file, hash_files
from .ids import ContentId
from .paths import MAX_PATH_BYTES, check_relative_path

SIGNING_PREFIX = b"p2p manifest v1\x00"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Largest encoded manifest accepted: a 1 TiB file's 2 MiB hash list, or many small files, fit."""
MAX_ENTRIES = 100_000
"""Most files in one directory manifest: bounds the work a hostile manifest can cause."""
MAX_TOTAL_CHUNKS = MAX_MANIFEST_BYTES // HASH_LEN
"""Most chunks over all entries: what a manifest of MAX_MANIFEST_BYTES could list (the wire's
bitfields are sized by it)."""
MAX_NAME_BYTES = 255
KINDS = ("file", "dir")


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest: where it goes and what its bytes are."""

    path: str
    """Relative ``/``-separated path (the name, for a single file)."""
    info: FileInfo

    @property
    def content_id(self) -> ContentId:
        """This file's own id (the same file has the same id in any folder)."""
        return self.info.content_id


def directory_id(entries: Sequence[FileEntry]) -> ContentId:
    """The content id of a directory: BLAKE3 over its sorted (path, file id, size) list."""
    listing = [[e.path, e.content_id.digest, e.info.size] for e in entries]
    return ContentId(blake3.blake3(pack([FORMAT_VERSION, "dir", listing])).digest())


@dataclass(frozen=True)
class Manifest:
    """A signed description of a file or directory. Build with :func:`build_manifest` or :meth:`decode`."""

    kind: str
    name: str
    entries: tuple[FileEntry, ...]
    publisher: PeerId
    signature: bytes

    @cached_property
    def content_id(self) -> ContentId:
        """The id this manifest describes, computed from its entries (never trusted from outside).

        Computed once (the manifest is frozen): a folder's id hashes every entry, and a download
        asks for it with every commit."""
        if self.kind == "file":
            return self.entries[0].content_id
        return directory_id(self.entries)

    @cached_property
    def total_size(self) -> int:
        """Sum of the sizes of every file."""
        return sum(e.info.size for e in self.entries)

    @cached_property
    def chunk_count(self) -> int:
        """Total chunks over every file."""
        return sum(e.info.chunk_count for e in self.entries)

    def _body(self) -> list[object]:
        return [FORMAT_VERSION, self.kind, self.name,
                [[e.path, e.info.size, e.info.chunk_size, e.info.hashes] for e in self.entries],
                self.publisher.key]

    def encode(self) -> bytes:
        """The canonical bytes of this manifest (what is stored and sent)."""
        return pack([*self._body(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and structurally validate manifest bytes. Raises :class:`DecodeError` or :class:`UnsafePath`.

        This checks the form only (field types, limits, safe paths, canonical
        encoding); call :meth:`verify` to check the id and the signature.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise DecodeError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        raw = unpack_canonical(bytes(data), max_bin=MAX_CHUNKS * HASH_LEN,
                               max_str=MAX_PATH_BYTES, max_array=MAX_ENTRIES)
        fields = expect_list(raw, 6, "manifest")
        version = expect_int(fields[0], 0, 2**32, "manifest version")
        if version != FORMAT_VERSION:
            raise DecodeError(f"unsupported manifest version {version}")
        kind = expect_str(fields[1], 8, "manifest kind")
        if kind not in KINDS:
            raise DecodeError(f"unknown manifest kind {kind!r}")
        name = expect_str(fields[2], MAX_NAME_BYTES, "manifest name")
        check_relative_path(name)
        if "/" in name:
            raise UnsafePath("manifest name must be a single path component")
        raw_entries = expect_list(fields[3], None, "manifest entries")
        entries = []
        for item in raw_entries:
            path, size, chunk_size, hashes = expect_list(item, 4, "manifest entry")
            path = expect_str(path, MAX_PATH_BYTES, "entry path")
            check_relative_path(path)
            info = FileInfo(expect_int(size, 0, 2**63, "entry size"),
                            expect_int(chunk_size, 1, 2**63, "entry chunk size"),
                            expect_bytes(hashes, None, "entry hashes"))
            entries.append(FileEntry(path, info))
        publisher = PeerId(expect_bytes(fields[4], 32, "manifest publisher"))
        signature = expect_bytes(fields[5], SIGNATURE_LEN, "manifest signature")
        manifest = cls(kind, name, tuple(entries), publisher, signature)
        _check_entries(kind, name, manifest.entries)
        return manifest

    def verify(self, expected: ContentId, required_publisher: PeerId | None = None) -> None:
        """Check everything a downloader needs before trusting this manifest.

        Raises :class:`ContentIdMismatch` if the entries do not hash to
        ``expected``, :class:`BadSignature` if the signature fails, and
        :class:`WrongPublisher` if ``required_publisher`` is given and differs.
        """
        if self.content_id != expected:
            raise ContentIdMismatch(f"manifest describes {self.content_id}, not the requested {expected}")
        self.publisher.verify(self.signature, SIGNING_PREFIX + pack(self._body()))
        if required_publisher is not None and self.publisher != required_publisher:
            raise WrongPublisher(f"content is published by {self.publisher}, not by the required {required_publisher}")


def _check_entries(kind: str, name: str, entries: Sequence[FileEntry]) -> None:
    if kind == "file":
        if len(entries) != 1 or entries[0].path != name:
            raise DecodeError("a file manifest has exactly one entry, named like the manifest")
        return
    paths = [e.path for e in entries]
    if paths != sorted(paths) or len(set(paths)) != len(paths):
        raise DecodeError("directory entries must be sorted and unique")
    # A file may not also be a folder of another entry ("a" and "a/b").
    as_dirs = {p + "/" for p in paths}
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) + "/" in as_dirs:
                raise DecodeError(f"entry {p!r} lies inside another file entry")
    if sum(e.info.chunk_count for e in entries) > MAX_TOTAL_CHUNKS:
        raise DecodeError("directory manifest has too many chunks")


def sign_manifest(identity: Identity, kind: str, name: str, entries: Sequence[FileEntry]) -> Manifest:
    """Build and sign a manifest over ``entries`` (sorted here), validating it as a decoder would."""
    ordered = tuple(sorted(entries, key=lambda e: e.path))
    unsigned = Manifest(kind, name, ordered, identity.peer_id, b"\0" * SIGNATURE_LEN)
    signature = identity.sign(SIGNING_PREFIX + pack(unsigned._body()))
    manifest = Manifest(kind, name, ordered, identity.peer_id, signature)
    check_relative_path(name)
    _check_entries(kind, name, ordered)
    return manifest


def scan_directory(root: Path) -> list[tuple[str, Path]]:
    """The regular files under ``root`` as (relative ``/`` path, absolute path), sorted.

    Symlinks and special files are skipped (sharing what a link points to
    would surprise people); every name must pass the same path check a
    downloader applies, so what we publish can be fetched.
    """
    found: list[tuple[str, Path]] = []
    folders = [("", os.fspath(root))]
    while folders:  # os.scandir, not os.walk: the entry types come with the listing, no lstat per file
        prefix, folder = folders.pop()
        try:
            listing = os.scandir(folder)
        except OSError:
            continue  # an unreadable folder is skipped, as os.walk does
        with listing:
            for item in listing:
                if item.is_dir(follow_symlinks=False):
                    folders.append((prefix + item.name + "/", item.path))
                elif item.is_file(follow_symlinks=False):
                    rel = prefix + item.name
                    try:
                        check_relative_path(rel)
                    except UnsafePath as exc:
                        raise BadInput(f"cannot share {item.path}: {exc}") from None
                    found.append((rel, Path(item.path)))
    found.sort()
    return found


def build_manifest(
    path: Path,
    identity: Identity,
    progress: Callable[[int], None] | None = None,
) -> tuple[Manifest, list[tuple[FileEntry, Path]]]:
    """Hash a file or directory and sign its manifest.

    Returns the manifest and, for each entry, the file it was hashed from (the
    store serves those files in place). ``progress(n)`` gets bytes hashed.
    """
    path = Path(path)
    if path.is_dir():
        files = scan_directory(path)
        infos = hash_files([full for _, full in files], progress)  # one pool for the whole folder
        pairs = [(FileEntry(rel, info), full) for (rel, full), info in zip(files, infos, strict=True)]
        name = path.resolve().name or "root"
        manifest = sign_manifest(identity, "dir", name, [e for e, _ in pairs])
        return manifest, pairs
    if not path.is_file():
        raise BadInput(f"{path} is neither a file nor a folder")
    entry = FileEntry(path.name, hash_file(path, progress))
    return sign_manifest(identity, "file", path.name, [entry]), [(entry, path)]
