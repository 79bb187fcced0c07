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

**Listed directories (format version 2).** A folder whose entries do not fit one manifest
(more than :data:`MAX_ENTRIES` files, or an entry list past :data:`INLINE_ENTRIES_MAX_BYTES`)
is described in two parts::

    listing  = pack([[path, size, chunk_size, hashes], ...])   # the same entry list, alone
    body     = [LISTED_FORMAT_VERSION, "dir", name, [size, chunk_size, hashes], publisher_key]
    manifest = body + [signature]                             # the root: small, sent as one message

The listing is chunked and hashed like any file (:func:`~p2p.content.chunking.hash_bytes`); the
root carries its size, chunk size and chunk hashes, so a downloader fetches it in verified
pieces, from many peers, each checked before it is used. The directory's id is BLAKE3 over
``pack([LISTED_FORMAT_VERSION, "dir", listing_file_id])``. Which form a folder takes depends
only on its entries, never on its name or publisher, so the same tree shared by this software
still has one id; every file keeps its own file id in both forms. (A decoder accepts a listed
directory of any size: a publisher who lists a small folder only gives it a second id.)

:meth:`Manifest.verify` is the check a downloader runs before it trusts
anything: the entries hash to the id that was asked for
(:class:`ContentIdMismatch`), the signature verifies (:class:`BadSignature`),
and the publisher is the required one (:class:`WrongPublisher`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import overload

import blake3

from ..encoding import (
    expect_bytes,
    expect_int,
    expect_list,
    expect_str,
    pack,
    unpack_canonical,
    unpack_rows,
)
from ..errors import BadInput, ContentIdMismatch, DecodeError, UnsafePath, WrongPublisher
from ..identity import SIGNATURE_LEN, Identity, PeerId
from .chunking import (
    FORMAT_VERSION,
    HASH_LEN,
    MAX_CHUNKS,
    FileInfo,
    chunk_size_for,
    hash_bytes,
    hash_file,
    hash_files,
)
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
LISTED_FORMAT_VERSION = 2
"""The content format of a listed directory (see the module docstring)."""
INLINE_ENTRIES_MAX_BYTES = MAX_MANIFEST_BYTES - 4096
"""Largest encoded entry list carried inside a version 1 manifest: the rest of a manifest (a
name of at most 255 bytes, the key, the signature, headers) fits the 4 KiB left. A folder
whose entries encode to more, or that has more than :data:`MAX_ENTRIES` files, is listed."""
MAX_LISTING_BYTES = 512 * 1024 * 1024
"""Largest listing accepted: 2,000,000 entries of paths up to ~200 bytes. Bounded because a
downloader holds the whole listing (and one object per entry) in memory."""
MAX_LISTED_ENTRIES = 2_000_000
"""Most files in a listed directory: twice the million-file folders this format is for."""
MAX_LISTED_CHUNKS = 1 << 24
"""Most chunks over all entries of a listed directory: a bitfield of 2 MiB, within the wire's
largest control message."""


@dataclass(frozen=True, slots=True)
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
    """The content id of a version 1 directory: BLAKE3 over its sorted (path, file id, size) list."""
    listing = [[e.path, e.content_id.digest, e.info.size] for e in entries]
    return ContentId(blake3.blake3(pack([FORMAT_VERSION, "dir", listing])).digest())


def listed_directory_id(listing: FileInfo) -> ContentId:
    """The content id of a listed directory: BLAKE3 over its listing's file id."""
    return ContentId(blake3.blake3(
        pack([LISTED_FORMAT_VERSION, "dir", listing.content_id.digest])).digest())


def encode_listing(entries: Sequence[FileEntry]) -> bytes:
    """The canonical entry list of ``entries`` (sorted by path): a listed directory's listing,
    and what a version 1 manifest carries inline."""
    return pack([[e.path, e.info.size, e.info.chunk_size, e.info.hashes] for e in entries])


def _entry(path: object, size: object, chunk_size: object, hashes: object) -> FileEntry:
    """One entry, checked as a downloader must (safe path, sizes)."""
    path = expect_str(path, MAX_PATH_BYTES, "entry path")
    check_relative_path(path)
    return FileEntry(path, FileInfo(expect_int(size, 0, 2**63, "entry size"),
                                    expect_int(chunk_size, 1, 2**63, "entry chunk size"),
                                    expect_bytes(hashes, None, "entry hashes")))


def _entries_from(raw: object, max_entries: int) -> tuple[FileEntry, ...]:
    """Entries from a decoded entry list, each checked as a downloader must (safe path, sizes)."""
    entries = [_entry(*expect_list(item, 4, "manifest entry"))
               for item in expect_list(raw, None, "manifest entries")]
    if len(entries) > max_entries:
        raise DecodeError(f"more than {max_entries} entries")
    return tuple(entries)


def _listed_entries(listing: memoryview) -> tuple[FileEntry, ...]:
    """A listing's entries, each checked as it is read (:func:`~p2p.encoding.unpack_rows`: a
    listing is up to :data:`MAX_LISTING_BYTES`, and decoded whole before any check, a hostile
    one would cost dozens of times its size in memory), then its canonical form."""
    try:
        entries = tuple(_entry(*row) for row in unpack_rows(
            listing, width=4, max_rows=MAX_LISTED_ENTRIES, max_bin=MAX_CHUNKS * HASH_LEN,
            max_str=MAX_PATH_BYTES))
    except DecodeError as exc:
        raise DecodeError(f"manifest entries: {exc}") from None
    if encode_listing(entries) != listing:
        raise DecodeError("non-canonical encoding")
    return entries


def _listing_info(raw: object) -> FileInfo:
    size, chunk_size, hashes = expect_list(raw, 3, "manifest listing")
    info = FileInfo(expect_int(size, 1, MAX_LISTING_BYTES, "listing size"),
                    expect_int(chunk_size, 1, 2**63, "listing chunk size"),
                    expect_bytes(hashes, None, "listing hashes"))
    if info.chunk_size != chunk_size_for(info.size):
        raise DecodeError("listing chunk size is not the one its size gives")
    return info


@dataclass(frozen=True)
class Manifest:
    """A signed description of a file or directory. Build with :func:`build_manifest` or :meth:`decode`."""

    kind: str
    name: str
    entries: tuple[FileEntry, ...]
    publisher: PeerId
    signature: bytes
    listing: FileInfo | None = None
    """A listed directory's listing (size, chunk size, chunk hashes); None in version 1."""

    @property
    def version(self) -> int:
        """The content format: :data:`LISTED_FORMAT_VERSION` for a listed directory, else 1."""
        return FORMAT_VERSION if self.listing is None else LISTED_FORMAT_VERSION

    @cached_property
    def content_id(self) -> ContentId:
        """The id this manifest describes, computed from its entries (never trusted from outside).

        Computed once (the manifest is frozen): a folder's id hashes every entry, and a download
        asks for it with every commit."""
        if self.kind == "file":
            return self.entries[0].content_id
        if self.listing is not None:
            return listed_directory_id(self.listing)
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
        if self.listing is not None:
            return _listed_body(self.name, self.listing, self.publisher)
        return [FORMAT_VERSION, self.kind, self.name,
                [[e.path, e.info.size, e.info.chunk_size, e.info.hashes] for e in self.entries],
                self.publisher.key]

    def encode(self) -> bytes:
        """The canonical bytes of this manifest (what is stored and sent): for a listed
        directory, its root only (:meth:`encode_listing` gives the rest)."""
        return pack([*self._body(), self.signature])

    def encode_listing(self) -> bytes:
        """A listed directory's listing: the bytes :attr:`listing` describes."""
        if self.listing is None:
            raise ValueError("only a listed directory has a listing")
        return encode_listing(self.entries)

    def root(self) -> ListedRoot:
        """A listed directory's root, as a downloader first receives it."""
        if self.listing is None:
            raise ValueError("only a listed directory has a root")
        return ListedRoot(self.name, self.listing, self.publisher, self.signature)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and structurally validate version 1 manifest bytes. Raises :class:`DecodeError`
        or :class:`UnsafePath` (a listed directory's root too: use :func:`decode_manifest`).

        This checks the form only (field types, limits, safe paths, canonical
        encoding); call :meth:`verify` to check the id and the signature.
        """
        decoded = decode_manifest(data)
        if not isinstance(decoded, Manifest):
            raise DecodeError("a listed directory's root needs its listing")
        return decoded

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


def decode_manifest(data: bytes) -> Manifest | ListedRoot:
    """Parse and structurally validate what a Manifest message carries: a whole version 1
    manifest, or a listed directory's root (whose :meth:`ListedRoot.complete` takes the
    listing). Raises :class:`DecodeError` (also for a format version this code does not know)
    or :class:`UnsafePath`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise DecodeError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    raw = unpack_canonical(bytes(data), max_bin=MAX_CHUNKS * HASH_LEN,
                           max_str=MAX_PATH_BYTES, max_array=MAX_ENTRIES)
    fields = expect_list(raw, 6, "manifest")
    version = expect_int(fields[0], 0, 2**32, "manifest version")
    if version not in (FORMAT_VERSION, LISTED_FORMAT_VERSION):
        raise DecodeError(f"unsupported manifest version {version}")
    kind = expect_str(fields[1], 8, "manifest kind")
    if kind not in KINDS:
        raise DecodeError(f"unknown manifest kind {kind!r}")
    name = expect_str(fields[2], MAX_NAME_BYTES, "manifest name")
    check_relative_path(name)
    if "/" in name:
        raise UnsafePath("manifest name must be a single path component")
    publisher = PeerId(expect_bytes(fields[4], 32, "manifest publisher"))
    signature = expect_bytes(fields[5], SIGNATURE_LEN, "manifest signature")
    if version == LISTED_FORMAT_VERSION:
        if kind != "dir":
            raise DecodeError("only a directory is listed")
        return ListedRoot(name, _listing_info(fields[3]), publisher, signature)
    manifest = Manifest(kind, name, _entries_from(fields[3], MAX_ENTRIES), publisher, signature)
    _check_entries(kind, name, manifest.entries)
    return manifest


def _listed_body(name: str, listing: FileInfo, publisher: PeerId) -> list[object]:
    return [LISTED_FORMAT_VERSION, "dir", name, [listing.size, listing.chunk_size, listing.hashes],
            publisher.key]


@dataclass(frozen=True)
class ListedRoot:
    """A listed directory's signed root: its name, publisher and the listing's size and chunk
    hashes. :meth:`verify` it, fetch the listing's chunks (each checked with
    :meth:`FileInfo.verify_chunk` of :attr:`listing`), then :meth:`complete` it."""

    name: str
    listing: FileInfo
    publisher: PeerId
    signature: bytes

    @property
    def content_id(self) -> ContentId:
        """The id this root describes, computed from the listing's hashes."""
        return listed_directory_id(self.listing)

    @property
    def listing_id(self) -> ContentId:
        """The id its listing is asked for by (Request and Data carry it)."""
        return self.listing.content_id

    def verify(self, expected: ContentId, required_publisher: PeerId | None = None) -> None:
        """As :meth:`Manifest.verify`: the id, the signature, the publisher."""
        if self.content_id != expected:
            raise ContentIdMismatch(f"manifest describes {self.content_id}, not the requested {expected}")
        self.publisher.verify(self.signature, SIGNING_PREFIX + pack(_listed_body(self.name, self.listing,
                                                                                  self.publisher)))
        if required_publisher is not None and self.publisher != required_publisher:
            raise WrongPublisher(f"content is published by {self.publisher}, not by the required {required_publisher}")

    def complete(self, listing: bytes | bytearray | memoryview) -> Manifest:
        """The whole manifest, from the listing's bytes: each chunk is checked against the
        root's hashes (:class:`ContentIdMismatch` if one differs), then every entry as
        :meth:`Manifest.decode` checks them (:class:`DecodeError`, :class:`UnsafePath`)."""
        info, view = self.listing, memoryview(listing)
        if len(view) != info.size:
            raise ContentIdMismatch(f"listing is {len(view)} bytes, not {info.size}")
        for index in range(info.chunk_count):
            offset = info.chunk_offset(index)
            if not info.verify_chunk(index, view[offset:offset + info.chunk_length(index)]):
                raise ContentIdMismatch(f"listing chunk {index} does not match its hash")
        entries = _listed_entries(view)
        _check_entries("dir", self.name, entries, listed=True)
        return Manifest("dir", self.name, entries, self.publisher, self.signature, info)


def _check_entries(kind: str, name: str, entries: Sequence[FileEntry], *, listed: bool = False) -> None:
    """The rules on entries both forms share (a listed directory may have more chunks)."""
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
    most = MAX_LISTED_CHUNKS if listed else MAX_TOTAL_CHUNKS
    if sum(e.info.chunk_count for e in entries) > most:
        raise DecodeError("directory manifest has too many chunks")


def sign_manifest(identity: Identity, kind: str, name: str, entries: Sequence[FileEntry]) -> Manifest:
    """Build and sign a manifest over ``entries`` (sorted here), validating it as a decoder would.

    A folder too large for one manifest (:data:`INLINE_ENTRIES_MAX_BYTES`, :data:`MAX_ENTRIES`)
    becomes a listed directory (format version 2)."""
    ordered = tuple(sorted(entries, key=lambda e: e.path))
    check_relative_path(name)
    listing: FileInfo | None = None
    if kind == "dir":
        encoded = encode_listing(ordered)
        if len(ordered) > MAX_ENTRIES or len(encoded) > INLINE_ENTRIES_MAX_BYTES:
            if len(encoded) > MAX_LISTING_BYTES:
                raise BadInput(f"the folder's listing would be {len(encoded)} bytes; the limit "
                               f"is {MAX_LISTING_BYTES}")
            listing = hash_bytes(encoded)
        del encoded
    _check_entries(kind, name, ordered, listed=listing is not None)
    unsigned = Manifest(kind, name, ordered, identity.peer_id, b"\0" * SIGNATURE_LEN, listing)
    signature = identity.sign(SIGNING_PREFIX + pack(unsigned._body()))
    return Manifest(kind, name, ordered, identity.peer_id, signature, listing)


@dataclass(frozen=True, slots=True)
class LeftOut:
    """What a folder share leaves out, counted, so the person is told (the rule is in
    docs/cli.md, *What a folder share leaves out*).

    A manifest lists regular files only: a link could point anywhere (outside the folder,
    at a device), a folder is only the path of the files in it, and a file we may not read
    cannot be hashed or served.
    """

    symlinks: int = 0
    """Symbolic links, to files or folders: not followed."""
    empty_folders: int = 0
    """Folders with no shared file anywhere below them (the manifest has no entry for them)."""
    unreadable: int = 0
    """Files and folders we may not read (permission denied)."""
    special: int = 0
    """Sockets, FIFOs and device files."""

    @property
    def total(self) -> int:
        """Everything left out."""
        return self.symlinks + self.empty_folders + self.unreadable + self.special

    def describe(self) -> str:
        """'2 symlinks, 1 empty folder and 1 unreadable file or folder' ('' when nothing)."""
        parts = [f"{n} {word if n == 1 else many}" for n, word, many in (
            (self.symlinks, "symlink", "symlinks"),
            (self.empty_folders, "empty folder", "empty folders"),
            (self.unreadable, "unreadable file or folder", "unreadable files or folders"),
            (self.special, "special file (socket, FIFO or device)",
             "special files (sockets, FIFOs or devices)")) if n]
        return f"{', '.join(parts[:-1])} and {parts[-1]}" if len(parts) > 1 else "".join(parts)

    def to_json(self) -> dict[str, int]:
        """The ``left_out`` object of ``p2p share --json``."""
        return {"symlinks": self.symlinks, "empty_folders": self.empty_folders,
                "unreadable": self.unreadable, "special": self.special}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> LeftOut:
        """The counts of :meth:`to_json` (from a running node's answer); a count missing or
        not a count is 0."""

        def count(key: str) -> int:
            value = obj.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

        return cls(count("symlinks"), count("empty_folders"), count("unreadable"), count("special"))


def scan_directory(root: Path) -> tuple[list[tuple[str, str]], LeftOut]:
    """The regular files under ``root`` as (relative ``/`` path, path), sorted, and what was
    left out.

    Symlinks and special files are skipped (sharing what a link points to
    would surprise people), and so are folders we may not list; folders with no
    file below them have no entry in a manifest. Each is counted in the
    :class:`LeftOut`. Every name must pass the same path check a
    downloader applies, so what we publish can be fetched. Paths are text, not
    :class:`~pathlib.Path` objects: a folder of a million files holds a million.
    """
    found: list[tuple[str, str]] = []
    symlinks = unreadable = special = 0
    parents: list[int] = [-1]
    """The parent of each folder seen, by index (the root is 0): marking a folder that holds
    a file walks up until a folder already marked, so the count costs one step per folder."""
    kept = bytearray(1)
    folders = [("", os.fspath(root), 0)]
    while folders:  # os.scandir, not os.walk: the entry types come with the listing, no lstat per file
        prefix, folder, index = folders.pop()
        try:
            listing = os.scandir(folder)
        except OSError:
            unreadable += 1  # a folder we may not list is skipped, as os.walk does
            kept[index] = 1  # and not counted again as empty
            continue
        with listing:
            has_file = False
            for item in listing:
                if item.is_symlink():
                    symlinks += 1
                elif item.is_dir(follow_symlinks=False):
                    parents.append(index)
                    kept.append(0)
                    folders.append((prefix + item.name + "/", item.path, len(parents) - 1))
                elif item.is_file(follow_symlinks=False):
                    rel = prefix + item.name
                    try:
                        check_relative_path(rel)
                    except UnsafePath as exc:
                        raise BadInput(f"cannot share {item.path}: {exc}") from None
                    found.append((rel, item.path))
                    has_file = True
                else:
                    special += 1
            up = index if has_file else -1
            while up >= 0 and not kept[up]:
                kept[up] = 1
                up = parents[up]
    found.sort()
    empty = len(kept) - 1 - sum(kept[1:])  # the root itself is not counted
    return found, LeftOut(symlinks=symlinks, empty_folders=empty, unreadable=unreadable,
                          special=special)


def build_share_manifest(
    path: Path,
    identity: Identity,
    progress: Callable[[int], None] | None = None,
) -> tuple[Manifest, Sequence[tuple[FileEntry, Path]], LeftOut]:
    """:func:`build_manifest`, and what a folder share left out (:class:`LeftOut`): the
    scan's skips plus the files we may not read, found while hashing."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise BadInput(f"{path} is neither a file nor a folder")
        entry = FileEntry(path.name, hash_file(path, progress))
        return sign_manifest(identity, "file", path.name, [entry]), [(entry, path)], LeftOut()
    files, left_out = scan_directory(path)  # one pool of hashing threads for the whole folder
    unreadable: set[int] = set()
    infos = hash_files([full for _, full in files], progress, unreadable=unreadable)
    if unreadable:
        files = [f for pos, f in enumerate(files) if pos not in unreadable]
        left_out = dataclasses.replace(left_out, unreadable=left_out.unreadable + len(unreadable))
    entries = [FileEntry(rel, info) for (rel, _), info in zip(files, infos, strict=True)]
    del infos, files  # a million-file folder: each list is hundreds of MiB
    name = path.resolve().name or "root"
    manifest = sign_manifest(identity, "dir", name, entries)
    return manifest, FolderFiles(path, manifest.entries), left_out


class FolderFiles(Sequence[tuple[FileEntry, Path]]):
    """(entry, the file it was hashed from) for each entry of a folder, made when asked: the
    file is ``root / entry.path``, so a million-file folder holds no million paths."""

    def __init__(self, root: Path, entries: Sequence[FileEntry]) -> None:
        self._root = root
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> tuple[FileEntry, Path]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[FileEntry, Path]]: ...

    def __getitem__(self, index: int | slice) -> tuple[FileEntry, Path] | list[tuple[FileEntry, Path]]:
        if isinstance(index, slice):
            return [(entry, self._root / entry.path) for entry in self._entries[index]]
        entry = self._entries[index]
        return entry, self._root / entry.path


def build_manifest(
    path: Path,
    identity: Identity,
    progress: Callable[[int], None] | None = None,
) -> tuple[Manifest, Sequence[tuple[FileEntry, Path]]]:
    """Hash a file or directory and sign its manifest.

    Returns the manifest and, for each entry, the file it was hashed from (the
    store serves those files in place: for a folder, ``path / entry.path``, so
    :meth:`~p2p.store.Store.add_share` needs only the folder). ``progress(n)`` gets
    bytes hashed.
    """
    manifest, files, _ = build_share_manifest(path, identity, progress)
    return manifest, files
