"""Listed directories (content format 2): a folder past one manifest is a signed root plus a
listing fetched in verified chunks (p2p.content.manifest, p2p.swarm.listing)."""

from __future__ import annotations

import tracemalloc

import blake3
import pytest

from p2p.content import (
    FileEntry,
    FileInfo,
    ListedRoot,
    Manifest,
    decode_manifest,
    directory_id,
    hash_bytes,
    sign_manifest,
)
from p2p.content import manifest as manifest_module
from p2p.content.manifest import (
    INLINE_ENTRIES_MAX_BYTES,
    LISTED_FORMAT_VERSION,
    MAX_ENTRIES,
    MAX_LISTED_ENTRIES,
    SIGNING_PREFIX,
    encode_listing,
    listed_directory_id,
)
from p2p.encoding import pack
from p2p.errors import BadSignature, ContentIdMismatch, DecodeError, UnsafePath, WrongPublisher
from p2p.identity import Identity, PeerId
from p2p.swarm.listing import LISTING_PIPELINE, ListingFetch

ALICE = Identity.from_seed(b"\xa1" * 32)
BOB = Identity.from_seed(b"\xb0" * 32)
EMPTY = FileInfo(0, 65536, b"")


def _entries(count: int, data: bytes = b"") -> list[FileEntry]:
    info = hash_bytes(data) if data else EMPTY
    return [FileEntry(f"d{i // 1000:03d}/f{i:07d}", info) for i in range(count)]


