"""Signed file and directory manifests (p2p.content.manifest)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.content import (
    MAX_MANIFEST_BYTES,
    ContentId,
    FileEntry,
    Manifest,
    build_manifest,
    directory_id,
    hash_bytes,
    sign_manifest,
)
from p2p.content.manifest import MAX_ENTRIES, SIGNING_PREFIX
from p2p.encoding import pack
from p2p.errors import (
    BadInput,
    BadSignature,
    ContentIdMismatch,
    DecodeError,
    UnsafePath,
    WrongPublisher,
)
from p2p.identity import Identity

ALICE = Identity.from_seed(b"\xa1" * 32)
BOB = Identity.from_seed(b"\xb0" * 32)
MALLORY = Identity.from_seed(b"\x66" * 32)

TREE = {
    "readme.txt": b"hello\n",
    "empty": b"",
    "docs/guide.md": b"# guide\n" * 100,
    "docs/img/logo.bin": random.Random(3).randbytes(70_000),  # two chunks
    "docs.txt": b"sorts between 'docs' and 'docs/'",
    "z/y/x/deep.dat": b"\x00" * 1000,
}


def _make_tree(root: Path, files: dict[str, bytes] = TREE) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path, hash_bytes(data))


def _small_dir_manifest() -> Manifest:
    return sign_manifest(ALICE, "dir", "photos", [
        _entry("a.txt", b"alpha"), _entry("b/c.txt", b"charlie" * 10), _entry("b/d", b""),
    ])


SMALL_DIR = _small_dir_manifest()
SMALL_FILE = sign_manifest(ALICE, "file", "notes.txt", [_entry("notes.txt", b"some notes\n" * 9)])


def _raw(kind: str = "dir", name: str = "n", entries: list[list[object]] | None = None,
         publisher: bytes = ALICE.public_key, signature: bytes = b"\x00" * 64,
         version: int = 1) -> bytes:
    if entries is None:
        entries = [["a", 0, 65536, b""]]
    return pack([version, kind, name, entries, publisher, signature])


# -- round trips ----------------------------------------------------------------------


def test_file_manifest_round_trip(tmp_path: Path) -> None:
    data = os.urandom(150_000)
    path = tmp_path / "movie.bin"
    path.write_bytes(data)
    seen: list[int] = []
    manifest, pairs = build_manifest(path, ALICE, seen.append)
    assert sum(seen) == len(data)
    assert manifest.kind == "file"
    assert manifest.name == "movie.bin"
    assert [(e.path, p) for e, p in pairs] == [("movie.bin", path)]
    assert manifest.content_id == hash_bytes(data).content_id
    assert manifest.total_size == len(data)
    assert manifest.chunk_count == 3
    decoded = Manifest.decode(manifest.encode())
    assert decoded == manifest
    assert decoded.encode() == manifest.encode()
    decoded.verify(manifest.content_id)
    decoded.verify(manifest.content_id, ALICE.peer_id)


def test_directory_manifest_round_trip(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "share")
    manifest, pairs = build_manifest(root, ALICE)
    assert manifest.kind == "dir"
    assert manifest.name == "share"
    assert [e.path for e in manifest.entries] == sorted(TREE)
    assert {e.path: p for e, p in pairs} == {rel: root / rel for rel in TREE}
    assert manifest.total_size == sum(len(d) for d in TREE.values())
    decoded = Manifest.decode(manifest.encode())
    assert decoded == manifest
    decoded.verify(manifest.content_id, ALICE.peer_id)
    assert manifest.content_id == directory_id(manifest.entries)


def test_empty_directory_round_trip(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    manifest, pairs = build_manifest(tmp_path / "nothing", ALICE)
    assert manifest.entries == () and list(pairs) == []
    Manifest.decode(manifest.encode()).verify(manifest.content_id, ALICE.peer_id)


def test_directory_skips_symlinks_and_refuses_unshareable_names(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "share", {"real.txt": b"x"})
    (root / "link.txt").symlink_to(root / "real.txt")
    (root / "linkdir").symlink_to(tmp_path)
    manifest, _ = build_manifest(root, ALICE)
    assert [e.path for e in manifest.entries] == ["real.txt"]
    (root / "bad:name").write_bytes(b"y")
    with pytest.raises(BadInput, match="cannot share"):
        build_manifest(root, ALICE)


def test_build_manifest_of_missing_path(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="neither a file nor a folder"):
        build_manifest(tmp_path / "missing", ALICE)


# -- ids ------------------------------------------------------------------------------


def test_same_tree_same_id_whoever_shares_it_and_whatever_the_folder_name(tmp_path: Path) -> None:
    a, _ = build_manifest(_make_tree(tmp_path / "holiday"), ALICE)
    b, _ = build_manifest(_make_tree(tmp_path / "copy of holiday"), BOB)
    assert a.content_id == b.content_id
    assert a.encode() != b.encode()  # different names, publishers and signatures...
    b.verify(a.content_id, BOB.peer_id)  # ...each verifies against the shared id


def test_changed_tree_changes_id(tmp_path: Path) -> None:
    base, _ = build_manifest(_make_tree(tmp_path / "a"), ALICE)
    renamed = dict(TREE)
    renamed["readme2.txt"] = renamed.pop("readme.txt")
    edited = dict(TREE, **{"docs/guide.md": b"# guide\n" * 99 + b"# guidf\n"})
    fewer = {k: v for k, v in TREE.items() if k != "empty"}
    ids = {base.content_id}
    for i, files in enumerate((renamed, edited, fewer)):
        m, _ = build_manifest(_make_tree(tmp_path / f"v{i}", files), ALICE)
        ids.add(m.content_id)
    assert len(ids) == 4


def test_each_file_keeps_its_own_file_id(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "share")
    manifest, _ = build_manifest(root, ALICE)
    alone = tmp_path / "alone"
    alone.mkdir()
    for entry in manifest.entries:
        single = alone / entry.path.replace("/", "_")
        single.write_bytes(TREE[entry.path])
        file_manifest, _ = build_manifest(single, BOB)
        assert entry.content_id == file_manifest.content_id
    assert manifest.content_id not in {e.content_id for e in manifest.entries}


def test_file_and_directory_ids_differ() -> None:
    # A folder holding one file is not the same content as the file.
    entry = _entry("x", b"data")
    assert directory_id([entry]) != entry.content_id


# -- verification -----------------------------------------------------------------------


def test_wrong_required_publisher() -> None:
    with pytest.raises(WrongPublisher):
        SMALL_DIR.verify(SMALL_DIR.content_id, BOB.peer_id)


def test_verify_against_a_different_id() -> None:
    with pytest.raises(ContentIdMismatch):
        SMALL_DIR.verify(SMALL_FILE.content_id)
    with pytest.raises(ContentIdMismatch):
        SMALL_DIR.verify(ContentId(b"\x00" * 32), ALICE.peer_id)


@pytest.mark.parametrize("original", [SMALL_DIR, SMALL_FILE], ids=["dir", "file"])
def test_forged_signature_claiming_the_publisher(original: Manifest) -> None:
    """Mallory signs the exact body that names Alice as publisher, with Mallory's key."""
    body = pack([1, original.kind, original.name,
                 [[e.path, e.info.size, e.info.chunk_size, e.info.hashes] for e in original.entries],
                 ALICE.public_key])
    forged = Manifest(original.kind, original.name, original.entries, ALICE.peer_id,
                      MALLORY.sign(SIGNING_PREFIX + body))
    decoded = Manifest.decode(forged.encode())
    with pytest.raises(BadSignature):
        decoded.verify(original.content_id)
    with pytest.raises(BadSignature):
        decoded.verify(original.content_id, ALICE.peer_id)


