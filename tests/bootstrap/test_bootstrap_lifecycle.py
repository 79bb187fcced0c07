"""The daemon's lifecycle as an operator sees it: start-up line, signals, saved state,
restart, metrics and health, and one clear line for every way it can refuse to start."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from pathlib import Path

from daemonproc import (
    LOOPBACK_FLAGS,
    START_TIMEOUT,
    http_get,
    http_raw,
    peers,
    running,
    scrape,
    spawn,
    total,
    value,
)

CONTACTS = 5


async def wait_for_contacts(metrics: tuple[str, int], n: int) -> None:
    """Poll the daemon's metrics (bounded) until its table holds ``n`` contacts: it verifies
    newcomers in the background and exposes no event for it."""
    for _ in range(200):
        samples = await scrape(metrics)
        if value(samples, "p2p_bootstrap_routing_table_contacts") >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the daemon never held {n} contacts")


async def test_sigterm_saves_state_and_a_restart_restores_it(tmp_path: Path) -> None:
    state = tmp_path / "b"
    async with running(tmp_path, state, *LOOPBACK_FLAGS, name="first") as first, \
            peers(CONTACTS, first.addr) as nodes:
        peer_id = first.announce["peer_id"]
        assert first.announce["restored_contacts"] == 0
        await wait_for_contacts(first.metrics, CONTACTS)
        # Bounded (the daemon gives shutdown 1.5 s, SHUTDOWN_BUDGET), not timed.
        assert await first.stop(signal.SIGTERM, timeout=30) == 0

        doc = json.loads((state / "routing.json").read_text())
        assert doc["node_id"] == first.announce["node_id"]
        assert {tuple(c[1:]) for c in doc["contacts"]} == {("127.0.0.1", n.port) for n in nodes}
        assert "routing table saved" in first.stderr()

        async with running(tmp_path, state, *LOOPBACK_FLAGS, name="second") as second:
            assert second.announce["peer_id"] == peer_id
            assert second.announce["saved_contacts"] == CONTACTS
            assert second.announce["restored_contacts"] == CONTACTS
            samples = await scrape(second.metrics)
            assert value(samples, "p2p_bootstrap_restored_contacts") == CONTACTS
            assert value(samples, "p2p_bootstrap_routing_table_contacts") >= CONTACTS
            assert value(samples, "p2p_bootstrap_info", peer_id=peer_id) == 1
            assert await second.stop(signal.SIGINT) == 0
        assert f"restored {CONTACTS} contacts" in second.stderr()


async def test_metrics_parse_and_move_and_health_answers(tmp_path: Path) -> None:
    async with running(tmp_path, tmp_path / "b", *LOOPBACK_FLAGS) as daemon:
        before = await scrape(daemon.metrics)
        assert value(before, "p2p_bootstrap_routing_table_contacts") == 0
        async with peers(3, daemon.addr) as nodes:
            await nodes[0].find_providers(bytes(32))
            await wait_for_contacts(daemon.metrics, 3)
        after = await scrape(daemon.metrics)
        received = "p2p_bootstrap_rpcs_received_total"
        for rpc in ("identify", "find_node"):
            assert value(after, received, rpc=rpc) > value(before, received, rpc=rpc), rpc
        assert total(after, "p2p_bootstrap_rpcs_sent_total") > total(
            before, "p2p_bootstrap_rpcs_sent_total")
        assert value(after, "p2p_bootstrap_uptime_seconds") > value(
            before, "p2p_bootstrap_uptime_seconds")
        assert value(after, "p2p_bootstrap_process_resident_memory_bytes") > 0

        status, body = await http_get(daemon.metrics, "/healthz")
        health = json.loads(body)
        assert (status, health["status"]) == (200, "ok")
        assert health["peer_id"] == daemon.announce["peer_id"]
        assert health["contacts"] >= 3
        assert (await http_get(daemon.metrics, "/nope"))[0] == 404
        assert (await http_raw(daemon.metrics, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await http_raw(daemon.metrics, b"\x00\xff garbage\r\n\r\n"))[0] == 400
        assert (await http_raw(daemon.metrics, b"GET /" + b"a" * 20000))[0] == 431
        assert await daemon.stop() == 0


async def test_text_start_line_environment_and_option_precedence(tmp_path: Path) -> None:
    env = {"P2P_BOOTSTRAP_LISTEN": "127.0.0.1:0", "P2P_BOOTSTRAP_STATE_DIR": str(tmp_path / "b"),
           "P2P_BOOTSTRAP_LOG_FORMAT": "json", "P2P_BOOTSTRAP_METRICS": "not an address"}
    # Options win over the environment: the bad P2P_BOOTSTRAP_METRICS is never read.
    proc, stderr_path = await spawn(tmp_path, "--log-format", "text", "--metrics",
                                    "127.0.0.1:0", env=env)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            line = (await proc.stdout.readline()).decode()
            second = (await proc.stdout.readline()).decode()
        match = re.fullmatch(r"p2p-bootstrap (p2pk\w+) listening on 127\.0\.0\.1:(\d+) "
                             r"\(use --bootstrap 127\.0\.0\.1:(\d+)\)\n", line)
        assert match, line
        assert match[2] == match[3] != "0"
        assert re.fullmatch(r"p2p-bootstrap metrics on http://127\.0\.0\.1:\d+/metrics.*\n", second)
        assert (tmp_path / "b" / "identity.key").exists()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(5):
            assert await proc.wait() == 0
        assert " INFO bootstrap: " in stderr_path.read_text()  # text logs, as asked
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run the daemon expecting it to refuse to start; (exit code, stderr lines)."""
    proc, stderr_path = await spawn(tmp_path, *args, env=env)
    try:
        async with asyncio.timeout(START_TIMEOUT):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out == b""
    assert proc.returncode is not None
    return proc.returncode, stderr_path.read_text().splitlines()


