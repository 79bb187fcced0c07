"""One connection moving a served file: encrypted (Noise XX + AES-GCM) vs plain TCP.

The server runs in a separate process (``subprocess``), the client in this one.
The client keeps ``--window`` requests in flight and verifies every chunk with
BLAKE3 against hashes computed up front. The plain-TCP reference uses an asyncio
BufferedProtocol with the same request/response sizes and the same verification,
so the difference is the cost of the session (encryption, framing, messages).

    python bench/transfer.py --size 1G --chunk 1M --window 8

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

from p2p.identity import Identity
from p2p.testing import FileSource
from p2p.wire.messages import Data, Request
from p2p.wire.server import Server, ServerLimits
from p2p.wire.transport import connect

CID = bytes(32)
_REQ = struct.Struct(">I")  # plain reference: request = chunk index
_RESP = struct.Struct(">II")  # plain reference: response = index, length, then payload


def parse_size(text: str) -> int:
    """'1G', '64M', '512K' or a number of bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def make_file(size: int) -> Path:
    """A file of random bytes in the system temp folder (reused when it already exists)."""
    path = Path(tempfile.gettempdir()) / f"p2p-bench-transfer-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            for _ in range(0, size, 64 << 20):
                f.write(os.urandom(min(64 << 20, size - f.tell())))
        tmp.replace(path)
    return path


def chunk_hashes(path: Path, chunk: int) -> list[bytes]:
    """BLAKE3 of every chunk (what a manifest would list)."""
    out = []
    with path.open("rb") as f:
        while block := f.read(chunk):
            out.append(blake3.blake3(block).digest())
    return out


# -- servers (run in the child process) ----------------------------------------------------


async def serve_noise(path: Path, chunk: int) -> None:
    """Serve the file with the real Server; print the port; run until stdin closes."""
    source = FileSource(path, CID, chunk)
    server = Server(Identity.generate(), source, ServerLimits(max_inflight_requests=64))
    _, port = await server.start("127.0.0.1", 0)
    print(f"PORT {port} {server.identity.peer_id}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.aclose()
    source.close()


class _PlainServer(asyncio.BufferedProtocol):
    def __init__(self, fd: int, chunk: int) -> None:
        self.fd, self.chunk = fd, chunk
        self.buf = bytearray(1 << 16)
        self.end = 0
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.todo: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=4 << 20)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)[self.end:]

    def buffer_updated(self, n: int) -> None:
        self.end += n
        k = self.end // 4 * 4
        self.todo += [_REQ.unpack_from(self.buf, i)[0] for i in range(0, k, 4)]
        self.buf[:self.end - k] = self.buf[k:self.end]
        self.end -= k
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        while self.todo and not self.paused:
            index = self.todo.pop(0)
            data = os.pread(self.fd, self.chunk, index * self.chunk)
            self.transport.write(_RESP.pack(index, len(data)))
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._send()


async def serve_plain(path: Path, chunk: int) -> None:
    """Serve the file over plain TCP with the reference protocol."""
    fd = os.open(path, os.O_RDONLY)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _PlainServer(fd, chunk), "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]} -", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    await server.wait_closed()


# -- clients ---------------------------------------------------------------------------------


async def fetch_noise(port: int, hashes: list[bytes], window: int) -> float:
    """Download every chunk over the encrypted session; returns seconds taken."""
    conn = await connect("127.0.0.1", port, Identity.generate())
    n = len(hashes)
    start = time.perf_counter()
    sent = received = 0
    try:
        while received < n:
            while sent < n and sent - received < window:
                await conn.send(Request(CID, sent))
                sent += 1
            msg = await conn.receive()
            assert type(msg) is Data, msg
            if blake3.blake3(msg.payload).digest() != hashes[msg.index]:
                raise SystemExit(f"chunk {msg.index} failed verification")
            received += 1
        return time.perf_counter() - start
    finally:
        await conn.aclose()


