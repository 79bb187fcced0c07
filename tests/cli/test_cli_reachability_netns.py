"""Reachability across a NAT lab: ``p2p netcheck --json`` behind real nftables routers.

Topology (per test, under a unique namespace prefix, always removed): an "internet" bridge;
the bootstrap daemon on it at 203.0.113.10 with its observer endpoint at 203.0.113.11; and
one host, either on the bridge itself (public, 203.0.113.20) or at 10.0.1.2 behind a router
(203.0.113.1) whose firewall drops unsolicited inbound traffic and which does nft
``masquerade`` (endpoint-independent mapping), ``masquerade fully-random`` (symmetric), or
no NAT at all (firewall-only). The relay test puts two hosts behind two such routers
(10.0.1.2 behind 203.0.113.1, 10.0.2.2 behind 203.0.113.2) with the bootstrap daemon as
their relay. The documentation range stands for the internet: nothing here may judge by
address class. Needs root, ``ip netns`` and ``nft``; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from cliproc import CLI, Proc, clean_env, make_file
from netlab import FIREWALL, NAT, RESET, on, run
from testbed import need_tools

from p2p.content import Ticket
from p2p.identity import PeerId, node_id_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT = 7473
BOOT, BOOT2 = "203.0.113.10", "203.0.113.11"
ROUTER, PUBLIC_HOST, LAN_HOST = "203.0.113.1", "203.0.113.20", "10.0.1.2"
ROUTER_B = "203.0.113.2"
METRICS = 9464
"""The daemon's metrics port, on the loopback of its own namespace."""


