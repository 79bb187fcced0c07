"""Canonical msgpack and base32 text, shared by every format that is hashed, signed or sent.

One place decides how structured data becomes bytes, so that the same value
always gives the same bytes (content ids and signatures depend on it) and so
that every decoder applies hard limits before it allocates anything.

Canonical rules (enforced by :func:`pack`, checked again by :func:`unpack_canonical`):

* only ``None``, ``bool``, ``int``, ``bytes``, ``str`` and lists (tuples) of these;
  no maps and no floats, so there is no key order or float form to disagree on;
* msgpack's smallest encoding for each value (what ``msgpack.packb`` produces);
* ``str`` is UTF-8 and ``bytes`` is the bin type.

This module does no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any

import msgpack

from .errors import DecodeError

_SCALARS = frozenset({type(None), bool, int, bytes, str})
"""Exact types that need no further look (a subclass, an IntEnum say, takes the full check)."""


def _check(value: Any, depth: int) -> None:
    if depth > 16:
        raise TypeError("nesting too deep for canonical encoding")
    kind = type(value)
    if kind in _SCALARS:
        return
    if kind is list or kind is tuple:
        # A flat list of scalars in one pass: a listing of a million entries is checked in a
        # second, not in a call per value. A plain loop, not all() over a generator: most
        # lists checked are a few values (a file's id, an entry), where the generator's own
        # cost was most of the check.
        for item in value:
            if type(item) not in _SCALARS:
                break
        else:
            return
        for item in value:
            _check(item, depth + 1)
        return
    if value is None or isinstance(value, bool | int | bytes | str):
        return
    if isinstance(value, msgpack.ExtType):  # a namedtuple: must not pass as a list
        raise TypeError("msgpack extension types have no canonical encoding")
    if isinstance(value, list | tuple):
        for item in value:
            _check(item, depth + 1)
        return
    raise TypeError(f"type {type(value).__name__} has no canonical encoding")


def pack(value: object) -> bytes:
    """Encode ``value`` canonically. Raises ``TypeError`` for values outside the canonical subset."""
    _check(value, 0)
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(
    data: bytes | bytearray | memoryview,
    *,
    max_bin: int,
    max_str: int = 4096,
    max_array: int = 4096,
) -> Any:
    """Decode one msgpack value from ``data`` with hard limits.

    Every element must be consumed (no trailing bytes). Limits bound the size
    of any single bin, str and array *before* allocation. Raises
    :class:`DecodeError` on anything malformed; nothing else escapes.
    """
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bin,
            max_str_len=max_str,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError, RecursionError, OverflowError) as exc:
        raise DecodeError(f"malformed encoding: {exc}") from None
    try:
        # The length limits let empty maps, zero-length extensions and floats through.
        _check(value, 0)
    except TypeError as exc:
        raise DecodeError(f"malformed encoding: {exc}") from None
    return value


def unpack_canonical(data: bytes, *, max_bin: int, max_str: int = 4096,
                     max_array: int = 4096) -> Any:
    """Like :func:`unpack`, and also require that ``data`` is the canonical encoding of the result.

    Used for anything signed or hashed, so that two different byte strings can
    never stand for the same signed value.
    """
    value = unpack(data, max_bin=max_bin, max_str=max_str, max_array=max_array)
    try:
        again = pack(value)
    except TypeError as exc:
        raise DecodeError(f"non-canonical encoding: {exc}") from None
    if again != bytes(data):
        raise DecodeError("non-canonical encoding")
    return value


def unpack_rows(data: bytes | bytearray | memoryview, *, width: int, max_rows: int, max_bin: int,
                max_str: int) -> Iterator[tuple[Any, ...]]:
    """Decode ``data``, a list of rows of ``width`` scalars each, one row at a time.

    For large signed lists (a listed directory's listing, up to hundreds of MiB): decoding the
    whole value first would build a Python object for every value before any is checked, and
    a hostile list of one-byte empty lists makes some 70 bytes of memory of each byte. Here
    only a row's scalars exist when the caller checks them: a nested list anywhere is refused
    as it is met. Raises :class:`DecodeError` for anything malformed (the caller checks the
    scalars' types, and that encoding the rows again gives ``data``: canonical form).
    """
    lists = 0  # lists completed in the row being read: the row itself, last

    def row_only(items: tuple[Any, ...]) -> tuple[Any, ...]:
        nonlocal lists
        lists += 1
        if lists > 1:  # inner lists complete first: this one holds a list
            raise ValueError("a row holds a list")
        return items

    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(data), 1),
                                max_bin_len=max_bin, max_str_len=max_str, max_array_len=width,
                                max_map_len=0, max_ext_len=0, use_list=False, list_hook=row_only)
    try:
        unpacker.feed(data)
        rows = unpacker.read_array_header()
        if rows > max_rows:
            raise DecodeError(f"more than {max_rows} rows")
        unpack = unpacker.unpack
        for _ in range(rows):
            lists = 0
            row = unpack()
            if type(row) is not tuple or len(row) != width:
                raise DecodeError(f"a row does not have {width} fields")
            yield row
        if unpacker.tell() != len(data):
            raise DecodeError("malformed encoding: trailing bytes")
    except (ValueError, TypeError, msgpack.OutOfData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError, OverflowError) as exc:
        raise DecodeError(f"malformed encoding: {exc}") from None


# -- field checks used by every decoder -----------------------------------------------


def expect_list(value: Any, length: int | None = None, what: str = "value") -> list[Any]:
    """Return ``value`` if it is a list (of exactly ``length`` items when given), else raise."""
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected a list")
    if length is not None and len(value) != length:
        raise DecodeError(f"{what}: expected {length} fields, got {len(value)}")
    return value


def expect_int(value: Any, lo: int, hi: int, what: str = "value") -> int:
    """Return ``value`` if it is an int (not a bool) in ``[lo, hi]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DecodeError(f"{what}: expected an integer in [{lo}, {hi}]")
    return value


def expect_bytes(value: Any, length: int | None = None, what: str = "value",
                 max_len: int | None = None) -> bytes:
    """Return ``value`` if it is bytes (of exactly ``length`` or at most ``max_len``), else raise."""
    if not isinstance(value, bytes):
        raise DecodeError(f"{what}: expected bytes")
    if length is not None and len(value) != length:
        raise DecodeError(f"{what}: expected {length} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise DecodeError(f"{what}: longer than {max_len} bytes")
    return value


def expect_str(value: Any, max_len: int, what: str = "value") -> str:
    """Return ``value`` if it is a str of at most ``max_len`` UTF-8 bytes, else raise."""
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected text")
    if len(value.encode("utf-8", "surrogatepass")) > max_len:
        raise DecodeError(f"{what}: longer than {max_len} bytes")
    return value


# -- text forms ------------------------------------------------------------------------


def b32encode(data: bytes) -> str:
    """Lowercase RFC 4648 base32 without padding: URL-safe, case-insensitive, no look-alikes."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


TEXT_KINDS = (("p2pt1", "a ticket"), ("p2pc1", "a content id"), ("p2pk", "a peer id"))
"""The prefixes of the texts people copy and paste, and what each is called."""
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")


def pasted(text: str) -> str:
    """A long token as a person pasted it, without the spaces and line breaks that terminals,
    mail and chat put inside it (no id, ticket or key contains whitespace)."""
    return "".join(text.split())


def kind_of(text: str) -> str | None:
    """What ``text`` looks like by its prefix ('a ticket', 'a content id', 'a peer id'), or None."""
    lowered = text.lower()
    return next((kind for prefix, kind in TEXT_KINDS if lowered.startswith(prefix)), None)


def b32_problem(body: str, length: int, what: str) -> str:
    """Why ``body`` (the base32 part of an id, ``length`` characters when whole) does not
    decode, in a person's words: truncated, too long, or mistyped at a given place."""
    for i, ch in enumerate(body.lower()):
        if ch not in _B32_ALPHABET:
            return (f"mistyped {what}: {ch!r} (character {i + 1} after the prefix) cannot be in "
                    "one (they use a-z and 2-7); copy it again")
    if len(body) < length:
        return (f"truncated {what}: {len(body)} of its {length} characters after the prefix; "
                "copy it whole")
    if len(body) > length:
        return (f"{what} too long: {len(body)} characters after the prefix, expected {length} "
                "(two pasted together?)")
    return f"mistyped {what}: its last character is wrong (not canonical base32); copy it again"


def b32decode(text: str, what: str = "value") -> bytes:
    """Inverse of :func:`b32encode`; accepts either case. Raises :class:`DecodeError`."""
    if not text or not text.isascii() or not text.isalnum():
        raise DecodeError(f"{what}: not base32 text")
    pad = "=" * (-len(text) % 8)
    try:
        data = base64.b32decode(text.upper() + pad)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{what}: not base32 text") from None
    if b32encode(data) != text.lower():  # rejects non-zero trailing bits: one text per value
        raise DecodeError(f"{what}: not canonical base32")
    return data