class _PlainClient(asyncio.BufferedProtocol):
    def __init__(self, hashes: list[bytes], chunk: int, done: asyncio.Future[None]) -> None:
        self.hashes, self.done = hashes, done
        self.buf = bytearray(chunk * 2 + 64)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.received = 0
        self.sent = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def request(self) -> None:
        assert self.transport is not None
        self.transport.write(_REQ.pack(self.sent))
        self.sent += 1

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.end:]

    def buffer_updated(self, n: int) -> None:
        self.end += n
        view, pos = self.view, self.start
        while self.end - pos >= 8:
            index, length = _RESP.unpack_from(self.buf, pos)
            if self.end - pos - 8 < length:
                break
            payload = view[pos + 8:pos + 8 + length]
            # Verification on the same bytes, as in the encrypted client.
            if blake3.blake3(payload).digest() != self.hashes[index]:
                raise SystemExit(f"chunk {index} failed verification")
            pos += 8 + length
            self.received += 1
            if self.sent < len(self.hashes):
                self.request()
        keep = self.end - pos
        self.buf[:keep] = self.buf[pos:self.end]
        self.start, self.end = 0, keep
        if self.received == len(self.hashes) and not self.done.done():
            self.done.set_result(None)


async def fetch_plain(port: int, hashes: list[bytes], chunk: int, window: int) -> float:
    """Download every chunk over plain TCP; returns seconds taken."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, proto = await loop.create_connection(
        lambda: _PlainClient(hashes, chunk, done), "127.0.0.1", port)
    start = time.perf_counter()
    while proto.sent < min(window, len(hashes)):
        proto.request()
    await done  # the protocol tops the window up as each chunk arrives
    elapsed = time.perf_counter() - start
    transport.close()
    return elapsed


def start_server(mode: str, path: Path, chunk: int) -> tuple[subprocess.Popen[str], int]:
    """Run this script as the server child; returns it and its port."""
    proc = subprocess.Popen([sys.executable, __file__, "_serve", mode, str(path), str(chunk)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    return proc, int(line[1])


def stop_server(proc: subprocess.Popen[str]) -> None:
    """Close the child's stdin (its signal to stop) and wait for it."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    """Run the benchmark and print figures; the last line is JSON."""
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        mode, path, chunk = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        asyncio.run(serve_noise(path, chunk) if mode == "noise" else serve_plain(path, chunk))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--chunk", default="1M")
    ap.add_argument("--window", type=int, default=8, help="requests in flight")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    path = make_file(size)
    hashes = chunk_hashes(path, chunk)
    mib = size / (1 << 20)
    results: dict[str, list[float]] = {"noise": [], "plain": []}
    for _ in range(args.runs):
        for mode in ("plain", "noise"):
            proc, port = start_server(mode, path, chunk)
            try:
                if mode == "noise":
                    secs = asyncio.run(fetch_noise(port, hashes, args.window))
                else:
                    secs = asyncio.run(fetch_plain(port, hashes, chunk, args.window))
            finally:
                stop_server(proc)
            results[mode].append(mib / secs)
            print(f"{mode:6s} {mib:.0f} MiB in {secs:.2f} s = {mib / secs:.0f} MiB/s", flush=True)
    best = {m: sorted(v)[len(v) // 2] for m, v in results.items()}
    cmd = f"python bench/transfer.py --size {args.size} --chunk {args.chunk} --window {args.window} --runs {args.runs}"
    print(f"median of {args.runs}: encrypted+verified {best['noise']:.0f} MiB/s, "
          f"plain TCP+verified {best['plain']:.0f} MiB/s ({best['noise'] / best['plain']:.0%})")
    print(f"reproduce: {cmd}")
    print(json.dumps({"bench": "transfer", "size_bytes": size, "chunk_bytes": chunk,
                      "window": args.window, "runs": args.runs, "mib_s": round(best["noise"], 1),
                      "ref_mib_s": round(best["plain"], 1), "cipher": "Noise_XX_25519_AESGCM_SHA256",
                      "mib_s_runs": [round(x, 1) for x in results["noise"]],
                      "ref_mib_s_runs": [round(x, 1) for x in results["plain"]], "command": cmd}))


if __name__ == "__main__":
    main()
