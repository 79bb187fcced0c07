"""Content ids, the chunk-size rule and file hashing (p2p.content.ids, p2p.content.chunking)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.content import MAX_CHUNK, MIN_CHUNK, ContentId, chunk_size_for, hash_bytes, hash_file
from p2p.content.chunking import MAX_CHUNKS, MAX_FILE_SIZE, SOFT_MAX_CHUNK, FileInfo, hash_chunk
from p2p.encoding import b32encode
from p2p.errors import BadInput, DecodeError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
digests = st.binary(min_size=32, max_size=32)


# -- content id text ----------------------------------------------------------------


@given(digests)
def test_content_id_text_round_trip(digest: bytes) -> None:
    cid = ContentId(digest)
    text = str(cid)
    assert text == "p2pc1" + b32encode(digest)
    assert len(text) == 57
    assert ContentId.parse(text) == cid
    assert ContentId.parse(text.upper()) == cid
    assert ContentId.parse(f"\t{text} \n") == cid
    assert text[5:].startswith(cid.short())


def _valid() -> str:
    return str(ContentId(bytes(range(32))))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "not a content id", id="empty"),
        pytest.param("hello", "not a content id", id="garbage"),
        pytest.param("p2pk" + _valid()[5:], "is a peer id .*not a content id", id="peer-id-prefix"),
        pytest.param("p2pc2" + _valid()[5:], "unsupported content id format 'p2pc2'", id="version-2"),
        pytest.param("p2pc" + _valid()[5:], "unsupported content id format", id="no-version"),
        pytest.param("p2pc1", "truncated content id: 0 of its 52", id="prefix-only"),
        pytest.param(_valid()[:-1] + "0", "mistyped content id: '0' .character 52", id="bad-char-0"),
        pytest.param(_valid()[:-1] + "-", "mistyped content id: '-'", id="bad-char-dash"),
        pytest.param(_valid()[:30] + "=" + _valid()[31:], "mistyped content id: '='", id="bad-char-eq"),
        pytest.param(_valid()[:-1], "truncated content id: 51 of its 52", id="one-char-short"),
        pytest.param(_valid()[:-4], "truncated content id: 48 of its 52", id="too-short"),
        pytest.param(_valid() + "aaaaaaaa", "content id too long: 60 characters", id="too-long"),
        pytest.param(_valid()[:-1] + "b", "mistyped content id: its last character", id="trailing-bits"),
    ],
)
def test_bad_content_id_text(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        ContentId.parse(text)


def test_spaces_and_line_breaks_pasted_inside_are_dropped() -> None:
    text = _valid()
    assert ContentId.parse(f"  {text[:20]}\n {text[20:40]}\r\n\t{text[40:]} \n") == ContentId.parse(text)


def test_ticket_prefix_is_not_a_content_id() -> None:
    # "p2pt1" shares "p2p" but not "p2pc": the message must not claim it is a content id format.
    with pytest.raises(BadInput, match="not a content id"):
        ContentId.parse("p2pt1" + _valid()[5:])


@pytest.mark.parametrize("digest", [b"", b"\x00" * 31, b"\x00" * 33])
def test_content_id_needs_32_bytes(digest: bytes) -> None:
    with pytest.raises(DecodeError):
        ContentId(digest)


# -- chunk-size rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, 64 * KiB),
        (1, 64 * KiB),
        (64 * KiB, 64 * KiB),
        (MiB, 64 * KiB),  # 16 chunks
        (64 * MiB, 64 * KiB),  # exactly 1024 chunks of the floor
        (64 * MiB + 1, 128 * KiB),
        (512 * MiB, 512 * KiB),
        (GiB, MiB),  # 1024 chunks of 1 MiB
        (GiB + 1, MiB),  # the soft ceiling holds: more chunks, not bigger ones
        (4 * GiB, MiB),  # 4096 chunks
        (64 * GiB, MiB),  # exactly MAX_CHUNKS chunks of 1 MiB
        (64 * GiB + 1, 2 * MiB),
        (128 * GiB, 2 * MiB),
        (128 * GiB + 1, 4 * MiB),
        (TiB, 16 * MiB),
    ],
)
def test_chunk_size_rule(size: int, chunk: int) -> None:
    assert chunk_size_for(size) == chunk


@given(st.integers(min_value=0, max_value=MAX_FILE_SIZE))
def test_chunk_size_invariants(size: int) -> None:
    chunk = chunk_size_for(size)
    assert chunk & (chunk - 1) == 0
    assert MIN_CHUNK <= chunk <= MAX_CHUNK
    assert -(-size // chunk) <= MAX_CHUNKS
    if chunk > SOFT_MAX_CHUNK:  # only grown past 1 MiB because of the chunk-count cap
        assert -(-size // (chunk // 2)) > MAX_CHUNKS
    # Monotone: a bigger file never gets smaller chunks.
    assert chunk_size_for(min(size + 1, MAX_FILE_SIZE)) >= chunk


def test_chunk_size_limit() -> None:
    assert TiB == MAX_FILE_SIZE
    with pytest.raises(BadInput, match="too large"):
        chunk_size_for(TiB + 1)
    with pytest.raises(ValueError):
        chunk_size_for(-1)


# -- hashing --------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "size",
    [0, 1, 1000, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 3 * 64 * KiB + 17, MiB, MiB + 12345,
     64 * MiB + 1],
)
def test_hash_file_equals_hash_bytes(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = _write(tmp_path / "f.bin", data)
    seen: list[int] = []
    from_file = hash_file(path, seen.append, threads=3)
    from_bytes = hash_bytes(data)
    assert from_file == from_bytes
    assert from_file.content_id == from_bytes.content_id
    assert sum(seen) == size
    assert from_file.chunk_size == chunk_size_for(size)
    assert from_file.chunk_count == -(-size // from_file.chunk_size)
    # Each chunk hash is plain BLAKE3 of that slice.
    for i in range(from_file.chunk_count):
        start = from_file.chunk_offset(i)
        piece = data[start:start + from_file.chunk_length(i)]
        assert from_file.chunk_hash(i) == blake3.blake3(piece).digest()
        assert from_file.verify_chunk(i, piece)


def test_hash_file_of_empty_file(tmp_path: Path) -> None:
    info = hash_file(_write(tmp_path / "empty", b""))
    assert info == FileInfo(0, MIN_CHUNK, b"")
    assert info.chunk_count == 0
    assert info.content_id == hash_bytes(b"").content_id


def test_empty_and_one_byte_files_differ() -> None:
    assert hash_bytes(b"").content_id != hash_bytes(b"\x00").content_id
    assert hash_bytes(b"\x00").content_id != hash_bytes(b"\x00\x00").content_id


def test_thread_count_does_not_change_the_id(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(5 * MiB + 3)
    path = _write(tmp_path / "f", data)
    ids = {hash_file(path, threads=n).content_id for n in (1, 2, 7)}
    assert ids == {hash_bytes(data).content_id}


def test_same_bytes_same_id_whatever_the_name(tmp_path: Path) -> None:
    data = os.urandom(200 * KiB + 5)
    a = hash_file(_write(tmp_path / "a.bin", data))
    (tmp_path / "sub").mkdir()
    b = hash_file(_write(tmp_path / "sub" / "completely different name.txt", data))
    assert a.content_id == b.content_id


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(pos=st.integers(min_value=0, max_value=300 * KiB - 1), xor=st.integers(1, 255))
def test_one_flipped_byte_anywhere_changes_the_id(tmp_path: Path, pos: int, xor: int) -> None:
    data = bytearray(random.Random(7).randbytes(300 * KiB))
    original = hash_bytes(bytes(data)).content_id
    data[pos] ^= xor
    path = _write(tmp_path / "flipped", bytes(data))
    flipped = hash_file(path)
    assert flipped.content_id != original
    # Exactly the chunk holding the byte changes.
    before = hash_bytes(bytes(data[:pos]) + bytes([data[pos] ^ xor]) + bytes(data[pos + 1:]))
    changed = [i for i in range(flipped.chunk_count) if flipped.chunk_hash(i) != before.chunk_hash(i)]
    assert changed == [pos // flipped.chunk_size]


def test_id_covers_chunk_size() -> None:
    data = os.urandom(300 * KiB)
    assert hash_bytes(data, 64 * KiB).content_id != hash_bytes(data, 128 * KiB).content_id


@pytest.mark.parametrize(
    ("size", "chunk", "hashes"),
    [
        pytest.param(-1, MIN_CHUNK, b"", id="negative-size"),
        pytest.param(MAX_FILE_SIZE + 1, MAX_CHUNK, b"", id="too-large"),
        pytest.param(10, MIN_CHUNK + 1, b"h" * 32, id="chunk-not-power-of-two"),
        pytest.param(10, MIN_CHUNK // 2, b"h" * 32, id="chunk-below-floor"),
        pytest.param(10, MAX_CHUNK * 2, b"h" * 32, id="chunk-above-ceiling"),
        pytest.param(10, MIN_CHUNK, b"", id="missing-hash"),
        pytest.param(10, MIN_CHUNK, b"h" * 64, id="extra-hash"),
        pytest.param(10, MIN_CHUNK, b"h" * 31, id="partial-hash"),
        pytest.param(0, MIN_CHUNK, b"h" * 32, id="hash-for-empty-file"),
    ],
)
def test_file_info_rejects_inconsistent_fields(size: int, chunk: int, hashes: bytes) -> None:
    with pytest.raises(DecodeError):
        FileInfo(size, chunk, hashes)


def test_chunk_lengths_and_verify_chunk() -> None:
    data = os.urandom(2 * 64 * KiB + 100)
    info = hash_bytes(data)
    assert [info.chunk_length(i) for i in range(info.chunk_count)] == [64 * KiB, 64 * KiB, 100]
    with pytest.raises(IndexError):
        info.chunk_length(3)
    last = data[2 * 64 * KiB:]
    assert info.verify_chunk(2, last)
    assert not info.verify_chunk(2, last[:-1])
    assert not info.verify_chunk(1, last)
    assert not info.verify_chunk(2, bytes([last[0] ^ 1]) + last[1:])
    assert hash_chunk(last) == info.chunk_hash(2)
