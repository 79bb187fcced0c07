"""`p2p fetch` of content that is already complete here, and `p2p verify` of a vanished file."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

from cliproc import CLI, make_file
from test_cli_processes import MiB, share


def test_a_local_copy_still_honours_from_and_o(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "signed.bin", 1 * MiB)
    _, info = share(cli, "publisher", src)
    first = tmp_path / "first.bin"
    got = cli.run("fetch", str(info["ticket"]), "-o", str(first), *cli.node_args("reader"))
    assert got.returncode == 0, got.stderr
    # Complete here now. A publisher other than the signer is still refused...
    other = cli.run("id", "--json", "--state-dir", str(tmp_path / "state" / "someone-else"))
    impostor = json.loads(other.stdout)["peer_id"]
    second = tmp_path / "second.bin"
    refused = cli.run("fetch", str(info["content_id"]), "-o", str(second), "--from", impostor,
                      "--timeout", "2", *cli.node_args("reader"))
    assert refused.returncode == 4, refused.stderr
    assert not second.exists()
    # ...and another destination gets a copy, without the network (the sharer could be gone).
    copied = cli.run("fetch", str(info["content_id"]), "-o", str(second), "--from",
                     str(info["publisher"]), "--timeout", "2", *cli.node_args("reader"))
    assert copied.returncode == 0, copied.stderr
    assert filecmp.cmp(src, second, shallow=False)


def test_verify_of_a_deleted_download_exits_4(cli: CLI, tmp_path: Path) -> None:
    src = make_file(tmp_path / "doc.bin", 1 * MiB)
    _, info = share(cli, "publisher", src)
    dest = tmp_path / "doc-copy.bin"
    got = cli.run("fetch", str(info["ticket"]), "-o", str(dest), *cli.node_args("reader"))
    assert got.returncode == 0, got.stderr
    dest.unlink()
    # The first check finds the chunks unreadable and stops serving the file; the second
    # then finds them missing. Both are failures for content that should be whole.
    for _ in range(2):
        verify = cli.run("verify", str(info["content_id"]), *cli.node_args("reader"))
        assert verify.returncode == 4, verify.stdout + verify.stderr
        assert verify.stderr.startswith("p2p: error: ")
