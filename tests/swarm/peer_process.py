"""A peer in its own process, for the swarm tests. Prints JSON lines on stdout (flushed).

    python tests/swarm/peer_process.py seed STATE_DIR FILE [--bootstrap HOST:PORT] [--throttle S]
        -> {"event": "seeding", "port": ..., "content_id": ..., "ticket": ..., "peer_id": ...}
           then serves until SIGTERM (or SIGKILL).
    python tests/swarm/peer_process.py fetch STATE_DIR ID --dest PATH [--peer HOST:PORT ...]
        -> {"event": "started", "chunks": N, "held": H}, one {"event": "chunk", ...} per
           verified chunk, then {"event": "done", "fetched_this_run": ..., ...} or
           {"event": "error", ...} with the error's exit code.

``--throttle`` makes the seeder sleep that long before each chunk it serves: a slow disk,
so that a test can act while a download is still running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from p2p.errors import P2PError
from p2p.events import ChunkVerified, DownloadStarted, Event, Subscription
from p2p.node import Node, NodeConfig
from p2p.swarm.download import Download


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def config(args: argparse.Namespace) -> NodeConfig:
    state = Path(args.state_dir)
    return NodeConfig(state_dir=state, host="127.0.0.1", port=0,
                      bootstrap=tuple(args.bootstrap), download_dir=state / "downloads",
                      max_contacts_per_ip=None)


async def seed(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Node(config(args)) as node:
        if args.throttle:
            served = node._store.read_chunk

            def slow_read(content_id: bytes, index: int) -> bytes | memoryview:
                time.sleep(args.throttle)  # a slow disk: blocking on purpose
                return served(content_id, index)

            node._store.read_chunk = slow_read  # type: ignore[method-assign]
        result = await node.share(Path(args.file))
        emit(event="seeding", port=node.port, content_id=str(result.content_id),
             ticket=str(result.ticket), peer_id=str(node.peer_id))
        await stop.wait()
    return 0


class Run:
    """What one fetch saw: its live Download (captured when it starts) and verified chunks."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.download: Download | None = None
        self.verified = 0

    def report(self, event: Event) -> None:
        match event:
            case DownloadStarted(content_id=cid, chunk_count=count, held=held):
                self.download = self.node.download(cid)
                emit(event="started", chunks=count, held=held)
            case ChunkVerified(index=index, peer=peer):
                self.verified += 1
                emit(event="chunk", index=index, peer=str(peer))
            case _:
                pass

    async def follow(self, sub: Subscription) -> None:
        async for event in sub:
            self.report(event)


async def fetch(args: argparse.Namespace) -> int:
    async with Node(config(args)) as node:
        run = Run(node)
        with node.events.subscribed() as sub:
            printer = asyncio.create_task(run.follow(sub))
            try:
                path = (await node.fetch(args.id, Path(args.dest), peers=args.peer, timeout=20)).path
            except P2PError as exc:
                emit(event="error", error=str(exc), type=type(exc).__name__, exit_code=exc.exit_code)
                return exc.exit_code
            finally:
                printer.cancel()
            while (event := sub.get_nowait()) is not None:
                run.report(event)
        download = run.download
        emit(event="done", path=str(path), verified=run.verified,
             fetched_this_run=None if download is None else download.fetched_this_run,
             chunks_by_peer={} if download is None else
             {str(p): n for p, n in download.chunks_by_peer.items()})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p_seed = sub.add_parser("seed")
    p_seed.add_argument("state_dir")
    p_seed.add_argument("file")
    p_seed.add_argument("--throttle", type=float, default=0.0)
    p_seed.add_argument("--bootstrap", type=address, action="append", default=[])
    p_fetch = sub.add_parser("fetch")
    p_fetch.add_argument("state_dir")
    p_fetch.add_argument("id")
    p_fetch.add_argument("--dest", required=True)
    p_fetch.add_argument("--peer", type=address, action="append", default=[])
    p_fetch.add_argument("--bootstrap", type=address, action="append", default=[])
    args = parser.parse_args()
    return asyncio.run(seed(args) if args.command == "seed" else fetch(args))


if __name__ == "__main__":
    sys.exit(main())