def test_signature_without_domain_prefix_is_refused() -> None:
    body = pack([1, SMALL_DIR.kind, SMALL_DIR.name,
                 [[e.path, e.info.size, e.info.chunk_size, e.info.hashes] for e in SMALL_DIR.entries],
                 ALICE.public_key])
    unprefixed = Manifest(SMALL_DIR.kind, SMALL_DIR.name, SMALL_DIR.entries, ALICE.peer_id,
                          ALICE.sign(body))
    with pytest.raises(BadSignature):
        Manifest.decode(unprefixed.encode()).verify(SMALL_DIR.content_id)


def test_renaming_a_signed_manifest_breaks_the_signature() -> None:
    renamed = Manifest("dir", "other", SMALL_DIR.entries, SMALL_DIR.publisher, SMALL_DIR.signature)
    with pytest.raises(BadSignature):
        Manifest.decode(renamed.encode()).verify(SMALL_DIR.content_id)


def _flip_outcome(encoded: bytes, expected: ContentId, pos: int, xor: int) -> str:
    data = bytearray(encoded)
    data[pos] ^= xor
    try:
        decoded = Manifest.decode(bytes(data))
    except (DecodeError, UnsafePath):
        return "decode"
    try:
        decoded.verify(expected, ALICE.peer_id)
    except (ContentIdMismatch, BadSignature):
        return "verify"
    return "PASSED"


