"""Content ids: 32-byte BLAKE3 digests with a short, URL-safe text form.

Text form: ``"p2pc1"`` (p2p content, format 1) followed by the digest in
lowercase base32 without padding: 57 characters, safe in URLs, shells and
file names, case-insensitive. The prefix names the format, so a later format
gets a new prefix and old software rejects it with a clear message instead of
misreading it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..encoding import b32_problem, b32decode, b32encode, kind_of, pasted
from ..errors import BadInput, DecodeError

CONTENT_ID_PREFIX = "p2pc1"
DIGEST_LEN = 32
ID_BODY_CHARS = 52
"""Base32 characters of a 32-byte digest (no padding)."""


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
        """Parse the text form (spaces and line breaks pasted inside it are dropped). Raises
        :class:`BadInput` saying what is wrong: another kind of text (a peer id), a truncated,
        over-long or mistyped id."""
        text = pasted(text)
        if not text.lower().startswith(CONTENT_ID_PREFIX):
            kind = kind_of(text)
            if kind == "a peer id":
                raise BadInput(f"{text[:60]!r} is a peer id (it names a peer, as `p2p id` "
                               f"prints it), not a content id: a content id starts with "
                               f"{CONTENT_ID_PREFIX!r}, as `p2p share` prints it")
            if text.lower().startswith("p2pc"):
                raise BadInput(f"unsupported content id format {text[:5]!r} (this version reads {CONTENT_ID_PREFIX!r})")
            raise BadInput(f"not a content id (expected text starting with {CONTENT_ID_PREFIX!r}): {text[:60]!r}")
        body = text[len(CONTENT_ID_PREFIX):]
        try:
            digest = b32decode(body, "content id")
        except DecodeError:
            raise BadInput(f"{b32_problem(body, ID_BODY_CHARS, 'content id')}: {text[:60]!r}") from None
        if len(digest) != DIGEST_LEN:
            raise BadInput(f"{b32_problem(body, ID_BODY_CHARS, 'content id')}: {text[:60]!r}")
        return cls(digest)
