"""Hostile folder listings (issue 14): a publisher signs entries that break the path, size or
count rules, in either content format (a version 1 manifest, or a listed directory's root and
listing). The provider is written from docs/PROTOCOL.md (:mod:`adversarial.hostile`); the
victim is a real ``p2p ls`` and ``p2p fetch``. Nothing is created and the error says why.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from p2p.library import Library

from . import hostile as h
from .conftest import cli, fetch_args
from .test_liars import serving

T = 60
FILES = [(f"docs/note{i:02d}.txt", b"note %d\n" % i * (i + 1)) for i in range(20)] + [("empty", b"")]
ONE_CHUNK = 64 * 1024
HASH = bytes(32)


def ls_args(state: Path, target: str, timeout: float = 10) -> list[str]:
    return ["ls", target, "--json", "--state-dir", str(state), "--listen", "127.0.0.1:0",
            "--timeout", str(timeout)]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("form", ["v1", "listed"])
async def test_an_honest_folder_in_either_form_is_listed_and_fetched(tmp_path: Path, form: str) -> None:
    # Control: the provider is right about the format, so what the hostile cases see refused
    # is their rows and nothing else.
    provider = h.FolderProvider(FILES, h.Identity(), form)
    async with asyncio.timeout(T), serving(provider) as addr:
        ticket = h.ticket_text(provider.content_id, provider.identity.public_key, [addr])
        listed = await cli(*ls_args(tmp_path / "looker", ticket), cwd=tmp_path)
        fetched = await cli(*fetch_args(tmp_path / "dl", ticket, tmp_path / "out"), cwd=tmp_path)
    assert listed.code == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["path"], r["size"]) for r in rows] == [(p, len(b)) for p, b in sorted(FILES)]
    assert fetched.code == 0, fetched.stderr
    assert _tree(tmp_path / "out") == dict(FILES)
    asked_listing = [index for cid, index in provider.requests if cid == provider.listing_id]
    assert asked_listing == ([] if form == "v1" else [0, 0])  # once by ls, once by fetch
    asked_data = {index for cid, index in provider.requests if cid == provider.content_id}
    assert asked_data == set(range(len(provider.chunks)))


HOSTILE: dict[str, tuple[list[list[Any]], str]] = {
    "dot-dot": ([["../escape", 1, ONE_CHUNK, HASH]], "'..'"),
    "deep-dot-dot": ([["a/../../escape", 1, ONE_CHUNK, HASH]], "'..'"),
    "absolute": ([["{tmp}/escape", 1, ONE_CHUNK, HASH]], "absolute"),
    "backslash": ([["..\\escape", 1, ONE_CHUNK, HASH]], "forbidden character"),
    "device-name": ([["CON", 1, ONE_CHUNK, HASH]], "device"),
    "unsorted": ([["b", 1, ONE_CHUNK, HASH], ["a", 1, ONE_CHUNK, HASH]], "sorted"),
    "duplicate": ([["a", 1, ONE_CHUNK, HASH], ["a", 1, ONE_CHUNK, HASH]], "sorted"),
    "file-inside-file": ([["a", 1, ONE_CHUNK, HASH], ["a/b", 1, ONE_CHUNK, HASH]], "inside"),
    "size-beyond-hashes": ([["a", 10 * ONE_CHUNK, ONE_CHUNK, HASH]], "hash list"),
    "negative-size": ([["a", -1, ONE_CHUNK, b""]], "entry size"),
    "odd-chunk-size": ([["a", 5, 1000, HASH]], "chunk size"),
}


CASES = [(form, case) for form in ("v1", "listed") for case in HOSTILE] + [("v1", "too-many-entries")]
"""Every rule in both forms; the count cap of a version 1 manifest (100,000 entries) here, a
listed directory's (2,000,000) in tests/foundation (a forged array header)."""


def _rows(case: str, tmp: Path) -> tuple[list[list[Any]], str]:
    if case == "too-many-entries":
        return [[f"f{i:06d}", 0, ONE_CHUNK, b""] for i in range(100_001)], "100000"
    rows, reason = HOSTILE[case]
    return [[str(row[0]).replace("{tmp}", str(tmp)), *row[1:]] for row in rows], reason


@pytest.mark.parametrize(("form", "case"), CASES)
async def test_a_hostile_listing_is_refused_by_ls_and_fetch_and_nothing_is_written(
        tmp_path: Path, form: str, case: str) -> None:
    rows, reason = _rows(case, tmp_path)
    provider = h.FolderProvider([], h.Identity(), form, rows=rows)
    work = tmp_path / "work"  # the escape targets would land beside it
    work.mkdir()
    # A refused version 1 manifest leaves the download waiting, to the timeout, for another peer
    # with a valid one; a listed directory fails once its listing is in.
    wait = 1
    async with asyncio.timeout(T), serving(provider) as addr:
        ticket = h.ticket_text(provider.content_id, provider.identity.public_key, [addr])
        listed = await cli(*ls_args(tmp_path / "looker", ticket, timeout=wait), cwd=work)
        fetched = await cli(*fetch_args(tmp_path / "dl", ticket, work / "out", timeout=wait),
                            cwd=work)
    for result in (listed, fetched):
        assert result.code == 4, f"exit {result.code}: {result.stderr[-1500:]}"
        assert reason in result.stderr, result.stderr[-1500:]
        # v1: the manifest is refused as it decodes and its sender banned; listed: the root is
        # valid, the listing matches its signed hashes and breaks the rule.
        assert ("listing" if form == "listed" else "banned") in result.stderr
    # With --json the refusal is one error object on stdout, and nothing else is there.
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [
        {"event": "error", "error": ANY, "kind": "integrity", "exit_code": 4}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "looker", "work"]
    assert list(work.iterdir()) == []
    with Library.open(tmp_path / "dl") as library:
        assert library.downloads() == []
    asked_listing = [cid for cid, _ in provider.requests if cid == provider.listing_id]
    assert len(asked_listing) == (2 if form == "listed" else 0)
