"""Ed25519 identity, peer ids and the key file (p2p.identity)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p import identity as identity_module
from p2p.encoding import b32encode
from p2p.errors import BadInput, BadSignature, DecodeError, InsecureKeyFile, StoreError
from p2p.identity import (
    KEY_FILE,
    NODE_ID_LEN,
    Identity,
    PeerId,
    load_or_create,
    node_id_for,
    verify_signature,
)

keys = st.binary(min_size=32, max_size=32)


# -- key file -------------------------------------------------------------------------


def test_key_created_on_first_use_with_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_or_create(state)
    key_file = state / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes() == first.seed()
    assert sorted(p.name for p in state.iterdir()) == [KEY_FILE]  # no temp file left behind
    again = load_or_create(state)
    assert again.peer_id == first.peer_id
    assert again.seed() == first.seed()


def test_different_state_dirs_get_different_identities(tmp_path: Path) -> None:
    assert load_or_create(tmp_path / "a").peer_id != load_or_create(tmp_path / "b").peer_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create(tmp_path)
    key_file = tmp_path / KEY_FILE
    key_file.chmod(mode)
    with pytest.raises(InsecureKeyFile, match="chmod 600") as info:
        load_or_create(tmp_path)
    assert str(key_file) in str(info.value)
    assert f"{mode:04o}" in str(info.value)
    assert isinstance(info.value, StoreError)


def test_key_with_mode_0400_is_accepted(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o400)
    assert load_or_create(tmp_path).peer_id == first.peer_id


@pytest.mark.parametrize("content", [b"", b"\x01" * 31, b"\x01" * 33, b"\x02" * 64, b"\x03" * 200])
def test_malformed_key_file_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    key_file = tmp_path / KEY_FILE
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(StoreError, match="malformed"):
        load_or_create(tmp_path)
    assert key_file.read_bytes() == content  # never overwritten


def test_existing_seed_is_loaded(tmp_path: Path) -> None:
    seed = bytes(range(32))
    fd = os.open(tmp_path / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, seed)
    os.close(fd)
    assert load_or_create(tmp_path).peer_id == Identity.from_seed(seed).peer_id


def test_losing_the_creation_race_uses_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process links its key between our failed load and our link: we adopt theirs."""
    winner = Identity.generate()
    real_generate = Identity.generate

    def generate_while_another_process_wins() -> Identity:
        fd = os.open(tmp_path / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, winner.seed())
        os.close(fd)
        return real_generate()

    monkeypatch.setattr(identity_module.Identity, "generate", generate_while_another_process_wins)
    got = load_or_create(tmp_path)
    assert got.peer_id == winner.peer_id
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]


def test_stale_temp_file_from_a_crash_does_not_block_creation(tmp_path: Path) -> None:
    stale = tmp_path / f".{KEY_FILE}.{os.getpid()}.tmp"
    stale.write_bytes(b"half-written")
    created = load_or_create(tmp_path)
    assert (tmp_path / KEY_FILE).read_bytes() == created.seed()


_RACER = """
import sys
from pathlib import Path
from p2p.identity import load_or_create
sys.stdin.readline()  # start line: every racer is imported and waiting
print(load_or_create(Path(sys.argv[1])).seed().hex(), flush=True)
"""


def test_concurrent_creation_by_processes_ends_with_one_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(state)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    for racer in racers:  # release them all as close together as we can
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    seeds = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        seeds.append(out.strip())
    on_disk = (state / KEY_FILE).read_bytes().hex()
    assert seeds == [on_disk] * len(racers)
    assert sorted(p.name for p in state.iterdir()) == [KEY_FILE]
    assert stat.S_IMODE((state / KEY_FILE).stat().st_mode) == 0o600


# -- peer ids -------------------------------------------------------------------------


@given(keys)
def test_peer_id_text_round_trip(key: bytes) -> None:
    peer = PeerId(key)
    text = str(peer)
    assert text.startswith("p2pk")
    assert len(text) == 4 + 52
    assert PeerId.parse(text) == peer
    assert PeerId.parse(text.upper()) == peer
    assert PeerId.parse(f"  {text}\n") == peer
    assert text[4:].startswith(peer.short())
    assert len(peer.short()) == 8


@given(keys, keys)
def test_node_id_is_20_bytes_and_differs_per_key(a: bytes, b: bytes) -> None:
    assert len(node_id_for(a)) == NODE_ID_LEN == 20
    assert PeerId(a).node_id == node_id_for(a)
    assert (node_id_for(a) == node_id_for(b)) == (a == b)


def test_node_id_is_not_the_key_prefix() -> None:
    ident = Identity.generate()
    assert ident.node_id != ident.public_key[:20]
    assert ident.node_id == ident.peer_id.node_id


# docs/PROTOCOL.md (DHT) gives this vector; RFC 8032 section 7.1, test 1, gives the key.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
VECTOR_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
VECTOR_NODE_ID = "643a7e2ccc6752df786b826719097d1af49d7b86"
NODE_ID_CONTEXT = "p2p 2026-11 dht node id v1"


