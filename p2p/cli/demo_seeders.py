"""The seeders of ``p2p demo``, in a process of their own.

``python -m p2p.cli.demo_seeders BASE N FILE`` starts a bootstrap node and N
seeders of FILE on 127.0.0.1 (state under BASE), prints one JSON line (the
bootstrap port, the content id, each seeder's peer id), and serves until its
standard input closes. Running them apart from the downloader lets the demo use
both halves of a two-core machine, as a real swarm of separate hosts would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from .. import Node, NodeConfig


async def serve(base: Path, count: int, source: Path) -> None:
    """Run the bootstrap node and ``count`` seeders until stdin closes."""

    def config(name: str, boot: tuple[tuple[str, int], ...] = ()) -> NodeConfig:
        return NodeConfig(state_dir=base / name, host="127.0.0.1", port=0, bootstrap=boot,
                          max_contacts_per_ip=None, download_dir=base / name)

    async with contextlib.AsyncExitStack() as stack:
        bootstrap = await stack.enter_async_context(Node(config("bootstrap")))
        boot = (("127.0.0.1", bootstrap.port),)
        seeders = [await stack.enter_async_context(Node(config(f"seeder{i + 1}", boot)))
                   for i in range(count)]
        results = await asyncio.gather(*(s.share(source) for s in seeders))
        print(json.dumps({"bootstrap": bootstrap.port, "content_id": str(results[0].content_id),
                          "seeders": [str(s.peer_id) for s in seeders]}), flush=True)
        # Serve until the demo closes our stdin (or dies, which closes it too).
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the demo stops us by closing stdin, and a
    # second traceback from here would only clutter the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
