"""Emulated wide-area links in network namespaces for bench/wan.py (stdlib only).

The kernel here has no ``netem``, so delay and loss come from a user-space packet
forwarder; the uplink rate of each seeder is a ``tbf`` qdisc on its veth egress.

Topology (NAME = a per-run prefix such as ``wan1234-``)::

    NAMEs0 (seeder 0, 10.9.0.2) --veth-- NAMErt (router) --veth-- NAMEdl (downloader, 10.8.0.2)
    NAMEs1 (seeder 1, 10.9.1.2) --veth--   |    tun t0, t1..    --veth--      (10.8.1.2)

Each path i has its own pair of veths through the router namespace and its own TUN
device ``t<i>`` there. Policy routing sends every packet that arrives on either veth of
path i into ``t<i>``; the forwarder process of that path (``wanlab.py forward``, one per
path, so two paths use two cores) reads it, holds it for the one-way delay (half the RTT,
each direction), drops it with the configured probability, and writes it back into the
TUN, from where the router's main table sends it on. Packets stay packets end to end:
TCP sees the real round-trip time, loss and its own congestion control.

TUN runs with ``IFF_VNET_HDR`` and TSO offloads when a path has no loss: the kernel then
hands over whole GSO super-packets (up to 64 KiB, as the seeder's TCP built them) and
segments them again on the way out, which is what lets Python carry hundreds of Mbit/s.
On a path with loss the offloads are off, so every read is one wire-sized segment and the
loss is per segment, as a lossy link drops them.

Also here: the raw-TCP tools of the emulation checks and of the ceiling
(``serve``: echo, source and UDP echo in a seeder namespace; ``ping``/``rate``/``udp``/
``sink``: the client side in the downloader namespace), and the libtorrent children
(``lt-seed``/``lt-leech``) built on the reference harness in ``../shared/bench``.
Every role ends by itself (``--max-seconds``) and when its parent dies.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import os
import random
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
VNET_HDR = 10
SERVE_PORT = 5201
SOURCE_BLOCK = 4 * MiB


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


def parent_watch(max_seconds: float) -> None:
    """End this process when its parent goes away or after max_seconds (a daemon thread)."""
    parent = os.getppid()
    deadline = time.monotonic() + max_seconds

    def watch() -> None:
        while time.monotonic() < deadline and os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


# -- the forwarder ------------------------------------------------------------------------


def forward(a: argparse.Namespace) -> None:
    """Delay/loss forwarder on one TUN device (run inside the router namespace)."""
    try:  # the emulated link should not queue behind the processes it carries
        os.nice(-15)
    except OSError:
        pass
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", a.tun.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETOFFLOAD, (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
                if a.offload else 0)
    down = bytes(int(x) for x in a.down_prefix.split("."))  # packets to the downloader: "down"
    plen = len(down)
    delay = a.delay_ms / 1000
    loss = (a.loss_down, a.loss_up)
    rng = random.Random(a.seed)
    queues: tuple[collections.deque[tuple[float, bytes]], ...] = (collections.deque(), collections.deque())
    def fresh() -> dict[str, Any]:
        return {"pkts": [0, 0], "bytes": [0, 0], "lost": [0, 0], "dead_dropped": 0, "reads": 0}

    stats = fresh()
    late: list[float] = []
    dead = False
    stop = False
    report = False

    def dump() -> None:
        if late:
            late.sort()
            stats["late_ms_p50"] = round(late[len(late) // 2] * 1000, 3)
            stats["late_ms_p99"] = round(late[int(len(late) * 0.99)] * 1000, 3)
            stats["late_ms_max"] = round(late[-1] * 1000, 3)
        print(json.dumps({"stats": stats}), flush=True)

    def on_signal(sig: int, _frame: object) -> None:
        nonlocal dead, stop, report
        if sig == signal.SIGHUP:
            report = True
        elif sig == signal.SIGUSR1:
            dead = True
        elif sig == signal.SIGUSR2:
            dead = False
        else:
            stop = True

    for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    parent_watch(a.max_seconds)
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    print(json.dumps({"ready": a.tun}), flush=True)
    read, write, mono = os.read, os.write, time.monotonic
    while not stop:
        if report:  # SIGHUP: print the counters since the last report and start afresh
            report = False
            dump()
            stats = fresh()
            late = []
        now = mono()
        for q in queues:
            while q and q[0][0] <= now:
                due, pkt = q.popleft()
                lag = now - due
                if len(late) < 200_000:
                    late.append(lag)
                try:
                    write(fd, pkt)
                except OSError:
                    pass
        heads = [q[0][0] for q in queues if q]
        timeout = max(0.0, min(heads) - mono()) if heads else 0.5
        try:
            events = ep.poll(timeout)
        except InterruptedError:
            continue
        if not events:
            continue
        now = mono()
        stats["reads"] += 1
        for _ in range(256):
            try:
                pkt = read(fd, 70000)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            d = 0 if pkt[VNET_HDR + 16:VNET_HDR + 16 + plen] == down else 1
            if dead:
                stats["dead_dropped"] += 1
                continue
            stats["pkts"][d] += 1
            stats["bytes"][d] += len(pkt) - VNET_HDR
            if loss[d] and rng.random() < loss[d]:
                stats["lost"][d] += 1
                continue
            queues[d].append((now + delay, pkt))
    dump()


# -- the lab ------------------------------------------------------------------------------


class Path_:
    """One seeder's path: uplink rate (Mbit/s), round-trip time (ms), loss (fraction)."""

    def __init__(self, mbit: float, rtt_ms: float, loss: float = 0.0) -> None:
        self.mbit, self.rtt_ms, self.loss = mbit, rtt_ms, loss

    def __repr__(self) -> str:
        return f"{self.mbit:g} Mbit/s, {self.rtt_ms:g} ms" + (f", {self.loss * 100:g}% loss" if self.loss else "")


