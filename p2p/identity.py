"""A peer's identity: an Ed25519 key pair kept in the state directory.

* The **peer id** is the 32-byte Ed25519 public key itself, so anyone holding a
  peer id can check that peer's signatures with nothing else. Its text form is
  ``"p2pk"`` followed by the key in lowercase base32 (56 characters); see
  :meth:`PeerId.parse`. ``PeerId.short()`` gives an 8-character label for UIs.
* The **DHT node id** (20 bytes, the `kademlia` package's keyspace) is derived
  from the public key with a BLAKE3 key derivation, so nobody can choose where
  they sit in the DHT without grinding keys.
* The private key lives in ``<state_dir>/identity.key`` (32-byte raw seed, PEM
  would add nothing), created atomically with mode 0600 on first use. A key file
  that group or others can read is refused, as ssh refuses such files.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .durable import fsync_dir
from .encoding import b32_problem, b32decode, b32encode, kind_of, pasted
from .errors import BadInput, BadSignature, DecodeError, InsecureKeyFile, StoreError

KEY_FILE = "identity.key"
PEER_ID_PREFIX = "p2pk"
PUBLIC_KEY_LEN = 32
_KEY_CHARS = 52
"""Base32 characters of a 32-byte key (no padding)."""
SIGNATURE_LEN = 64
NODE_ID_LEN = 20
_NODE_ID_CONTEXT = "p2p 2026-11 dht node id v1"
"""BLAKE3 derive-key context of the node id; docs/PROTOCOL.md (DHT) states it with a test vector."""


@dataclass(frozen=True, order=True)
class PeerId:
    """A peer's identity on the network: its Ed25519 public key (32 bytes)."""

    key: bytes
    """The raw Ed25519 public key."""

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != PUBLIC_KEY_LEN:
            raise DecodeError("peer id: expected a 32-byte Ed25519 public key")

    def __hash__(self) -> int:
        # The key's own (cached) hash: the generated one builds a tuple on every dict lookup,
        # and peer ids key every per-peer table of the data path.
        return hash(self.key)

    def __str__(self) -> str:
        return PEER_ID_PREFIX + b32encode(self.key)

    def __repr__(self) -> str:
        return f"PeerId({self.short()})"

    def short(self) -> str:
        """An 8-character label for tables and logs (not unique enough to identify a peer)."""
        return b32encode(self.key)[:8]

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse the text form printed by ``p2p id``. Raises :class:`BadInput` with a clear reason."""
        text = pasted(text)
        if not text.lower().startswith(PEER_ID_PREFIX):
            kind = kind_of(text)
            if kind is not None:
                raise BadInput(f"{text[:60]!r} is {kind}, not a peer id: a peer id starts with "
                               f"{PEER_ID_PREFIX!r}, as `p2p id` prints it")
            raise BadInput(f"not a peer id (expected text starting with {PEER_ID_PREFIX!r}): {text[:60]!r}")
        body = text[len(PEER_ID_PREFIX):]
        try:
            key = b32decode(body, "peer id")
        except DecodeError:
            raise BadInput(f"{b32_problem(body, _KEY_CHARS, 'peer id')}: {text[:60]!r}") from None
        if len(key) != PUBLIC_KEY_LEN:
            raise BadInput(f"{b32_problem(body, _KEY_CHARS, 'peer id')}: {text[:60]!r}")
        return cls(key)

    @property
    def node_id(self) -> bytes:
        """The 20-byte DHT node id derived from this key."""
        return node_id_for(self.key)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Check an Ed25519 ``signature`` of ``message`` by this peer. Raises :class:`BadSignature`."""
        verify_signature(self.key, signature, message)


def node_id_for(public_key: bytes) -> bytes:
    """The 20-byte DHT node id of an Ed25519 public key."""
    return blake3.blake3(public_key, derive_key_context=_NODE_ID_CONTEXT).digest(NODE_ID_LEN)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature. Raises :class:`BadSignature` for any failure, including malformed keys."""
    if len(signature) != SIGNATURE_LEN or len(public_key) != PUBLIC_KEY_LEN:
        raise BadSignature("signature or key has the wrong length")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise BadSignature("signature does not verify") from None


class Identity:
    """An Ed25519 key pair: what a peer signs with and proves itself by."""

    __slots__ = ("_private", "peer_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        raw = private_key.public_key().public_bytes_raw()
        self.peer_id = PeerId(raw)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (tests and ephemeral nodes)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity with this 32-byte private seed."""
        if len(seed) != 32:
            raise BadInput("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key (the same bytes as ``peer_id.key``)."""
        return self.peer_id.key

    @property
    def node_id(self) -> bytes:
        """The 20-byte DHT node id."""
        return self.peer_id.node_id

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The private key object, for the code that must sign inside a handshake."""
        return self._private

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``; callers prefix a domain-separation tag of their own."""
        return self._private.sign(message)

    def seed(self) -> bytes:
        """The raw 32-byte private seed (what the key file holds)."""
        return self._private.private_bytes_raw()

    def __repr__(self) -> str:
        return f"Identity({self.peer_id.short()})"


def load_or_create(state_dir: Path) -> Identity:
    """Load the identity from ``state_dir``, creating it (atomically, mode 0600) on first use.

    Raises :class:`InsecureKeyFile` when the key file is readable by group or
    others, and :class:`StoreError` when it is malformed.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / KEY_FILE
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    identity = Identity.generate()
    # mkstemp: a unique name (a crashed earlier run may have left one) created with mode 0600.
    fd, tmp_name = tempfile.mkstemp(dir=state_dir, prefix=f".{KEY_FILE}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.write(fd, identity.seed())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if another process created the key first; then use theirs.
        os.link(tmp, path)
    except FileExistsError:
        return _load(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(state_dir)
    return identity


def _load(path: Path) -> Identity:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InsecureKeyFile(
                f"identity key {path} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}' and try again"
            )
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    if len(data) != 32:
        raise StoreError(f"identity key {path} is malformed (expected a 32-byte seed)")
    return Identity.from_seed(data)
