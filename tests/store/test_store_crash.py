"""A download killed at any point resumes without lying: recorded chunks verify, recover() finds the rest.

The child (``storeproc.py crash``) writes every chunk of a generated file in a seeded random
order and commits every few chunks. The parent paces it one chunk per byte sent, so it can
kill it at an exact point (right after a commit, between commits), or lets it run free and
kills it after a random number of lines (mid-write, mid-sync or mid-transaction).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from p2p.content import Manifest, build_manifest
from p2p.errors import ContentChanged
from p2p.identity import Identity
from p2p.store import Store

from .storeproc import CHUNK, Child, chunk_bytes, make_bytes, save_manifest, set_bits

ME = Identity.generate()
EVERY = 5
"""The child commits after every EVERY chunks."""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest, Path]:
    base = tmp_path_factory.mktemp("crash-source")
    path = base / "big.bin"
    path.write_bytes(make_bytes(60 * CHUNK + 3001, seed=77))  # 61 chunks, the last one short
    manifest, _ = build_manifest(path, ME)
    return path, manifest, save_manifest(manifest, base / "manifest")


def run_until_killed(tmp_path: Path, source, *, permits: int, stop_after_lines: int,
                     seed: int) -> tuple[list[str], Path, Path]:
    """Run the crash child, read ``stop_after_lines`` lines, SIGKILL it. Returns the lines seen."""
    src, _, mpath = source
    state, dest = tmp_path / "state", tmp_path / "dl" / "big.bin"
    with Child("crash", state, mpath, src, dest, seed, EVERY) as child:
        child.send(b"x" * permits)
        seen = [child.line() for _ in range(stop_after_lines)]
        assert child.kill() == -signal.SIGKILL
    assert "finished" not in seen
    return seen, state, dest


def check_resume(state: Path, dest: Path, manifest: Manifest, src: Path, seen: list[str],
                 *, exact: bool) -> tuple[set[int], list[int]]:
    """Everything the store claims after the kill verifies; a resume gets back all that was written."""
    cid = manifest.content_id.digest
    written = {int(line.split()[1]) for line in seen if line.startswith("wrote")}
    committed = [int(line.split()[1]) for line in seen if line.startswith("committed")]
    partial_path = dest.resolve().with_name(dest.name + ".p2p-partial")
    with Store(state) as store:
        count, bits = store.recorded_bitfield(cid)
        recorded = set_bits(bits)
        info = store.download_info(cid)
        assert info.done_chunks == len(recorded) and info.state == "active"
        partial = store.open_download(manifest, dest)
        cmap = partial.chunk_map
        # 1. Only chunks whose bytes verify are recorded.
        for index in recorded:
            assert cmap.verify(index, chunk_bytes(cmap, partial_path, index)), f"chunk {index} recorded but wrong"
        # 2. At least what the child had reported committed is recorded (exactly, when paced).
        last = committed[-1] if committed else 0
        assert len(recorded) == last if exact else len(recorded) >= last
        if exact:
            assert recorded <= written
        # 3. A resume starts from the record, and recover() adds only verifying chunks,
        #    including every chunk the child finished writing (the page cache survives a kill).
        assert partial.resumed and set_bits(bytes(partial.bits)) == recorded
        found = partial.recover()
        assert not set(found) & recorded
        held = set_bits(bytes(partial.bits))
        assert held == recorded | set(found)
        assert written <= held
        for index in held:
            assert cmap.verify(index, chunk_bytes(cmap, partial_path, index))
        # recover() records what it found.
        assert set_bits(store.bitfield(cid)[1]) == held
        # 4. The resumed download finishes into the right bytes.
        data = src.read_bytes()
        for index in sorted(set(range(count)) - held):
            span = cmap.locate(index)
            partial.write_chunk(index, data[span.offset:span.offset + span.length])
        partial.finalize()
        assert dest.read_bytes() == data
    return recorded, found


@pytest.mark.parametrize(("point", "permits"), [
    ("after-first-commit", EVERY),
    ("after-commit", 3 * EVERY),
    ("between-commits", 3 * EVERY + 2),
    ("before-any-commit", EVERY - 1),
])
def test_killed_at_an_exact_point(tmp_path: Path, source, point: str, permits: int) -> None:
    lines = permits + permits // EVERY  # one "wrote" per chunk, one "committed" per EVERY
    seen, state, dest = run_until_killed(tmp_path, source, permits=permits,
                                         stop_after_lines=lines, seed=permits)
    assert seen[-1].startswith("committed" if permits % EVERY == 0 else "wrote")
    recorded, found = check_resume(state, dest, source[1], source[0], seen, exact=True)
    assert len(recorded) == permits // EVERY * EVERY
    assert len(found) == permits % EVERY


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_killed_at_a_random_point_while_running_free(tmp_path: Path, source, seed: int) -> None:
    count = source[1].chunk_count
    stop = random.Random(seed).randrange(1, count + count // EVERY)
    seen, state, dest = run_until_killed(tmp_path, source, permits=count,
                                         stop_after_lines=stop, seed=seed)
    check_resume(state, dest, source[1], source[0], seen, exact=False)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x01]))


def test_recover_rejects_a_corrupted_unrecorded_chunk(tmp_path: Path, source) -> None:
    manifest = source[1]
    permits = 2 * EVERY + 3
    seen, state, dest = run_until_killed(tmp_path, source, permits=permits,
                                         stop_after_lines=permits + 2, seed=11)
    unrecorded = [int(line.split()[1]) for line in seen[-3:]]
    assert all(line.startswith("wrote") for line in seen[-3:])
    recorded_one = int(seen[0].split()[1])
    partial_path = dest.resolve().with_name(dest.name + ".p2p-partial")
    bad = unrecorded[1]
    flip_byte(partial_path, bad * CHUNK + 1234)  # written, not recorded: recover() must refuse it
    flip_byte(partial_path, recorded_one * CHUNK + 99)  # recorded: reads re-verify and refuse it
    with Store(state) as store:
        partial = store.open_download(manifest, dest)
        found = partial.recover()
        assert bad not in found and not partial.has(bad)
        assert sorted(found) == sorted(set(unrecorded) - {bad})
        assert set_bits(store.bitfield(manifest.content_id.digest)[1]) == \
            set_bits(bytes(partial.bits))
        with pytest.raises(ContentChanged):
            store.read_chunk(manifest.content_id.digest, recorded_one)
        partial.close()
    with Store(state) as store:  # and the refusal holds after another restart
        assert bad not in set_bits(store.recorded_bitfield(manifest.content_id.digest)[1])
