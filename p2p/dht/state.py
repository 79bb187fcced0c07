"""The routing table on disk: JSON, written atomically, schema-checked on load. Never pickle.

Format 1::

    {"format": 1, "node_id": "<40 hex>", "contacts": [["<40 hex>", "<ip>", <port>], ...]}

Every bucket is saved, not only the k closest. A loaded contact is only a hint:
``DHT.open`` re-verifies each one (signed nonce round trip) before it enters the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..durable import write_atomic
from ..errors import DecodeError
from ..identity import NODE_ID_LEN
from .errors import StateFileError
from .records import check_address

STATE_FORMAT = 1
MAX_STATE_BYTES = 4 * 1024 * 1024
"""A table of 10,000 contacts is about 800 KB; anything far larger is not ours."""
MAX_STATE_CONTACTS = 10_000

Contact = tuple[bytes, str, int]


def save_routing_table(path: Path, node_id: bytes, contacts: list[Contact]) -> None:
    """Write the table to ``path`` atomically (tmp file, fsync, rename, fsync of the folder)."""
    doc = {
        "format": STATE_FORMAT,
        "node_id": node_id.hex(),
        "contacts": [[cid.hex(), host, port] for cid, host, port in contacts[:MAX_STATE_CONTACTS]],
    }
    data = json.dumps(doc, separators=(",", ":")).encode("ascii")
    write_atomic(path, data)


def load_routing_table(path: Path) -> tuple[bytes, list[Contact]]:
    """Read ``(node_id, contacts)`` from ``path``. Raises :class:`StateFileError` if malformed
    and ``FileNotFoundError`` if absent."""
    with open(path, "rb") as f:
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise StateFileError(f"routing table {path} is too large")
    try:
        doc = json.loads(data.decode("utf-8"))
        return _parse(doc)
    except (ValueError, UnicodeDecodeError, DecodeError) as exc:
        raise StateFileError(f"routing table {path} is malformed: {exc}") from None


def _hex_id(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * NODE_ID_LEN:
        raise DecodeError("node id: expected 40 hex digits")
    return bytes.fromhex(value)


def _parse(doc: Any) -> tuple[bytes, list[Contact]]:
    if not isinstance(doc, dict) or set(doc) != {"format", "node_id", "contacts"}:
        raise DecodeError("expected exactly the keys format, node_id, contacts")
    if doc["format"] != STATE_FORMAT:
        raise DecodeError(f"unknown format {doc['format']!r}")
    node_id = _hex_id(doc["node_id"])
    items = doc["contacts"]
    if not isinstance(items, list) or len(items) > MAX_STATE_CONTACTS:
        raise DecodeError("contacts: expected a list")
    contacts = []
    for item in items:
        if not isinstance(item, list) or len(item) != 3:
            raise DecodeError("contact: expected [id, host, port]")
        host, port = check_address(item[1], item[2], "contact")
        contacts.append((_hex_id(item[0]), host, port))
    return node_id, contacts
