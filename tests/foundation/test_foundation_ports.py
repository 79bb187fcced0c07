"""Who holds a port, read from a /proc laid out by the test (the real one is used by the CLI
test of a port in use)."""

from __future__ import annotations

import os
from pathlib import Path

from p2p.cli.ports import Holder, advice, port_holders

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def fake_proc(root: Path, port: int, state: str, inode: str, argv: list[str]) -> Path:
    (root / "net").mkdir(parents=True)
    line = f"   0: 0100007F:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1\n"
    (root / "net" / "tcp").write_text(HEADER + line)
    (root / "net" / "udp").write_text(HEADER)
    fd = root / "4242" / "fd"
    fd.mkdir(parents=True)
    os.symlink(f"socket:[{inode}]", fd / "7")
    os.symlink("/dev/null", fd / "0")
    (root / "4242" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir()  # not a pid: ignored
    return root


def test_a_listening_socket_is_traced_to_its_process(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", 7473, "0A", "991",
                     ["/usr/bin/python3", "-m", "p2p.cli", "serve", "--state-dir", "/s"])
    [holder] = port_holders(7473, "tcp", proc)
    assert holder == Holder(4242, ("/usr/bin/python3", "-m", "p2p.cli", "serve", "--state-dir", "/s"))
    assert holder.ours and holder.command() == "p2p serve --state-dir /s"
    text = advice(7473, "tcp", proc)
    assert "another node of yours, process 4242 (`p2p serve --state-dir /s`)" in text
    assert "kill 4242" in text and "--listen 0.0.0.0:0" in text
    assert port_holders(7474, "tcp", proc) == [] and port_holders(7473, "udp", proc) == []


def test_another_program_and_a_connection_that_is_not_listening(tmp_path: Path) -> None:
    other = fake_proc(tmp_path / "a", 80, "0A", "5", ["nginx: master process"])
    assert advice(80, "tcp", other).startswith("it is held by process 4242 (`'nginx: master")
    assert Holder(1, ("/usr/bin/p2p-bootstrap",)).ours  # the daemon is ours
    established = fake_proc(tmp_path / "b", 80, "01", "6", ["p2p"])
    assert advice(80, "tcp", established).startswith("pick another port")
    assert advice(80, "tcp", tmp_path / "missing").startswith("pick another port")
