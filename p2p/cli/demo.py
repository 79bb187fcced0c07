"""``p2p demo``: a whole swarm on this machine, with a live view of who sends what.

A bootstrap node and N seeders run as real nodes on 127.0.0.1 (port 0) in a
child process (:mod:`p2p.cli.demo_seeders`), the downloader in this one, each
with its own temporary state directory. The
seeders share one generated file; the downloader fetches it by content id
through the DHT, from all of them at once; a live table shows each seeder's
part as its chunks are verified. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import filecmp
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import blake3
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import (
    BadInput,
    ChunkFailed,
    ChunkVerified,
    ContentId,
    DownloadProgress,
    DownloadStarted,
    Event,
    IntegrityError,
    NetworkError,
    Node,
    NodeConfig,
    PeerId,
    human_bytes,
    human_seconds,
    plural,
)
from .commands import Run
from .progress import following

DEFAULT_PEERS = 4
DEFAULT_SIZE = 512 * 1024 * 1024
MAX_PEERS = 32
"""More seeders than this in one process measures the event loop, not the swarm."""
GENERATE_PIECE = 8 * 1024 * 1024
FETCH_TIMEOUT = 30.0
SEEDERS_START_TIMEOUT = 60.0
BAR_WIDTH = 30

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'64M', '1G', '500K', '1.5GiB' or a byte count -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected e.g. 64M, 1G or 1048576")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * 1024 ** " kmgt".index(unit or " "))
    if size <= 0:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: must be more than 0 bytes")
    return size


def _generate(path: Path, size: int) -> None:
    """Pseudo-random bytes from a BLAKE3 stream: fast, and different every run."""
    stream = blake3.blake3(os.urandom(32))
    with path.open("wb") as f:
        for offset in range(0, size, GENERATE_PIECE):
            f.write(stream.digest(length=min(GENERATE_PIECE, size - offset), seek=offset))


class SwarmView:
    """The live table: one row per seeder, filled by ChunkVerified events."""

    def __init__(self, names: dict[PeerId, str]) -> None:
        self.names = names
        self.chunks: Counter[PeerId] = Counter()
        self.bytes: Counter[PeerId] = Counter()
        self.failed = 0
        self.total_chunks = 0
        self.size = 0
        self.rate = 0.0
        self.eta: float | None = None
        self.peers = 0

    def handle(self, event: Event) -> None:
        """Count one node event."""
        match event:
            case DownloadStarted():
                self.total_chunks, self.size = event.chunk_count, event.size
            case ChunkVerified(peer=peer, size=size):
                self.chunks[peer] += 1
                self.bytes[peer] += size
            case ChunkFailed():
                self.failed += 1
            case DownloadProgress():
                self.rate, self.eta, self.peers = event.rate, event.eta, event.peers
            case _:
                pass

    def render(self) -> RenderableType:
        """The table as it stands now."""
        table = Table(title="p2p demo: one download from every seeder at once", expand=False)
        for col, justify in (("seeder", "left"), ("peer", "left"), ("chunks", "right"),
                             ("received", "right"), ("share", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        total = max(1, self.total_chunks)
        for peer, name in self.names.items():
            n = self.chunks[peer]
            filled = round(BAR_WIDTH * n / total)
            table.add_row(name, peer.short(), str(n), human_bytes(self.bytes[peer]),
                          Text("█" * filled + "·" * (BAR_WIDTH - filled), style="green"))
        done = sum(self.chunks.values())
        status = Text(f"{done}/{plural(self.total_chunks, 'chunk')} verified  "
                      f"{human_bytes(self.rate)}/s  ETA {human_seconds(self.eta)}  "
                      f"{plural(self.peers, 'peer')}  {self.failed} failed")
        return Group(table, status)


async def cmd_demo(run: Run, args: argparse.Namespace) -> int:
    """Seeders, a download from all of them with a live per-peer view, and a summary."""
    if not 1 <= args.peers <= MAX_PEERS:
        raise BadInput(f"--peers must be between 1 and {MAX_PEERS}")
    out = run.out
    with tempfile.TemporaryDirectory(prefix="p2p-demo-") as tmp:
        base = Path(tmp)
        source = base / "demo.bin"
        out.note(f"generating a {human_bytes(args.size)} file")
        await asyncio.to_thread(_generate, source, args.size)

        async with contextlib.AsyncExitStack() as stack:
            seeders = await stack.enter_async_context(_seeders(base, args.peers, source))
            boot = (("127.0.0.1", seeders["bootstrap"]),)
            out.note(f"bootstrap node on 127.0.0.1:{seeders['bootstrap']}; {plural(args.peers, 'seeder')} "
                     f"sharing the file (in their own process)")
            content_id = ContentId.parse(seeders["content_id"])
            out.note(f"content id {content_id}")
            downloader = await stack.enter_async_context(Node(NodeConfig(
                state_dir=base / "downloader", host="127.0.0.1", port=0, bootstrap=boot,
                max_contacts_per_ip=None, download_dir=base / "downloads")))
            names = {PeerId.parse(p): f"seeder{i + 1}" for i, p in enumerate(seeders["seeders"])}
            view = SwarmView(names)
            with downloader.events.subscribed() as sub:
                live = (Live(get_renderable=view.render, console=out.err, refresh_per_second=8)
                        if out.live and not out.json else contextlib.nullcontext())
                with live:
                    async with following(sub, view.handle):
                        result = await downloader.fetch(str(content_id), timeout=FETCH_TIMEOUT)
            report = await downloader.verify(content_id)
            identical = await asyncio.to_thread(filecmp.cmp, source, result.path, False)
        summary = _summary(view, args.size, result.seconds, report.ok and view.failed == 0,
                           identical)
    out.result(summary, _summary_text(summary))
    if not identical or not report.ok:
        raise IntegrityError("the downloaded file does not match the original")
    return 0


@contextlib.asynccontextmanager
async def _seeders(base: Path, count: int, source: Path) -> AsyncIterator[dict[str, Any]]:
    """The bootstrap node and the seeders, in a child process; yields what it announced."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2p.cli.demo_seeders", str(base), str(count), str(source),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(SEEDERS_START_TIMEOUT):
            line = await proc.stdout.readline()
        if not line:
            raise NetworkError("the demo's seeders did not start")
        yield json.loads(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the child's signal to stop
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _summary(view: SwarmView, size: int, seconds: float, verified: bool,
             identical: bool) -> dict[str, Any]:
    by_name = {name: view.chunks[peer] for peer, name in view.names.items()}
    return {"bytes": size, "seconds": round(seconds, 3),
            "throughput_mib_s": round(size / seconds / 2**20, 1) if seconds > 0 else None,
            "chunks": view.total_chunks, "chunks_by_peer": by_name,
            "peers_used": sum(1 for n in by_name.values() if n), "seeders": len(view.names),
            "failed_chunks": view.failed, "verified": verified, "identical": identical}


def _summary_text(s: dict[str, Any]) -> str:
    lines = [f"downloaded {human_bytes(s['bytes'])} in {s['seconds']:.2f} s: "
             f"{s['throughput_mib_s']} MiB/s from {s['peers_used']} of {s['seeders']} seeders",
             "chunks per peer: " + ", ".join(f"{k} {v}" for k, v in sorted(s["chunks_by_peer"].items())),
             f"all {plural(s['chunks'], 'chunk')} verified: {'yes' if s['verified'] else 'NO'}",
             f"byte-identical to the original: {'yes' if s['identical'] else 'NO'}"]
    return "\n".join(lines)
