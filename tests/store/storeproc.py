"""Helpers for the store tests, and the child process they run (``python storeproc.py MODE ...``).

Modes (each prints one line per step, flushed, so the parent can follow it):

``hold STATE MANIFEST DEST``
    Open the download; print ``holding`` (or ``locked <message>``), then keep it open until
    stdin closes.
``crash STATE MANIFEST SOURCE DEST SEED EVERY``
    Write every chunk in a seeded random order, one chunk per byte read from stdin (the
    parent paces it), printing ``wrote I``; every EVERY chunks ``commit()`` and print
    ``committed N`` (N = chunks recorded). The parent SIGKILLs it somewhere.
``fill STATE MANIFEST SOURCE DEST LIMIT EVERY``
    Set RLIMIT_FSIZE to LIMIT, open the download (print ``opened SIZE``, the partial file's
    size), write chunks in order, committing every EVERY; on DiskFull print
    ``diskfull EXIT_CODE MESSAGE`` and ``committed N``.
``widen STATE MANIFEST SOURCE DEST``
    Open the download of every file of a folder (SOURCE: the original folder), check what is
    there, write half of the chunks still missing and commit; print ``written N``, then wait
    until killed.
``open-many BASE COUNT``
    For each of BASE/0 ... BASE/COUNT-1: print ``ready``, wait for a line on stdin, open
    (and close) a Store there, printing ``error K MESSAGE`` if that fails.
``populate STATE WORK TAG COUNT``
    Build COUNT small manifests, print ``ready``, wait for a line on stdin, then open the
    store and add COUNT shares and bans; print ``done`` and a JSON summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from p2p.bitfield import bit_indexes
from p2p.content import Manifest, build_manifest
from p2p.errors import DiskFull, StateDirLocked, StoreError
from p2p.identity import Identity
from p2p.store import ChunkMap, Store

SCRIPT = Path(__file__).resolve()
KiB = 1024
CHUNK = 64 * KiB
"""The chunk size of every file under 64 MiB (the protocol's minimum)."""


def make_bytes(size: int, seed: int) -> bytes:
    """``size`` reproducible, incompressible bytes."""
    return random.Random(seed).randbytes(size)


def save_manifest(manifest: Manifest, path: Path) -> Path:
    """Write a manifest's canonical bytes for a child process to read."""
    path.write_bytes(manifest.encode())
    return path


def chunk_bytes(cmap: ChunkMap, root: Path, index: int) -> bytes:
    """The bytes chunk ``index`` occupies in a file (or folder) laid out like ``cmap``'s manifest."""
    span = cmap.locate(index)
    entry = cmap.manifest.entries[span.entry]
    path = root if cmap.manifest.kind == "file" else root / entry.path
    with open(path, "rb") as f:
        f.seek(span.offset)
        return f.read(span.length)


def set_bits(bits: bytes) -> set[int]:
    """The indexes set in a bitfield."""
    return set(bit_indexes(bits))


class Clock:
    """A clock the test sets by hand: pass it as ``Store(..., clock=clock)``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Child:
    """A child process running this script, its output read line by line under a deadline."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._buf = b""
        self._err: bytes | None = None
        self.lines: list[str] = []

    def line(self, timeout: float = 30.0) -> str:
        """The next line of output; AssertionError if none comes in ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not ready:
                raise AssertionError(f"no output from the child within {timeout} s; so far {self.lines[-5:]}")
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"child ended (rc={self.proc.wait(10)}): {self.stderr()}")
            self._buf += data
        raw, self._buf = self._buf.split(b"\n", 1)
        text = raw.decode()
        self.lines.append(text)
        return text

    def send(self, data: bytes) -> None:
        """Write to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        """Tell the child there is nothing more to read."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.stdin = None  # so communicate() does not flush it

    def kill(self) -> int:
        """SIGKILL the child and reap it."""
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the child to exit: (return code, everything left on stdout)."""
        out, err = self.proc.communicate(timeout=timeout)
        self._err = err
        rest = (self._buf + out).decode()
        self.lines.extend(rest.splitlines())
        return self.proc.returncode, rest

    def stderr(self) -> str:
        """What the child wrote on stderr (once it has ended)."""
        if self._err is None:
            assert self.proc.stderr is not None
            self._err = self.proc.stderr.read()
        return self._err.decode(errors="replace")[-3000:]

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def mounted(fstype: str, where: Path, size: str = "64m") -> Iterator[Path]:
    """Mount a fresh ``tmpfs`` or ``ramfs`` at ``where`` for the test (skipped unless root)."""
    import pytest

    where.mkdir()
    options = ["-o", f"size={size}"] if fstype == "tmpfs" else []
    result = subprocess.run(["mount", "-t", fstype, *options, fstype, str(where)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} (needs root): {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)


# -- the child side -------------------------------------------------------------------


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _hold(state: str, manifest_path: str, dest: str) -> None:
    manifest = Manifest.decode(Path(manifest_path).read_bytes())
    with Store(Path(state)) as store:
        try:
            partial = store.open_download(manifest, Path(dest))
        except StateDirLocked as exc:
            _say(f"locked {exc}")
            return
        _say("holding")
        sys.stdin.buffer.read()  # until the parent closes our stdin
        partial.close()


def _crash(state: str, manifest_path: str, source: str, dest: str, seed: str, every: str) -> None:
    manifest = Manifest.decode(Path(manifest_path).read_bytes())
    data = Path(source).read_bytes()
    store = Store(Path(state))
    partial = store.open_download(manifest, Path(dest))
    cmap = partial.chunk_map
    order = list(range(cmap.count))
    random.Random(int(seed)).shuffle(order)
    for n, index in enumerate(order, 1):
        if not sys.stdin.buffer.read(1):
            return
        span = cmap.locate(index)  # a single file: the offset is the offset in the source
        partial.write_chunk(index, data[span.offset:span.offset + span.length])
        _say(f"wrote {index}")
        if n % int(every) == 0:
            partial.commit()
            _say(f"committed {partial.done}")
    _say("finished")


def _fill(state: str, manifest_path: str, source: str, dest: str, limit: str, every: str) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    manifest = Manifest.decode(Path(manifest_path).read_bytes())
    data = Path(source).read_bytes()
    store = Store(Path(state))
    partial = store.open_download(manifest, Path(dest))
    _say(f"opened {os.stat(partial.partial_path).st_size}")
    for index in range(partial.chunk_map.count):
        span = partial.chunk_map.locate(index)
        try:
            partial.write_chunk(index, data[span.offset:span.offset + span.length])
        except DiskFull as exc:
            _say(f"diskfull {exc.exit_code} {exc}")
            break
        _say(f"wrote {index}")
        if (index + 1) % int(every) == 0:
            partial.commit()
            _say(f"committed {partial.done}")
    partial.commit()
    _say(f"committed {partial.done}")
    store.close()


def _widen(state: str, manifest_path: str, source: str, dest: str) -> None:
    manifest = Manifest.decode(Path(manifest_path).read_bytes())
    store = Store(Path(state))
    partial = store.open_download(manifest, Path(dest))
    partial.recover()
    missing = [i for i in range(partial.chunk_map.count) if not partial.has(i)]
    for index in missing[:len(missing) // 2]:
        partial.write_chunk(index, chunk_bytes(partial.chunk_map, Path(source), index))
    partial.commit()
    _say(f"written {len(missing) // 2}")
    sys.stdin.buffer.read()


def _populate(state: str, work: str, tag: str, count: str) -> None:
    me = Identity.generate()
    base = Path(work) / tag
    base.mkdir(parents=True)
    built = []
    for i in range(int(count)):
        path = base / f"{tag}-{i}.txt"
        path.write_bytes(f"{tag} file {i}\n".encode() * (i + 1))
        built.append((path, *build_manifest(path, me)))
    peers = [Identity.generate().peer_id for _ in range(int(count))]
    _say("ready")
    sys.stdin.readline()
    with Store(Path(state)) as store:
        for (path, manifest, files), peer in zip(built, peers, strict=True):
            store.add_share(manifest, files, root=path)
            store.ban(peer, f"{tag} ban")
    _say("done")
    _say(json.dumps({"shares": [m.content_id.digest.hex() for _, m, _ in built],
                     "bans": [p.key.hex() for p in peers]}))


def _open_many(base: str, count: str) -> None:
    for k in range(int(count)):
        _say("ready")
        sys.stdin.readline()
        try:
            Store(Path(base) / str(k)).close()
        except StoreError as exc:
            _say(f"error {k} {exc}")


if __name__ == "__main__":
    modes = {"hold": _hold, "crash": _crash, "fill": _fill, "populate": _populate, "widen": _widen,
             "open-many": _open_many}
    modes[sys.argv[1]](*sys.argv[2:])
