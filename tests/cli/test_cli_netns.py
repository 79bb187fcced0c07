"""Across hosts: network namespaces on one bridge, each peer on its own address.

A bootstrap node, three sharers and a fetcher each run ``p2p`` in their own
namespace; the fetch finds the sharers through the DHT and pulls chunks from
more than one of them. This proves that peers announce addresses others can
reach (not 0.0.0.0, not loopback). A second lab mixes the families: dual-stack
bootstrap and sharer, one fetcher on an IPv6-only host and one on an IPv4-only
host. Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cliproc import CLI, make_file
from testbed import need_tools

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SUBNET = "10.77.0"
SUBNET6 = "fd77::"
PORT = 7473
HOSTS = 5


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def lab(tag: str, families: Sequence[tuple[bool, bool]]) -> Iterator[list[str]]:
    """One namespace per entry of ``families`` (has IPv4?, has IPv6?): host N at 10.77.0.N/24
    and/or fd77::N/64, joined by a bridge in a namespace of its own; always removed."""
    need_tools("ip")
    bridge_ns = f"{tag}br"
    names = [f"{tag}h{i}" for i in range(1, len(families) + 1)]
    made: list[str] = []
    try:
        try:
            ip("netns", "add", bridge_ns)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` does not work here: {exc.stderr.strip()}")
        made.append(bridge_ns)
        ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge_ns, "link", "set", "br0", "up")
        for i, (ns, (v4, v6)) in enumerate(zip(names, families, strict=True), start=1):
            ip("netns", "add", ns)
            made.append(ns)
            # Created inside the host namespace, peer end moved into the bridge namespace:
            # nothing is ever added to the namespace the tests run in.
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
               "netns", bridge_ns)
            ip("-n", bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            if v4:
                ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            if v6:  # nodad: usable at once, no duplicate-address wait
                ip("-n", ns, "addr", "add", f"{SUBNET6}{i}/64", "dev", "eth0", "nodad")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        # Deleting a namespace destroys its interfaces, and a veth pair dies with either end.
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """``HOSTS`` IPv4 hosts."""
    with lab(f"p2pc{os.getpid() % 100000}", [(True, False)] * HOSTS) as names:
        yield names


def test_fetch_across_five_hosts(cli: CLI, namespaces: list[str], tmp_path: Path) -> None:
    src = make_file(tmp_path / "across.bin", 32 << 20)

    def on(host: int) -> list[str]:
        return ["ip", "netns", "exec", namespaces[host - 1]]

    def node(name: str, host: int) -> list[str]:
        return cli.node_args(name, f"{SUBNET}.{host}:{PORT}")

    boot = cli.start("serve", "--json", *node("bootstrap", 1), prefix=on(1))
    boot_addr = str(boot.json()["listen"])
    assert boot_addr == f"{SUBNET}.1:{PORT}"
    sharers = []
    for host in (2, 3, 4):
        proc = cli.start("share", str(src), "--json", *node(f"sharer{host}", host),
                         "--bootstrap", boot_addr, prefix=on(host))
        info = proc.json()
        assert info["addresses"] == [f"{SUBNET}.{host}:{PORT}"]
        sharers.append(info)
    dest = tmp_path / "fetched.bin"
    fetch = cli.start("fetch", str(sharers[0]["content_id"]), "-o", str(dest), "--json",
                      *node("fetcher", 5), "--bootstrap", boot_addr, prefix=on(5))
    assert fetch.wait() == 0, fetch.err()
    result = fetch.last_json()
    assert filecmp.cmp(src, dest, shallow=False)
    suppliers = {peer for peer, n in result["chunks_by_peer"].items() if n}
    assert suppliers <= {s["peer_id"] for s in sharers}
    assert len(suppliers) > 1, result["chunks_by_peer"]


def test_dual_stack_fetch_across_hosts(cli: CLI, tmp_path: Path) -> None:
    """Dual-stack bootstrap and sharer (the default listen: every address of both families);
    an IPv6-only host and an IPv4-only host each fetch by content id through the DHT."""
    src = make_file(tmp_path / "dual.bin", 8 << 20)
    families = [(True, True), (True, True), (False, True), (True, False)]
    with lab(f"p2pd{os.getpid() % 100000}", families) as names:
        def on(host: int) -> list[str]:
            return ["ip", "netns", "exec", names[host - 1]]

        def state(name: str) -> list[str]:
            return ["--state-dir", str(cli.tmp / "state" / name)]

        boot = cli.start("serve", "--json", *state("bootstrap"), prefix=on(1))
        assert boot.json()["listening"] == [f"0.0.0.0:{PORT}", f"[::]:{PORT}"]
        boot4, boot6 = f"{SUBNET}.1:{PORT}", f"[{SUBNET6}1]:{PORT}"
        share = cli.start("share", str(src), "--json", *state("sharer"), "--bootstrap", boot4,
                          "--bootstrap", boot6, prefix=on(2))
        info = share.json()
        # Its ticket and records carry both families (and never a wildcard or loopback first).
        assert f"{SUBNET}.2:{PORT}" in info["addresses"], info["addresses"]
        assert f"[{SUBNET6}2]:{PORT}" in info["addresses"], info["addresses"]
        for host, boot_addr, name in ((3, boot6, "v6only"), (4, boot4, "v4only")):
            dest = tmp_path / f"{name}.bin"
            fetch = cli.start("fetch", str(info["content_id"]), "-o", str(dest), "--json",
                              *cli.node_args(name, "[::]:0" if host == 3 else "0.0.0.0:0"),
                              "--bootstrap", boot_addr, prefix=on(host))
            assert fetch.wait() == 0, fetch.err()
            assert filecmp.cmp(src, dest, shallow=False), name
            assert set(fetch.last_json()["chunks_by_peer"]) == {info["peer_id"]}