@pytest.fixture
def small_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders of a few hundred bytes of entries are listed (a small listing, many chunks' worth
    of tests without a hundred thousand files)."""
    monkeypatch.setattr(manifest_module, "INLINE_ENTRIES_MAX_BYTES", 256)


def _listed(count: int = 5000, name: str = "photos", identity: Identity = ALICE) -> Manifest:
    manifest = sign_manifest(identity, "dir", name, _entries(count, b"x"))
    assert manifest.listing is not None
    return manifest


def _root_bytes(name: str, listing: bytes, identity: Identity = ALICE,
                chunk_size: int | None = None) -> bytes:
    """A root as the format describes it, built by hand (the encoder is not trusted here)."""
    info = hash_bytes(listing, chunk_size)
    body = [LISTED_FORMAT_VERSION, "dir", name, [info.size, info.chunk_size, info.hashes],
            identity.peer_id.key]
    return pack([*body, identity.sign(SIGNING_PREFIX + pack(body))])


# -- which form a folder takes -----------------------------------------------------------


def test_a_folder_within_one_manifest_stays_version_1() -> None:
    entries = _entries(1000, b"x")
    manifest = sign_manifest(ALICE, "dir", "small", entries)
    assert manifest.listing is None and manifest.version == 1
    assert manifest.content_id == directory_id(manifest.entries)  # old ids unchanged
    assert isinstance(decode_manifest(manifest.encode()), Manifest)


def test_more_files_than_one_manifest_holds_is_listed_and_round_trips() -> None:
    entries = _entries(MAX_ENTRIES + 1)
    manifest = sign_manifest(ALICE, "dir", "many", entries)
    assert manifest.version == LISTED_FORMAT_VERSION and manifest.listing is not None
    root_bytes = manifest.encode()
    assert len(root_bytes) < 64 * 1024  # the root is small whatever the folder
    listing = manifest.encode_listing()
    assert len(listing) > INLINE_ENTRIES_MAX_BYTES or len(entries) > MAX_ENTRIES
    assert manifest.listing == hash_bytes(listing)
    root = decode_manifest(root_bytes)
    assert isinstance(root, ListedRoot)
    root.verify(manifest.content_id, ALICE.peer_id)
    whole = root.complete(listing)
    assert whole.entries == manifest.entries and whole.content_id == manifest.content_id
    assert whole.total_size == 0 and whole.chunk_count == 0


def test_entries_too_large_for_one_manifest_are_listed() -> None:
    big = hash_bytes(b"\x01" * (1 << 20))  # 16 chunk hashes per entry
    entries = [FileEntry(f"f{i:06d}", big) for i in range(INLINE_ENTRIES_MAX_BYTES // 500)]
    manifest = sign_manifest(ALICE, "dir", "wide", entries)
    assert len(entries) < MAX_ENTRIES and manifest.listing is not None


def test_the_same_tree_has_one_id_whatever_its_name_or_publisher(small_inline: None) -> None:
    a = _listed(300, "holiday", ALICE)
    b = _listed(300, "other name", BOB)
    assert a.content_id == b.content_id
    assert a.encode() != b.encode()
    listing_id = FileInfo(len(a.encode_listing()), a.listing.chunk_size, a.listing.hashes).content_id  # type: ignore[union-attr]
    assert a.content_id == listed_directory_id(a.listing)  # type: ignore[arg-type]
    expected = blake3.blake3(pack([LISTED_FORMAT_VERSION, "dir", listing_id.digest])).digest()
    assert a.content_id.digest == expected
    # Each file keeps its own id in either form.
    assert a.entries[0].content_id == hash_bytes(b"x").content_id


def test_a_listed_and_an_inline_folder_of_the_same_tree_differ_only_in_form(
        monkeypatch: pytest.MonkeyPatch) -> None:
    inline = sign_manifest(ALICE, "dir", "t", _entries(50, b"x"))
    monkeypatch.setattr(manifest_module, "INLINE_ENTRIES_MAX_BYTES", 256)
    listed = sign_manifest(ALICE, "dir", "t", _entries(50, b"x"))
    assert inline.listing is None and listed.listing is not None
    assert inline.entries == listed.entries
    assert inline.content_id != listed.content_id  # the format is part of the id


# -- what a downloader checks -------------------------------------------------------------


def test_root_verify_checks_id_signature_and_publisher(small_inline: None) -> None:
    manifest = _listed(300)
    root = decode_manifest(manifest.encode())
    assert isinstance(root, ListedRoot)
    with pytest.raises(ContentIdMismatch):
        root.verify(_listed(301).content_id)
    with pytest.raises(WrongPublisher):
        root.verify(manifest.content_id, BOB.peer_id)
    forged = ListedRoot(root.name + "x", root.listing, root.publisher, root.signature)
    with pytest.raises(BadSignature):
        forged.verify(manifest.content_id)


def test_complete_refuses_a_listing_that_does_not_match_its_hashes(small_inline: None) -> None:
    manifest = _listed(3000)
    root = manifest.root()
    listing = bytearray(manifest.encode_listing())
    assert root.listing.chunk_count >= 2
    listing[-1] ^= 1
    with pytest.raises(ContentIdMismatch, match="chunk"):
        root.complete(listing)
    with pytest.raises(ContentIdMismatch, match="bytes"):
        root.complete(bytes(listing) + b"\x00")


@pytest.mark.parametrize(("rows", "error", "message"), [
    pytest.param([["../escape", 1, 65536, bytes(32)]], UnsafePath, None, id="dot-dot"),
    pytest.param([["/etc/passwd", 1, 65536, bytes(32)]], UnsafePath, None, id="absolute"),
    pytest.param([["a\\b", 1, 65536, bytes(32)]], UnsafePath, None, id="backslash"),
    pytest.param([["b", 0, 65536, b""], ["a", 0, 65536, b""]], DecodeError, "sorted", id="unsorted"),
    pytest.param([["a", 0, 65536, b""], ["a", 0, 65536, b""]], DecodeError, "sorted", id="duplicate"),
    pytest.param([["a", 0, 65536, b""], ["a/b", 0, 65536, b""]], DecodeError, "inside", id="file-as-folder"),
    pytest.param([["a", 10**9, 65536, bytes(32)]], DecodeError, "hash list", id="size-lies"),
    pytest.param([["a", 5, 1000, bytes(32)]], DecodeError, "chunk size", id="bad-chunk-size"),
    pytest.param([["a", 5, 65536]], DecodeError, "fields", id="short-entry"),
])
def test_a_hostile_listing_signed_by_its_publisher_is_refused(
        rows: list[list[object]], error: type[Exception], message: str | None) -> None:
    listing = pack(rows)
    root = decode_manifest(_root_bytes("evil", listing))
    assert isinstance(root, ListedRoot)
    root.verify(root.content_id)  # the root itself is fine: the listing is what lies
    with pytest.raises(error, match=message):
        root.complete(listing)


def test_a_listing_with_more_entries_than_the_limit_is_refused() -> None:
    # The count is checked by the decoder's array limit before any entry is built.
    listing = b"\xdd" + (MAX_LISTED_ENTRIES + 1).to_bytes(4, "big") + pack(["a", 0, 65536, b""])
    root = decode_manifest(_root_bytes("many", listing))
    assert isinstance(root, ListedRoot)
    with pytest.raises(DecodeError):
        root.complete(listing)


@pytest.mark.parametrize(("listing", "message"), [
    pytest.param(pack([["a", 0, 65536, b""]]) + b"\x00", "trailing", id="trailing-bytes"),
    pytest.param(pack([[["a"], 0, 65536, b""]]), "malformed", id="list-for-a-path"),
    pytest.param(pack([["a", 0, 65536, b""]])[:-1], "malformed", id="cut-short"),
    pytest.param(pack("a"), "malformed", id="not-a-list"),
    pytest.param(b"\x91\xca\x00\x00\x00\x00", "malformed", id="float-entry"),
])
def test_a_listing_that_is_not_a_list_of_entries_is_refused(listing: bytes, message: str) -> None:
    root = decode_manifest(_root_bytes("bad", listing))
    assert isinstance(root, ListedRoot)
    with pytest.raises(DecodeError, match=message):
        root.complete(listing)


@pytest.mark.parametrize("item", [
    pytest.param(b"\x9f" + b"\x90" * 15, id="nested-empty-lists"),
    pytest.param(b"\x9f" + b"\xa2ab" * 15, id="short-strings"),
])
def test_a_hostile_listing_costs_no_more_memory_than_its_size(item: bytes) -> None:
    # Signed by its publisher (the only one who can make the listing match the id), 1 MiB of
    # one-byte empty lists or three-byte strings: decoded whole first, each byte or three is a
    # Python object of 50 to 70 bytes (a 512 MiB listing: some 30 GiB). Each entry is checked
    # as it is read, so the first bad one ends it.
    count = (1 << 20) // len(item)
    listing = b"\xdd" + count.to_bytes(4, "big") + item * count
    root = decode_manifest(_root_bytes("deep", listing))
    assert isinstance(root, ListedRoot)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            root.complete(listing)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(listing), f"decoding a {len(listing)} byte listing peaked at {peak} bytes"


@pytest.mark.parametrize(("fields", "message"), [
    pytest.param(lambda info, pub: [2, "file", "x", info, pub], "only a directory", id="listed-file"),
    pytest.param(lambda info, pub: [2, "dir", "x", info[:2], pub], "fields", id="short-listing"),
    pytest.param(lambda info, pub: [2, "dir", "x", [info[0], 1 << 20, info[2]], pub], "chunk size",
                 id="chunk-size-not-the-rule"),
    pytest.param(lambda info, pub: [2, "dir", "x", [0, 65536, b""], pub], "listing size", id="empty"),
    pytest.param(lambda info, pub: [2, "dir", "x", [(512 << 20) + 1, 1 << 20, b""], pub],
                 "listing size", id="too-large"),
])
def test_malformed_roots_are_refused(fields: object, message: str) -> None:
    info = hash_bytes(pack([["a", 0, 65536, b""]]))
    body = fields([info.size, info.chunk_size, info.hashes], ALICE.peer_id.key)  # type: ignore[operator]
    data = pack([*body, ALICE.sign(SIGNING_PREFIX + pack(body))])
    with pytest.raises(DecodeError, match=message):
        decode_manifest(data)


def test_manifest_decode_refuses_a_root_without_its_listing(small_inline: None) -> None:
    with pytest.raises(DecodeError, match="listing"):
        Manifest.decode(_listed(300).encode())


def test_unknown_format_versions_are_refused() -> None:
    info = hash_bytes(b"x")
    body = [3, "dir", "x", [info.size, info.chunk_size, info.hashes], ALICE.peer_id.key]
    with pytest.raises(DecodeError, match="unsupported manifest version 3"):
        decode_manifest(pack([*body, ALICE.sign(SIGNING_PREFIX + pack(body))]))


# -- ListingFetch: pure planning over the peers that sent the root --------------------------

P1, P2, P3 = (PeerId(bytes([i]) * 32) for i in (1, 2, 3))


def _fetch(chunks: int = 12) -> tuple[ListingFetch, bytes]:
    data = bytes(range(256)) * (chunks * 65536 // 256)
    info = hash_bytes(data)
    assert info.chunk_count == chunks
    return ListingFetch(ListedRoot("x", info, ALICE.peer_id, bytes(64))), data


def _chunk(data: bytes, index: int) -> bytes:
    return data[index * 65536:(index + 1) * 65536]


def test_listing_chunks_spread_over_every_peer_and_verify() -> None:
    fetch, data = _fetch()
    for peer in (P1, P2, P3):
        fetch.add_peer(peer)
    planned = fetch.plan(0.0)
    assert len(planned) == 3 * LISTING_PIPELINE  # twelve chunks, four per peer
    assert {peer for peer, _ in planned} == {P1, P2, P3}
    assert sorted(index for _, index in planned) == list(range(12))
    assert fetch.plan(0.0) == []  # everyone is busy
    for peer, index in planned:
        assert fetch.on_data(peer, index, _chunk(data, index)) is True
    assert fetch.complete and bytes(fetch.buffer) == data


def test_unasked_and_bad_listing_chunks() -> None:
    fetch, data = _fetch(2)
    fetch.add_peer(P1)
    (_, first), (_, second) = fetch.plan(0.0)
    assert fetch.on_data(P2, first, _chunk(data, first)) is None  # never asked of P2
    assert fetch.on_data(P1, first, _chunk(data, first)) is True
    assert fetch.on_data(P1, first, _chunk(data, first)) is None  # a second copy
    assert fetch.on_data(P1, second, b"\x00" * 65536) is False
    assert not fetch.complete
    fetch.remove_peer(P1)  # the caller bans it
    fetch.add_peer(P2)
    assert fetch.plan(1.0) == [(P2, second)]  # the bad chunk is asked of another


def test_a_refusing_peer_is_asked_nothing_more() -> None:
    fetch, _ = _fetch(8)
    fetch.add_peer(P1)
    fetch.add_peer(P2)
    planned = fetch.plan(0.0)
    refused = next(index for peer, index in planned if peer == P1)
    assert fetch.on_reject(P1, refused) is True
    assert fetch.on_reject(P1, refused) is False
    again = fetch.plan(0.0)
    assert again == []  # P2 is full, P1 is gone
    assert fetch.peers == 1


def test_a_silent_peer_loses_its_chunks_to_others_after_one_timeout() -> None:
    fetch, data = _fetch(8)
    fetch.add_peer(P1)
    fetch.add_peer(P2)
    planned = fetch.plan(0.0)
    for peer, index in planned:
        if peer == P2:
            assert fetch.on_data(P2, index, _chunk(data, index))
    assert fetch.next_deadline(15.0) == 15.0
    assert fetch.expire(14.9, 15.0) == []
    expired = fetch.expire(15.0, 15.0)
    assert {peer for peer, _ in expired} == {P1} and len(expired) == LISTING_PIPELINE
    assert fetch.peers == 1
    replanned = fetch.plan(15.0)
    assert {peer for peer, _ in replanned} == {P2}
    for peer, index in replanned:
        assert fetch.on_data(peer, index, _chunk(data, index))
    assert fetch.complete


def test_a_lone_slow_peer_is_asked_again() -> None:
    fetch, _ = _fetch(2)
    fetch.add_peer(P1)
    first = fetch.plan(0.0)
    assert len(fetch.expire(20.0, 15.0)) == len(first)
    assert fetch.peers == 1
    assert sorted(fetch.plan(20.0)) == sorted(first)


def test_encode_listing_is_the_entry_list_of_a_version_1_manifest() -> None:
    entries = _entries(10, b"abc")
    manifest = sign_manifest(ALICE, "dir", "t", entries)
    assert encode_listing(manifest.entries) in manifest.encode()
