"""Across hosts: five network namespaces on one bridge, each peer on its own 10.77.0.N address.

A bootstrap node, three sharers and a fetcher each run ``p2p`` in their own
namespace; the fetch finds the sharers through the DHT and pulls chunks from
more than one of them. This proves that peers announce addresses others can
reach (not 0.0.0.0, not loopback). Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliproc import CLI, make_file

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SUBNET = "10.77.0"
PORT = 7473
HOSTS = 5


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """``HOSTS`` namespaces, host N at 10.77.0.N/24, joined by a bridge in a namespace of its own."""
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"p2pc{os.getpid() % 100000}"
    bridge_ns = f"{tag}br"
    names = [f"{tag}h{i}" for i in range(1, HOSTS + 1)]
    made: list[str] = []
    try:
        try:
            ip("netns", "add", bridge_ns)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` does not work here: {exc.stderr.strip()}")
        made.append(bridge_ns)
        ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(names, start=1):
            ip("netns", "add", ns)
            made.append(ns)
            # Created inside the host namespace, peer end moved into the bridge namespace:
            # nothing is ever added to the namespace the tests run in.
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
               "netns", bridge_ns)
            ip("-n", bridge_ns, "link", "set", f"p{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        # Deleting a namespace destroys its interfaces, and a veth pair dies with either end.
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


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