@pytest.mark.parametrize("original", [SMALL_DIR, SMALL_FILE], ids=["dir", "file"])
@given(data=st.data())
def test_one_flipped_byte_anywhere_never_passes(original: Manifest, data: st.DataObject) -> None:
    encoded = original.encode()
    pos = data.draw(st.integers(0, len(encoded) - 1), label="pos")
    xor = data.draw(st.integers(1, 255), label="xor")
    assert _flip_outcome(encoded, original.content_id, pos, xor) != "PASSED"


@pytest.mark.parametrize("original", [SMALL_DIR, SMALL_FILE], ids=["dir", "file"])
def test_every_single_bit_flip_is_caught(original: Manifest) -> None:
    encoded = original.encode()
    outcomes = {_flip_outcome(encoded, original.content_id, pos, 1 << bit)
                for pos in range(len(encoded)) for bit in range(8)}
    assert outcomes == {"decode", "verify"}


# -- decoder limits -------------------------------------------------------------------------


def test_decoder_accepts_the_helper_baseline() -> None:
    # The hand-built encodings below differ from this one in one respect each.
    manifest = Manifest.decode(_raw())
    assert [e.path for e in manifest.entries] == ["a"]


def test_oversize_manifest() -> None:
    with pytest.raises(DecodeError, match="larger than"):
        Manifest.decode(SMALL_DIR.encode() + b"\x00" * MAX_MANIFEST_BYTES)


