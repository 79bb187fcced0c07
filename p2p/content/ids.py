"""Content ids: 32-byte BLAKE3 digests with a short, URL-safe text form.

Text form: ``"p2pc1"`` (p2p content, format 1) followed by the digest in
lowercase base32 without padding: 57 characters, safe in URLs, shells and
file names, case-insensitive. The prefix names the format, so a later format
gets a new prefix and old software rejects it with a clear message instead of
misreading it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..encoding import b32decode, b32encode
from ..errors import BadInput, DecodeError

CONTENT_ID_PREFIX = "p2pc1"
DIGEST_LEN = 32


@dataclass(frozen=True, order=True, slots=True)
class ContentId:
    """The name of a piece of content: a BLAKE3 digest of its canonical description."""

    digest: bytes
    """32 raw bytes."""

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_LEN:
            raise DecodeError("content id: expected 32 bytes")

    def __hash__(self) -> int:
        return hash(self.digest)  # the digest's cached hash, not a tuple built per lookup

    def __str__(self) -> str:
        return CONTENT_ID_PREFIX + b32encode(self.digest)

    def __repr__(self) -> str:
        return f"ContentId({self.short()})"

    def short(self) -> str:
        """A 12-character label for tables and logs."""
        return b32encode(self.digest)[:12]

    @classmethod
    def parse(cls, text: str) -> ContentId:
        """Parse the text form. Raises :class:`BadInput` saying what is wrong."""
        text = text.strip()
        if not text.lower().startswith(CONTENT_ID_PREFIX):
            if text.lower().startswith("p2pc"):
                raise BadInput(f"unsupported content id format {text[:5]!r} (this version reads {CONTENT_ID_PREFIX!r})")
            raise BadInput(f"not a content id (expected text starting with {CONTENT_ID_PREFIX!r}): {text[:60]!r}")
        body = text[len(CONTENT_ID_PREFIX):]
        try:
            digest = b32decode(body, "content id")
        except DecodeError as exc:
            raise BadInput(f"malformed content id {text[:60]!r}: {exc}") from None
        if len(digest) != DIGEST_LEN:
            raise BadInput(f"malformed content id {text[:60]!r}: wrong length")
        return cls(digest)