async def test_bad_flag_and_bad_environment_exit_2_with_one_line(tmp_path: Path) -> None:
    code, lines = await refused(tmp_path, "--no-such-flag")
    assert code == 2 and len(lines) == 1 and "--no-such-flag" in lines[0]
    code, lines = await refused(tmp_path, "--listen", "localhost:7473")
    assert code == 2 and len(lines) == 1 and "--listen" in lines[0]
    code, lines = await refused(tmp_path, env={"P2P_BOOTSTRAP_LISTEN": "127.0.0.1:99999"})
    assert code == 2 and len(lines) == 1 and "--listen" in lines[0]


async def test_port_in_use_and_unusable_state_dir_give_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        code, lines = await refused(tmp_path, "--listen", f"127.0.0.1:{port}",
                                    "--state-dir", str(tmp_path / "b"))
    assert code == 5, lines
    assert len(lines) == 1 and "cannot bind" in lines[0] and str(port) in lines[0], lines

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = await refused(tmp_path, "--listen", "127.0.0.1:0", "--metrics",
                                    f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "b"))
    assert code == 5 and len(lines) == 1 and "metrics" in lines[0], lines

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code, lines = await refused(tmp_path, "--listen", "127.0.0.1:0", "--state-dir", str(not_a_dir))
    assert code == 6 and len(lines) == 1 and "state directory" in lines[0], lines


async def test_the_daemon_relays_by_default_with_its_limits_and_metrics(tmp_path: Path) -> None:
    from p2p.identity import Identity
    from p2p.wire.messages import RelayCode, RelayStatus, Reserve
    from p2p.wire.transport import connect

    async with running(tmp_path, tmp_path / "state", *LOOPBACK_FLAGS,
                       "--relay-max-reservations", "1", "--relay-rate", "5MiB/s") as daemon:
        assert daemon.announce["relay"] is True
        host, port = daemon.addr  # the relay is on the TCP port of the same number
        held = await connect(host, port, Identity.generate(), first=(Reserve(),))
        other = await connect(host, port, Identity.generate(), first=(Reserve(),))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                granted, refused = await held.receive(), await other.receive()
            assert isinstance(granted, RelayStatus) and granted.code == RelayCode.OK
            assert granted.observed is not None and granted.observed[0] == "127.0.0.1"
            assert isinstance(refused, RelayStatus)
            assert refused.code == RelayCode.RESOURCE_LIMIT_EXCEEDED
            assert "1 reservations held" in refused.reason
            samples = await scrape(daemon.metrics)
        finally:
            await held.aclose()
            await other.aclose()
        assert value(samples, "p2p_bootstrap_relay_reservations") == 1
        assert value(samples, "p2p_bootstrap_relay_refused_total",
                     code="RESOURCE_LIMIT_EXCEEDED") == 1
        assert value(samples, "p2p_bootstrap_relay_limit", limit="max_reservations") == 1
        assert value(samples, "p2p_bootstrap_relay_limit", limit="rate") == 5 << 20
        assert value(samples, "p2p_bootstrap_relay_limit", limit="circuit_bytes") == 4 << 30
        assert await daemon.stop() == 0


async def test_a_daemon_with_no_relay_refuses_reservations(tmp_path: Path) -> None:
    from p2p.identity import Identity
    from p2p.wire.messages import RelayCode, RelayStatus, Reserve
    from p2p.wire.transport import connect

    async with running(tmp_path, tmp_path / "state", *LOOPBACK_FLAGS, "--no-relay") as daemon:
        assert daemon.announce["relay"] is False
        conn = await connect(*daemon.addr, Identity.generate(), first=(Reserve(),))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                status = await conn.receive()
        finally:
            await conn.aclose()
        assert isinstance(status, RelayStatus) and status.code == RelayCode.PERMISSION_DENIED
        samples = await scrape(daemon.metrics)
        assert not [name for name, _ in samples if name.startswith("p2p_bootstrap_relay_")]
        assert await daemon.stop() == 0