def test_too_many_entries() -> None:
    entries: list[list[object]] = [[f"f{i:06d}", 0, 65536, b""] for i in range(MAX_ENTRIES + 1)]
    data = _raw(entries=entries)
    assert len(data) < MAX_MANIFEST_BYTES
    with pytest.raises(DecodeError):
        Manifest.decode(data)
    Manifest.decode(_raw(entries=entries[:MAX_ENTRIES]))  # the limit itself is fine


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        pytest.param([["b", 0, 65536, b""], ["a", 0, 65536, b""]], "sorted and unique", id="unsorted"),
        pytest.param([["a", 0, 65536, b""], ["a", 0, 65536, b""]], "sorted and unique", id="duplicate"),
        pytest.param([["a", 0, 65536, b""], ["a/b", 0, 65536, b""]], "inside another", id="nested"),
        pytest.param([["a", 0, 65536, b""], ["a/b/c", 0, 65536, b""]], "inside another",
                     id="nested-deep"),
        pytest.param([["a", 1, 65536, b""]], "hash list", id="missing-hash"),
        pytest.param([["a", 0, 1000, b""]], "chunk size", id="chunk-size"),
        pytest.param([["a", 0, 65536]], "expected 4 fields", id="short-entry"),
        pytest.param([["a", -1, 65536, b""]], "entry size", id="negative-size"),
        pytest.param([["a", True, 65536, b""]], "entry size", id="bool-size"),
        pytest.param([[b"a", 0, 65536, b""]], "entry path", id="bytes-path"),
        pytest.param([["a", 0, 65536, "x"]], "entry hashes", id="text-hashes"),
    ],
)
def test_bad_entries(entries: list[list[object]], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Manifest.decode(_raw(entries=entries))


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a//b", "a/./b", "C:x", "a\\b", "nul", "x.", "a\x00b"]
)
def test_unsafe_entry_paths(path: str) -> None:
    with pytest.raises(UnsafePath):
        Manifest.decode(_raw(entries=[[path, 0, 65536, b""]]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(_raw(version=3), "unsupported manifest version", id="version"),
        pytest.param(_raw(kind="link"), "unknown manifest kind", id="kind"),
        pytest.param(_raw(kind="file", name="b"), "exactly one entry", id="file-name-mismatch"),
        pytest.param(_raw(kind="file", name="a", entries=[["a", 0, 65536, b""]] * 2), "exactly one",
                     id="file-two-entries"),
        pytest.param(_raw(kind="file", name="a", entries=[]), "exactly one", id="file-no-entries"),
        pytest.param(_raw(publisher=b"\x01" * 31), "publisher", id="short-publisher"),
        pytest.param(_raw(signature=b"\x01" * 63), "signature", id="short-signature"),
        pytest.param(pack([1, "dir", "n", [], ALICE.public_key]), "expected 6 fields", id="5-fields"),
        pytest.param(b"\x81\xa1v\x01", "malformed", id="map"),
        pytest.param(b"", "malformed", id="empty"),
        pytest.param(_raw() + b"\x00", "malformed", id="trailing-byte"),
        pytest.param(_raw(name="x" * 256), "manifest name", id="long-name"),
    ],
)
def test_malformed_manifests(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Manifest.decode(data)


def test_name_with_a_slash_is_unsafe() -> None:
    with pytest.raises(UnsafePath, match="single path component"):
        Manifest.decode(_raw(name="a/b"))
    with pytest.raises(UnsafePath):
        Manifest.decode(_raw(name=".."))


def test_non_canonical_encoding() -> None:
    canonical = SMALL_DIR.encode()
    assert canonical[:2] == b"\x96\x01"  # fixarray(6), fixint version 1
    longer_version = b"\x96\xcc\x01" + canonical[2:]
    with pytest.raises(DecodeError, match="non-canonical"):
        Manifest.decode(longer_version)
    # The same manifest, with the name "photos" written as str8 instead of fixstr.
    i = canonical.index(b"\xa6photos")
    longer_name = canonical[:i] + b"\xd9\x06photos" + canonical[i + 7:]
    with pytest.raises(DecodeError, match="non-canonical"):
        Manifest.decode(longer_name)


def test_sign_manifest_validates_like_the_decoder() -> None:
    with pytest.raises(DecodeError, match="inside another"):
        sign_manifest(ALICE, "dir", "n", [_entry("a", b"1"), _entry("a/b", b"2")])
    with pytest.raises(UnsafePath):
        sign_manifest(ALICE, "dir", "..", [_entry("a", b"1")])
    # Entries are sorted by sign_manifest, whatever order they come in.
    m = sign_manifest(ALICE, "dir", "n", [_entry("b", b"2"), _entry("a", b"1")])
    assert [e.path for e in m.entries] == ["a", "b"]
    Manifest.decode(m.encode()).verify(m.content_id, ALICE.peer_id)


def test_a_folder_is_hashed_with_one_pool_and_the_same_ids(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small files, a medium and a large one (split into several tasks): one thread pool for
    the whole folder, progress adding up to every byte, and every entry the id of its bytes."""
    from p2p.content import chunking

    root = tmp_path / "mixed"
    sizes = [0, 1, 4096, 65 * 1024, 1024 * 1024, 1024 * 1024 + 1, 70 * 1024 * 1024 + 3]
    sizes += [random.Random(i).randrange(1, 5000) for i in range(600)]
    datas = {}
    for i, size in enumerate(sizes):
        rel = f"d{i % 7}/f{i:04d}"
        datas[rel] = random.Random(i).randbytes(size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(datas[rel])
    pools = []
    real_pool = chunking.ThreadPoolExecutor

    def counted(*args: object, **kwargs: object) -> object:
        pools.append(1)
        return real_pool(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chunking, "ThreadPoolExecutor", counted)
    seen: list[int] = []
    manifest, pairs = build_manifest(root, ALICE, seen.append)
    assert len(pools) == 1
    assert sum(seen) == sum(sizes)
    assert len(manifest.entries) == len(sizes)
    for entry in manifest.entries:
        assert entry.info == hash_bytes(datas[entry.path])
    one_thread = chunking.hash_files([path for _, path in pairs], threads=1)
    assert one_thread == [entry.info for entry in manifest.entries]


def test_a_folder_hash_stops_when_progress_raises(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(2000):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"f{i}").write_bytes(b"x" * 3000)
    calls = []

    def cancel(n: int) -> None:
        calls.append(n)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_manifest(root, ALICE, cancel)
    assert len(calls) == 1