class Namespaces:
    """Builds a lab's namespaces under one per-run prefix and removes every one it made."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.names: dict[str, str] = {}
        """Namespace name by role (``inet``, ``boot``, ``host``, ``rtr``, ...)."""
        self._made: list[str] = []

    def add(self, role: str) -> str:
        name = self.names[role] = f"{self.tag}{role}"
        run("ip", "netns", "add", name)
        self._made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def internet(self) -> None:
        """The "internet" bridge (skips the test when namespaces cannot be made here)."""
        try:
            self.add("i")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` does not work here: {exc.stderr.strip()}")
        self.names["inet"] = self.names["i"]
        run("ip", "-n", self.names["inet"], "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.names["inet"], "link", "set", "br0", "up")

    def wan(self, role: str, index: int, addr: str) -> None:
        """``role``'s interface ``wan`` on the bridge, at ``addr``."""
        name, inet = self.names[role], self.names["inet"]
        run("ip", "-n", name, "link", "add", "wan", "type", "veth", "peer", "name",
            f"v{index}", "netns", inet)
        run("ip", "-n", inet, "link", "set", f"v{index}", "master", "br0", "up")
        run("ip", "-n", name, "addr", "add", f"{addr}/24", "dev", "wan")
        run("ip", "-n", name, "link", "set", "wan", "up")

    def behind(self, host: str, router: str, index: int, router_addr: str, lan: str,
               kind: str) -> None:
        """``host`` at ``lan``.2 behind ``router`` (``router_addr`` on the bridge, ``lan``.1
        inside): a firewall that drops unsolicited inbound, and the NAT ``kind`` (cone,
        symmetric, firewall-only; cone-rst: a cone whose firewall answers an unsolicited SYN
        with a reset instead of dropping it)."""
        self.add(router)
        self.wan(router, index, router_addr)
        rtr, hst = self.names[router], self.names[host]
        run("ip", "-n", rtr, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", hst)
        run("ip", "-n", rtr, "addr", "add", f"{lan}.1/24", "dev", "lan")
        run("ip", "-n", rtr, "link", "set", "lan", "up")
        run("ip", "-n", hst, "addr", "add", f"{lan}.2/24", "dev", "eth0")
        run("ip", "-n", hst, "link", "set", "eth0", "up")
        run("ip", "-n", hst, "route", "add", "default", "via", f"{lan}.1")
        run("ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "netns", "exec", rtr, "nft", "-f", "-", stdin=FIREWALL)
        if kind == "cone-rst":
            run("ip", "netns", "exec", rtr, "nft", RESET)
        if kind == "firewall-only":
            run("ip", "-n", self.names["boot"], "route", "add", f"{lan}.0/24", "via", router_addr)
        else:
            flags = "fully-random" if kind == "symmetric" else ""
            run("ip", "netns", "exec", rtr, "nft", NAT.format(flags=flags))

    def remove(self) -> None:
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)


def boot_namespace(lab: Namespaces) -> None:
    """The bootstrap daemon's namespace: two public addresses (the second for the observer)."""
    lab.add("boot")
    lab.wan("boot", 1, BOOT)
    run("ip", "-n", lab.names["boot"], "addr", "add", f"{BOOT2}/24", "dev", "wan")


@contextlib.contextmanager
def lab(kind: str) -> Iterator[dict[str, str]]:
    """The topology for ``kind`` (public, cone, symmetric, firewall-only): namespace names
    by role (``boot``, ``host``); everything is deleted on the way out, failing or not."""
    need_tools("ip", "nft")
    made = Namespaces(f"rch{os.getpid() % 100000}{kind[:2]}")
    try:
        made.internet()
        boot_namespace(made)
        if kind == "public":
            made.add("host")
            made.wan("host", 2, PUBLIC_HOST)
        else:
            made.add("host")
            made.behind("host", "rtr", 3, ROUTER, "10.0.1", kind)
        yield made.names
    finally:
        made.remove()


@contextlib.contextmanager
def nat_pair(kind_a: str, kind_b: str) -> Iterator[dict[str, str]]:
    """Two hosts, ``hosta`` at 10.0.1.2 behind ``rtra`` (203.0.113.1, NAT ``kind_a``) and
    ``hostb`` at 10.0.2.2 behind ``rtrb`` (203.0.113.2, ``kind_b``), and the bootstrap on
    the bridge; a ``public`` host sits on the bridge instead (``hosta`` at 203.0.113.21,
    ``hostb`` at .22). Everything is deleted on the way out."""
    need_tools("ip", "nft")
    made = Namespaces(f"rly{os.getpid() % 100000}{kind_a[0]}{kind_a[-1]}{kind_b[0]}{kind_b[-1]}")
    try:
        made.internet()
        boot_namespace(made)
        for host, router, index, router_addr, lan, kind in (
                ("hosta", "rtra", 3, ROUTER, "10.0.1", kind_a),
                ("hostb", "rtrb", 4, ROUTER_B, "10.0.2", kind_b)):
            made.add(host)
            if kind == "public":
                made.wan(host, index, f"203.0.113.{18 + index}")
            else:
                made.behind(host, router, index, router_addr, lan, kind)
        yield made.names
    finally:
        made.remove()


def relay_metrics(names: dict[str, str]) -> dict[str, float]:
    """The daemon's ``p2p_bootstrap_relay_*`` samples (scraped from inside its namespace)."""
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://127.0.0.1:{METRICS}/metrics', timeout=10).read().decode())")
    done = subprocess.run([*on(names["boot"]), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=30, check=True)
    out = {}
    for line in done.stdout.splitlines():
        if line.startswith("p2p_bootstrap_relay_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@contextlib.contextmanager
def daemon(cli: CLI, names: dict[str, str], *extra: str) -> Iterator[Proc]:
    """The bootstrap daemon in ``boot``, ready; killed at the end if still running."""
    argv = [*on(names["boot"]), sys.executable, "-m", "bootstrap", "--listen", f"{BOOT}:{PORT}",
            "--observer", f"{BOOT2}:{PORT}", "--state-dir", str(cli.tmp / "boot"),
            "--log-format", "json", *extra]
    proc = Proc(argv, clean_env(), cli.tmp)
    cli.procs.append(proc)
    assert proc.json()["event"] == "listening"
    yield proc


def netcheck(cli: CLI, names: dict[str, str], state: str) -> dict[str, object]:
    """``p2p netcheck --json`` on the host: exactly one JSON object."""
    done = cli.run("--state-dir", str(cli.tmp / state), "--listen", f"0.0.0.0:{PORT}",
                   "--bootstrap", f"{BOOT}:{PORT}", "netcheck", "--json",
                   prefix=on(names["host"]), timeout=40)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    obj = json.loads(lines[0])
    assert set(obj) == {"reachability", "nat", "evidence"}, obj
    return obj


def saved_contacts(cli: CLI, boot: Proc) -> set[str]:
    """Node ids (hex) in the bootstrap's routing table, as it saves it when stopped."""
    boot.send(signal.SIGTERM)
    assert boot.wait() == 0, boot.err()
    state = json.loads((cli.tmp / "boot" / "routing.json").read_text())
    return {entry[0] for entry in state["contacts"]}


def node_id_of(cli: CLI, state: str) -> str:
    done = cli.run("--state-dir", str(cli.tmp / state), "id", "--json")
    assert done.returncode == 0, done.stderr
    return node_id_for(PeerId.parse(json.loads(done.stdout)["peer_id"]).key).hex()


def serve(cli: CLI, names: dict[str, str], state: str) -> Proc:
    """A long-running ``p2p serve`` on the host (an ``auto`` DHT node), ready."""
    proc = cli.start("serve", "--json", "--state-dir", str(cli.tmp / state), "--listen",
                     f"0.0.0.0:{PORT}", "--bootstrap", f"{BOOT}:{PORT}",
                     prefix=on(names["host"]))
    proc.json()
    return proc


def test_public_host_is_public_and_joins_the_table(cli: CLI) -> None:
    with lab("public") as names, daemon(cli, names) as boot:
        verdict = netcheck(cli, names, "once")
        assert verdict["reachability"] == "public", verdict
        assert verdict["nat"]["present"] is False, verdict  # type: ignore[index]
        # A running node answers through its control socket, and, reachable, becomes a
        # DHT server that the bootstrap keeps (the control for the NAT test below).
        node = serve(cli, names, "node")
        ran = cli.run("--state-dir", str(cli.tmp / "node"), "netcheck", "--json", timeout=40)
        assert ran.returncode == 0, ran.stderr
        live = json.loads(ran.stdout)
        assert live["reachability"] == "public", live
        assert "running node" in live["evidence"][0]
        node.stop()
        assert node_id_of(cli, "node") in saved_contacts(cli, boot)


def test_cone_nat_is_nat_with_endpoint_independent_mapping_and_stays_out(cli: CLI) -> None:
    with lab("cone") as names, daemon(cli, names) as boot:
        node = serve(cli, names, "node")
        ran = cli.run("--state-dir", str(cli.tmp / "node"), "netcheck", "--json", timeout=40)
        assert ran.returncode == 0, ran.stderr
        verdict = json.loads(ran.stdout)
        assert verdict["reachability"] == "nat", verdict
        nat = verdict["nat"]
        assert nat["present"] is True and nat["mapping"] == "endpoint-independent", verdict
        assert nat["external"] == f"{ROUTER}:{PORT}", verdict  # masquerade keeps the port
        node.stop()
        # It queried and was answered, yet never entered the bootstrap's routing table.
        assert node_id_of(cli, "node") not in saved_contacts(cli, boot)


def test_symmetric_nat_is_nat_with_endpoint_dependent_mapping(cli: CLI) -> None:
    with lab("symmetric") as names, daemon(cli, names):
        verdict = netcheck(cli, names, "once")
        assert verdict["reachability"] == "nat", verdict
        assert verdict["nat"]["mapping"] == "endpoint-dependent", verdict  # type: ignore[index]


def test_firewall_only_host(cli: CLI) -> None:
    with lab("firewall-only") as names, daemon(cli, names):
        verdict = netcheck(cli, names, "once")
        assert verdict["reachability"] == "firewall-only", verdict
        assert verdict["nat"]["present"] is False, verdict  # type: ignore[index]


def test_a_nated_share_is_fetched_by_a_nated_fetch_through_the_relay(cli: CLI) -> None:
    # Cone NAT for the sharer, symmetric for the fetcher: no direct path exists (both
    # firewalls drop unsolicited inbound, and the hole punch cannot guess the symmetric
    # NAT's next port), so every byte crosses the bootstrap's relay.
    size = 3 << 20
    with nat_pair("cone", "symmetric") as names, \
            daemon(cli, names, "--metrics", f"127.0.0.1:{METRICS}"):
        source = make_file(cli.tmp / "src" / "film.bin", size, seed=16)
        boot = f"{BOOT}:{PORT}"
        share = cli.start("share", "--json", str(source), "--state-dir", str(cli.tmp / "a"),
                          "--listen", f"0.0.0.0:{PORT}", "--bootstrap", boot,
                          prefix=on(names["hosta"]))
        info = share.json_until(lambda obj: "ticket" in obj, timeout=40)
        printed = time.monotonic()
        ticket = Ticket.parse(info["ticket"])
        assert [(str(h.relay), h.address) for h in ticket.relays] == [
            (relay_id(cli), (BOOT, PORT))], ticket
        # By ticket: reachable through the relay at once.
        done = cli.run("fetch", info["ticket"], "-o", str(cli.tmp / "by-ticket.bin"), "--json",
                       "--state-dir", str(cli.tmp / "b"), "--bootstrap", boot, "--timeout", "20",
                       prefix=on(names["hostb"]), timeout=40)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - printed < 10, "not reachable through the relay within 10 s"
        assert (cli.tmp / "by-ticket.bin").read_bytes() == source.read_bytes()
        completed = json.loads(done.stdout.splitlines()[-1])
        assert completed["event"] == "completed"
        assert completed["paths"] == {info["peer_id"]: "relayed"}, completed  # said as it came
        # By content id (another fetcher: the first holds it now): the provider record's
        # relay hint leads there too.
        done = cli.run("fetch", info["content_id"], "-o", str(cli.tmp / "by-id.bin"), "--json",
                       "--state-dir", str(cli.tmp / "c"), "--bootstrap", boot, "--timeout", "20",
                       prefix=on(names["hostb"]), timeout=40)
        assert done.returncode == 0, done.stderr
        assert (cli.tmp / "by-id.bin").read_bytes() == source.read_bytes()
        completed = json.loads(done.stdout.splitlines()[-1])
        assert completed["paths"] == {info["peer_id"]: "relayed"}, completed  # punch failed
        metrics = relay_metrics(names)
        assert metrics["p2p_bootstrap_relay_reservations"] == 1, metrics
        assert metrics["p2p_bootstrap_relay_circuits_opened_total"] >= 2, metrics
        assert metrics["p2p_bootstrap_relay_bytes_total"] > 2 * size, metrics
        # Once its check says NAT, the sharer's tickets name the relay instead of addresses
        # nobody outside can dial.
        checked = cli.run("--state-dir", str(cli.tmp / "a"), "netcheck", "--json",
                          prefix=on(names["hosta"]), timeout=40)
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout)["reachability"] == "nat", checked.stdout
        again = cli.run("--state-dir", str(cli.tmp / "a"), "share", "--json", str(source),
                        prefix=on(names["hosta"]), timeout=40)
        assert again.returncode == 0, again.stderr
        later = Ticket.parse(json.loads(again.stdout.splitlines()[-1])["ticket"])
        assert later.addresses == () and later.relays == ticket.relays, later
        assert share.stop() == 0, share.err()


def test_two_cone_nats_punch_a_direct_connection_and_the_fetch_moves_to_it(cli: CLI) -> None:
    # Cone NAT on both sides: the relay circuit's two ends punch a direct connection
    # (simultaneous open from their listen ports) and the transfer carries on over it.
    size = 24 << 20
    with nat_pair("cone", "cone") as names, \
            daemon(cli, names, "--metrics", f"127.0.0.1:{METRICS}"):
        source = make_file(cli.tmp / "src" / "film.bin", size, seed=18)
        boot = f"{BOOT}:{PORT}"
        share = cli.start("share", "--json", str(source), "--state-dir", str(cli.tmp / "a"),
                          "--listen", f"0.0.0.0:{PORT}", "--bootstrap", boot,
                          prefix=on(names["hosta"]))
        info = share.json_until(lambda obj: "ticket" in obj, timeout=40)
        # By content id: the provider record's relay hint leads to the circuit.
        done = cli.run("fetch", info["content_id"], "-o", str(cli.tmp / "by-id.bin"), "--json",
                       "--state-dir", str(cli.tmp / "b"), "--bootstrap", boot, "--timeout", "20",
                       "--listen", f"0.0.0.0:{PORT}", prefix=on(names["hostb"]), timeout=60)
        assert done.returncode == 0, done.stderr
        assert (cli.tmp / "by-id.bin").read_bytes() == source.read_bytes()
        completed = json.loads(done.stdout.splitlines()[-1])
        assert completed["event"] == "completed"
        assert completed["paths"] == {info["peer_id"]: "punched"}, (completed, done.stderr)
        metrics = relay_metrics(names)
        assert metrics["p2p_bootstrap_relay_circuits_opened_total"] >= 1, metrics
        assert metrics["p2p_bootstrap_relay_bytes_total"] < size, metrics  # most came direct
        assert share.stop() == 0, share.err()


def share_and_fetch_by_id(cli: CLI, names: dict[str, str], size: int, seed: int,
                          *fetch_args: str) -> tuple[dict[str, object], dict[str, object], Proc]:
    """``p2p share`` on ``hosta``, ``p2p fetch ID`` on ``hostb`` (both on the lab's port,
    through the bootstrap): the share's ticket line and the fetch's completed event, after
    checking the bytes; the share is left running."""
    source = make_file(cli.tmp / "src" / "film.bin", size, seed=seed)
    boot = f"{BOOT}:{PORT}"
    share = cli.start("share", "--json", str(source), "--state-dir", str(cli.tmp / "a"),
                      "--listen", f"0.0.0.0:{PORT}", "--bootstrap", boot,
                      prefix=on(names["hosta"]))
    info = share.json_until(lambda obj: "ticket" in obj, timeout=40)
    done = cli.run("fetch", info["content_id"], "-o", str(cli.tmp / "by-id.bin"), "--json",
                   "--state-dir", str(cli.tmp / "b"), "--bootstrap", boot, "--timeout", "20",
                   "--listen", f"0.0.0.0:{PORT}", *fetch_args, prefix=on(names["hostb"]),
                   timeout=90)
    assert done.returncode == 0, done.stderr
    assert (cli.tmp / "by-id.bin").read_bytes() == source.read_bytes()
    completed = json.loads(done.stdout.splitlines()[-1])
    assert completed["event"] == "completed", completed
    return info, completed, share


def test_no_hole_punch_keeps_a_relayed_peer_relayed(cli: CLI) -> None:
    # Two cone NATs punch (the test above); a fetcher that says --no-hole-punch does not
    # take part, so the sharer's punch finds nobody and every byte crosses the relay.
    size = 4 << 20
    with nat_pair("cone", "cone") as names, \
            daemon(cli, names, "--metrics", f"127.0.0.1:{METRICS}"):
        info, completed, share = share_and_fetch_by_id(cli, names, size, 24, "--no-hole-punch")
        assert completed["paths"] == {info["peer_id"]: "relayed"}, completed
        assert relay_metrics(names)["p2p_bootstrap_relay_bytes_total"] > size
        assert share.stop() == 0, share.err()


def test_routers_that_reset_unsolicited_syns_punch_or_fall_back_to_the_relay(cli: CLI) -> None:
    # Both routers answer an unsolicited SYN with a reset, which also makes the router that
    # sent it forget the mapping the other side's SYN needed: the punch retries each refused
    # dial; whether one lands depends on timing this lab cannot set (no netem). Either way
    # the fetch completes, and the label says which path carried it.
    size = 8 << 20
    with nat_pair("cone-rst", "cone-rst") as names, \
            daemon(cli, names, "--metrics", f"127.0.0.1:{METRICS}"):
        info, completed, share = share_and_fetch_by_id(cli, names, size, seed=21)
        path = completed["paths"]
        assert path in ({info["peer_id"]: "punched"}, {info["peer_id"]: "relayed"}), completed
        metrics = relay_metrics(names)
        assert metrics["p2p_bootstrap_relay_circuits_opened_total"] >= 1, metrics
        if path == {info["peer_id"]: "relayed"}:
            assert metrics["p2p_bootstrap_relay_bytes_total"] > size, metrics
        assert share.stop() == 0, share.err()


def test_a_public_fetcher_is_reached_by_reversal(cli: CLI) -> None:
    # The sharer is behind a cone NAT, the fetcher public: the fetch reaches the sharer
    # through its relay, and the punch has the NATed side dial the public one (no
    # simultaneous open needed), so the bulk moves to a direct connection.
    size = 24 << 20
    with nat_pair("cone", "public") as names, \
            daemon(cli, names, "--metrics", f"127.0.0.1:{METRICS}"):
        info, completed, share = share_and_fetch_by_id(cli, names, size, seed=22)
        assert completed["paths"] == {info["peer_id"]: "punched"}, completed
        metrics = relay_metrics(names)
        assert metrics["p2p_bootstrap_relay_circuits_opened_total"] >= 1, metrics
        assert metrics["p2p_bootstrap_relay_bytes_total"] < size, metrics  # most came direct
        assert share.stop() == 0, share.err()


def test_a_public_sharer_is_fetched_directly(cli: CLI) -> None:
    # The sharer is public (its dial-back says so): its records carry its address, the NATed
    # fetcher dials it, and no relay carries anything.
    size = 4 << 20
    with nat_pair("public", "cone") as names, \
            daemon(cli, names, "--metrics", f"127.0.0.1:{METRICS}"):
        info, completed, share = share_and_fetch_by_id(cli, names, size, seed=23)
        assert completed["paths"] == {info["peer_id"]: "direct"}, completed
        metrics = relay_metrics(names)
        assert metrics.get("p2p_bootstrap_relay_bytes_total", 0) == 0, metrics
        assert share.stop() == 0, share.err()


def relay_id(cli: CLI) -> str:
    """The bootstrap daemon's peer id (its state directory's identity)."""
    done = cli.run("--state-dir", str(cli.tmp / "boot"), "id", "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["peer_id"])


def test_a_relay_at_its_limit_refuses_new_circuits_and_keeps_serving_the_open_one(cli: CLI) -> None:
    size = 6 << 20
    # The fetcher behind a symmetric NAT: no hole punch replaces the one circuit.
    with nat_pair("cone", "symmetric") as names, \
            daemon(cli, names, "--relay-max-circuits", "1", "--metrics", f"127.0.0.1:{METRICS}"):
        source = make_file(cli.tmp / "src" / "big.bin", size, seed=17)
        boot = f"{BOOT}:{PORT}"
        share = cli.start("share", "--json", str(source), "--state-dir", str(cli.tmp / "a"),
                          "--listen", f"0.0.0.0:{PORT}", "--bootstrap", boot,
                          prefix=on(names["hosta"]))
        info = share.json_until(lambda obj: "ticket" in obj, timeout=40)
        # One slow fetch holds the relay's only circuit (512 KiB/s for 6 MiB: 12 s) ...
        slow = cli.start("fetch", info["ticket"], "-o", str(cli.tmp / "slow.bin"), "--json",
                         "--state-dir", str(cli.tmp / "b"), "--bootstrap", boot,
                         "--max-download-rate", "512KiB/s", prefix=on(names["hostb"]))
        slow.json_until(lambda obj: obj.get("event") == "started", timeout=30)
        # ... so a second is refused, with the relay's reason, and fails at once ...
        refused = cli.run("fetch", info["ticket"], "-o", str(cli.tmp / "refused.bin"),
                          "--state-dir", str(cli.tmp / "c"), "--timeout", "20",
                          prefix=on(names["hostb"]), timeout=40)
        assert refused.returncode == 5, refused.stderr
        assert "RESOURCE_LIMIT_EXCEEDED: relay full: 1 circuits open" in refused.stderr, refused.stderr
        # ... a peer holding no reservation cannot be reached through the relay at all ...
        ticket = Ticket.parse(info["ticket"])
        nobody = Ticket(ticket.content_id, PeerId(os.urandom(32)), (), ticket.relays)
        unreserved = cli.run("fetch", str(nobody), "-o", str(cli.tmp / "nobody.bin"),
                             "--state-dir", str(cli.tmp / "d"), "--timeout", "20",
                             prefix=on(names["hostb"]), timeout=40)
        assert unreserved.returncode == 5, unreserved.stderr
        assert "NO_RESERVATION" in unreserved.stderr, unreserved.stderr
        # ... and the open circuit is served to the end.
        assert slow.wait(timeout=60) == 0, slow.err()
        assert (cli.tmp / "slow.bin").read_bytes() == source.read_bytes()
        metrics = relay_metrics(names)
        assert metrics['p2p_bootstrap_relay_refused_total{code="RESOURCE_LIMIT_EXCEEDED"}'] >= 1
        assert metrics['p2p_bootstrap_relay_refused_total{code="NO_RESERVATION"}'] >= 1
        assert share.stop() == 0, share.err()