def test_node_id_matches_the_documented_derivation_and_test_vector() -> None:
    key = bytes.fromhex(VECTOR_KEY)
    assert Identity.from_seed(RFC8032_SEED).public_key == key
    assert node_id_for(key).hex() == VECTOR_NODE_ID
    assert PeerId(key).node_id.hex() == VECTOR_NODE_ID
    # the first 20 bytes of the 32-byte derive-key output: what any BLAKE3 library gives
    assert blake3.blake3(key, derive_key_context=NODE_ID_CONTEXT).digest()[:20].hex() == VECTOR_NODE_ID
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    assert f'"{NODE_ID_CONTEXT}"' in doc
    assert f"public key  {VECTOR_KEY}\nnode id     {VECTOR_NODE_ID}\n" in doc


def _valid_text() -> str:
    return str(Identity.from_seed(b"\x07" * 32).peer_id)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "not a peer id", id="empty"),
        pytest.param("p2pc1" + "a" * 52, "is a content id, not a peer id", id="content-id-prefix"),
        pytest.param("xyzk" + _valid_text()[4:], "not a peer id", id="wrong-prefix"),
        pytest.param(_valid_text()[4:], "not a peer id", id="no-prefix"),
        pytest.param(_valid_text()[:-1] + "1", "mistyped peer id: '1'", id="bad-char-1"),
        pytest.param(_valid_text()[:-1] + "!", "mistyped peer id: '!'", id="bad-char-bang"),
        pytest.param(_valid_text()[:-1], "truncated peer id: 51 of its 52", id="one-char-short"),
        pytest.param(_valid_text()[:-4], "truncated peer id: 48 of its 52", id="29-bytes"),
        pytest.param(_valid_text() + "aaaaaaaa", "peer id too long", id="37-bytes"),
        pytest.param("p2pk", "truncated peer id: 0 of its 52", id="prefix-only"),
        pytest.param("p2pk" + "a" * 51 + "b", "mistyped peer id: its last character", id="trailing-bits"),
    ],
)
def test_bad_peer_id_text(text: str, reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        PeerId.parse(text)


def test_a_peer_id_pasted_with_spaces_and_line_breaks_inside_is_accepted() -> None:
    text = _valid_text()
    assert PeerId.parse(text[:20] + " " + text[20:40] + "\n  " + text[40:]) == PeerId.parse(text)


@given(keys, st.integers(1, 15))
def test_peer_id_with_nonzero_trailing_bits_is_refused(key: bytes, bits: int) -> None:
    # 32 bytes = 256 bits -> 52 base32 digits = 260 bits; the last digit carries 4 padding bits.
    text = str(PeerId(key))
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = alphabet.index(text[-1])
    assert last & 0b1111 == 0
    forged = text[:-1] + alphabet[last | bits]
    with pytest.raises(BadInput, match="not canonical"):
        PeerId.parse(forged)


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33, "a" * 32])
def test_peer_id_needs_32_bytes(key: object) -> None:
    with pytest.raises(DecodeError):
        PeerId(key)  # type: ignore[arg-type]


def test_peer_id_text_is_base32_of_the_key() -> None:
    ident = Identity.from_seed(b"\x01" * 32)
    assert str(ident.peer_id) == "p2pk" + b32encode(ident.public_key)
    assert ident.public_key == ident.peer_id.key
    assert "p2pk" not in repr(ident.peer_id)  # repr is the short label only


# -- signatures -----------------------------------------------------------------------


@given(st.binary(max_size=256))
def test_sign_and_verify(message: bytes) -> None:
    ident = Identity.from_seed(b"\x05" * 32)
    signature = ident.sign(message)
    assert len(signature) == 64
    ident.peer_id.verify(signature, message)
    verify_signature(ident.public_key, signature, message)
    with pytest.raises(BadSignature):
        ident.peer_id.verify(signature, message + b"x")


@given(st.binary(max_size=64), st.integers(0, 63), st.integers(1, 255))
def test_any_flipped_signature_byte_is_refused(message: bytes, pos: int, xor: int) -> None:
    ident = Identity.from_seed(b"\x06" * 32)
    signature = bytearray(ident.sign(message))
    signature[pos] ^= xor
    with pytest.raises(BadSignature):
        ident.peer_id.verify(bytes(signature), message)


def test_signature_by_another_key_is_refused() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    forged = mallory.sign(b"hello")
    with pytest.raises(BadSignature):
        alice.peer_id.verify(forged, b"hello")


@pytest.mark.parametrize(
    ("key", "signature"),
    [
        pytest.param(b"\x00" * 32, b"\x00" * 64, id="zero-key-and-signature"),
        pytest.param(b"\xff" * 32, b"\x01" * 64, id="not-a-curve-point"),
        pytest.param(b"\x01" * 31, b"\x01" * 64, id="short-key"),
        pytest.param(b"\x01" * 32, b"\x01" * 63, id="short-signature"),
        pytest.param(b"\x01" * 32, b"", id="empty-signature"),
    ],
)
def test_malformed_key_or_signature_is_bad_signature(key: bytes, signature: bytes) -> None:
    with pytest.raises(BadSignature):
        verify_signature(key, signature, b"message")


def test_from_seed() -> None:
    a = Identity.from_seed(b"\x09" * 32)
    assert Identity.from_seed(b"\x09" * 32).peer_id == a.peer_id
    assert Identity.from_seed(b"\x0a" * 32).peer_id != a.peer_id
    assert a.seed() == b"\x09" * 32
    with pytest.raises(BadInput):
        Identity.from_seed(b"\x09" * 31)