class Lab:
    """The namespaces, veths, qdiscs and forwarders of one run; ``close()`` removes all."""

    def __init__(self, prefix: str, paths: list[Path_], python: str = sys.executable,
                 max_seconds: float = 7200) -> None:
        self.prefix, self.paths, self.python = prefix, paths, python
        self.max_seconds = max_seconds
        self.dl, self.rt = prefix + "dl", prefix + "rt"
        self.seeders = [f"{prefix}s{i}" for i in range(len(paths))]
        self.forwarders: list[subprocess.Popen[str]] = []
        self.namespaces: list[str] = []

    def seeder_ip(self, i: int) -> str:
        return f"10.9.{i}.2"

    def dl_ip(self, i: int) -> str:
        return f"10.8.{i}.2"

    def ns(self, name: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", name, *cmd]

    def open(self) -> None:
        for name in (self.dl, self.rt, *self.seeders):
            sh("ip", "netns", "add", name)
            self.namespaces.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
            # Room for a window of a high bandwidth-delay product (per-namespace sysctls).
            sh(*self.ns(name, "sysctl", "-qw", "net.ipv4.tcp_rmem=4096 131072 67108864",
                        "net.ipv4.tcp_wmem=4096 16384 67108864"))
        rt = self.rt
        sh(*self.ns(rt, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0"))
        for i, (seed, p) in enumerate(zip(self.seeders, self.paths, strict=True)):
            sh("ip", "link", "add", "eth0", "netns", seed, "type", "veth", "peer", "name", f"s{i}",
               "netns", rt)
            sh("ip", "link", "add", f"p{i}", "netns", self.dl, "type", "veth", "peer", "name",
               f"d{i}", "netns", rt)
            sh("ip", "-n", seed, "addr", "add", f"{self.seeder_ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", seed, "link", "set", "eth0", "up")
            sh("ip", "-n", seed, "route", "add", "default", "via", f"10.9.{i}.1")
            sh("ip", "-n", rt, "addr", "add", f"10.9.{i}.1/24", "dev", f"s{i}")
            sh("ip", "-n", rt, "addr", "add", f"10.8.{i}.1/24", "dev", f"d{i}")
            sh("ip", "-n", rt, "link", "set", f"s{i}", "up")
            sh("ip", "-n", rt, "link", "set", f"d{i}", "up")
            sh("ip", "-n", self.dl, "addr", "add", f"{self.dl_ip(i)}/24", "dev", f"p{i}")
            sh("ip", "-n", self.dl, "link", "set", f"p{i}", "up")
            sh("ip", "-n", self.dl, "route", "add", f"10.9.{i}.0/24", "via", f"10.8.{i}.1")
            # The seeder's uplink: tbf with a bucket of 2 ms at the rate (at least 64 KiB, one
            # TSO packet) and a queue of one bandwidth-delay product (at least 256 KiB).
            rate_bps = p.mbit * 1e6 / 8
            burst = max(64 * 1024, int(rate_bps * 0.002))
            limit = max(256 * 1024, int(rate_bps * p.rtt_ms / 1000))
            sh("tc", "-n", seed, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
               f"{p.mbit}mbit", "burst", str(burst), "limit", str(limit))
            fw = subprocess.Popen(
                self.ns(rt, self.python, str(Path(__file__).resolve()), "forward", "--tun", f"t{i}",
                        "--down-prefix", "10.8", "--delay-ms", str(p.rtt_ms / 2),
                        "--loss-down", str(p.loss), "--loss-up", str(p.loss),
                        "--seed", str(i + 1), "--max-seconds", str(self.max_seconds),
                        *(["--offload"] if not p.loss else [])),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            self.forwarders.append(fw)
            line = fw.stdout.readline() if fw.stdout else ""
            if "ready" not in line:
                raise RuntimeError(f"forwarder {i} failed to start: {line!r}")
            sh("ip", "-n", rt, "link", "set", f"t{i}", "up")
            sh("ip", "-n", rt, "route", "add", "default", "dev", f"t{i}", "table", str(100 + i))
            for dev in (f"s{i}", f"d{i}"):
                sh("ip", "-n", rt, "rule", "add", "iif", dev, "lookup", str(100 + i))
            for dev in (f"s{i}", f"d{i}", f"t{i}"):
                sh(*self.ns(rt, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0"))

    def kill_link(self, i: int) -> None:
        """Path i goes dead: its forwarder drops everything from now on (no RST, silence)."""
        self.forwarders[i].send_signal(signal.SIGUSR1)

    def revive_link(self, i: int) -> None:
        self.forwarders[i].send_signal(signal.SIGUSR2)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each forwarder's counters since the last snapshot (SIGHUP; it answers within 0.5 s)."""
        out = []
        for fw in self.forwarders:
            fw.send_signal(signal.SIGHUP)
        for fw in self.forwarders:
            line = fw.stdout.readline() if fw.stdout and fw.poll() is None else ""
            out.append(json.loads(line)["stats"] if '"stats"' in line else {})
        return out

    def forwarder_stats(self) -> list[dict[str, object]]:
        """Stop the forwarders and collect their counters (ends the lab's paths)."""
        out = []
        for fw in self.forwarders:
            if fw.poll() is None:
                fw.terminate()
            try:
                text, _ = fw.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                fw.kill()
                text, _ = fw.communicate()
            stats = [json.loads(x)["stats"] for x in (text or "").splitlines() if '"stats"' in x]
            out.append(stats[-1] if stats else {})
        return out

    def close(self) -> None:
        """Kill every process left in the namespaces, the forwarders, then the namespaces."""
        for name in self.namespaces:
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for fw in self.forwarders:
            if fw.poll() is None:
                fw.kill()
            try:
                fw.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


def leftovers(prefix: str) -> list[str]:
    """Namespaces with our prefix still present (should be none after close)."""
    out = sh("ip", "netns", "list", check=False).stdout.split("\n")
    return [x.split()[0] for x in out if x.startswith(prefix)]


# -- raw TCP tools ------------------------------------------------------------------------


def serve(a: argparse.Namespace) -> None:
    """In a seeder namespace: TCP on SERVE_PORT (b"P" echo, b"S" source), UDP echo on it."""
    parent_watch(a.max_seconds)
    block = os.urandom(SOURCE_BLOCK)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((a.host, SERVE_PORT))
    udp_count = [0]

    def udp_echo() -> None:
        while True:
            data, addr = udp.recvfrom(2048)
            udp_count[0] += 1
            udp.sendto(data, addr)

    threading.Thread(target=udp_echo, daemon=True).start()
    lsock = socket.create_server((a.host, SERVE_PORT), backlog=64, reuse_port=True)
    print(json.dumps({"ready": a.host}), flush=True)

    def handle(c: socket.socket) -> None:
        with c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kind = c.recv(1)
            try:
                if kind == b"P":
                    while data := c.recv(64):
                        c.sendall(data)
                elif kind == b"S":
                    view = memoryview(block)
                    while True:
                        c.sendall(view)
                elif kind == b"C":
                    c.sendall(json.dumps({"udp_received": udp_count[0]}).encode())
                    udp_count[0] = 0
            except OSError:
                pass

    while True:
        c, _ = lsock.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def connect(host: str, kind: bytes) -> socket.socket:
    s = socket.create_connection((host, SERVE_PORT), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(kind)
    return s


def ping(a: argparse.Namespace) -> None:
    """TCP ping-pong RTT: n round trips of 16 bytes on one connection (after one warm-up)."""
    with connect(a.host, b"P") as s:
        rtts = []
        for i in range(a.count + 1):
            t0 = time.perf_counter()
            s.sendall(b"x" * 16)
            got = 0
            while got < 16:
                got += len(s.recv(64))
            if i:
                rtts.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"rtt_ms": statistics.median(rtts), "rtt_ms_min": min(rtts),
                      "rtt_ms_max": max(rtts)}))


def rate(a: argparse.Namespace) -> None:
    """One raw TCP stream for a.seconds: Mbit/s over the whole and over the last half."""
    buf = bytearray(4 * MiB)
    with connect(a.host, b"S") as s:
        t0 = time.perf_counter()
        total, mid_bytes, mid_t = 0, 0, 0.0
        while (now := time.perf_counter()) - t0 < a.seconds:
            n = s.recv_into(buf)
            if not n:
                break
            total += n
            if not mid_t and now - t0 >= a.seconds / 2:
                mid_bytes, mid_t = total, now
        el = time.perf_counter() - t0
    second_half = (total - mid_bytes) * 8 / 1e6 / max(1e-9, el - (mid_t - t0)) if mid_t else 0.0
    print(json.dumps({"mbit": total * 8 / 1e6 / el, "mbit_second_half": second_half,
                      "seconds": el, "bytes": total}))


def udp_loss(a: argparse.Namespace) -> None:
    """a.count datagrams paced at a.pps to the seeder's UDP echo: loss each way."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(0.05)
    u.connect((a.host, SERVE_PORT))
    got = [0]
    done = threading.Event()

    def recv() -> None:
        while not done.is_set():
            try:
                u.recv(2048)
                got[0] += 1
            except TimeoutError:
                continue
            except OSError:
                return

    with connect(a.host, b"C") as c:  # resets the seeder's count
        c.recv(256)
    th = threading.Thread(target=recv, daemon=True)
    th.start()
    t0 = time.perf_counter()
    payload = b"u" * 1000
    for i in range(a.count):
        delay = t0 + i / a.pps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        u.send(payload)
    time.sleep(a.wait)
    done.set()
    th.join()
    with connect(a.host, b"C") as c:
        there = json.loads(c.recv(256))["udp_received"]
    up = 1 - there / a.count
    down = 1 - got[0] / max(1, there)
    print(json.dumps({"sent": a.count, "arrived": there, "returned": got[0],
                      "loss_up": up, "loss_down": down}))


def sink(a: argparse.Namespace) -> None:
    """The ceiling: one raw TCP stream from every seeder at once until a.size bytes arrived."""
    hosts = a.hosts.split(",")
    total = [0]
    per = [0] * len(hosts)
    lock = threading.Lock()
    done = threading.Event()
    t0 = time.perf_counter()
    finish = [0.0]

    def pull(i: int) -> None:
        buf = bytearray(4 * MiB)
        try:
            with connect(hosts[i], b"S") as s:
                s.settimeout(0.5)
                while not done.is_set():
                    try:
                        n = s.recv_into(buf)
                    except TimeoutError:
                        continue
                    if not n:
                        return
                    with lock:
                        per[i] += n
                        total[0] += n
                        if total[0] >= a.size and not done.is_set():
                            finish[0] = time.perf_counter()
                            done.set()
        except OSError:
            return

    threads = [threading.Thread(target=pull, args=(i,), daemon=True) for i in range(len(hosts))]
    for t in threads:
        t.start()
    done.wait(a.max_seconds)
    ok = done.is_set()
    print(json.dumps({"ok": ok, "seconds": (finish[0] or time.perf_counter()) - t0,
                      "bytes_by_path": per}), flush=True)
    os._exit(0)  # a stalled stream's thread may sit in recv; nothing to clean up


# -- libtorrent children (run with the libtorrent venv's Python) ---------------------------


def lt_import(lt_bench: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(Path(lt_bench).resolve().parent))
    import bench_libtorrent as b  # the reference harness: its settings, its seeder

    return b


def lt_seed(a: argparse.Namespace) -> None:
    b = lt_import(a.lt_bench)
    b.HOST = a.host
    a.enc, a.preset = "off", "default"
    b.cmd_seeder(a)


def lt_leech(a: argparse.Namespace) -> None:
    """The harness's leecher, dialling HOST:PORT peers (one per namespace) instead of 127.0.0.1."""
    b = lt_import(a.lt_bench)
    lt = b.lt
    parent_watch(a.timeout + 60)
    ses = lt.session(b.lt_settings(a.port, "off"))  # b.HOST is set below for listen only
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(a.torrent)
    atp.save_path = a.save
    t0 = time.perf_counter()
    h = ses.add_torrent(atp)
    for peer in a.peers.split(","):
        host, _, port = peer.rpartition(":")
        h.connect_peer((host, int(port)))
    ok = False
    while time.perf_counter() - t0 < a.timeout:
        ses.wait_for_alert(20)
        for al in ses.pop_alerts():
            if isinstance(al, (lt.torrent_error_alert, lt.file_error_alert)):
                raise SystemExit(al.message())
        if h.status().is_seeding:
            ok = True
            break
    el = time.perf_counter() - t0
    st = h.status()
    print(json.dumps({"ok": ok, "seconds": el, "payload": st.total_payload_download}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("role", choices=["forward", "serve", "ping", "rate", "udp", "sink",
                                     "lt-seed", "lt-leech"])
    ap.add_argument("--tun")
    ap.add_argument("--down-prefix")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--loss-down", type=float, default=0.0)
    ap.add_argument("--loss-up", type=float, default=0.0)
    ap.add_argument("--offload", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=7200)
    ap.add_argument("--host")
    ap.add_argument("--hosts")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--pps", type=float, default=500)
    ap.add_argument("--wait", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--lt-bench")
    ap.add_argument("--port", type=int)
    ap.add_argument("--peers")
    ap.add_argument("--torrent")
    ap.add_argument("--resume")
    ap.add_argument("--save")
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args()
    if a.role == "lt-leech":
        b = lt_import(a.lt_bench)
        b.HOST = "0.0.0.0"
    {"forward": forward, "serve": serve, "ping": ping, "rate": rate, "udp": udp_loss,
     "sink": sink, "lt-seed": lt_seed, "lt-leech": lt_leech}[a.role](a)


if __name__ == "__main__":
    main()
