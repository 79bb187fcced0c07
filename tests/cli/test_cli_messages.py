"""Messages a person can act on, through real ``p2p`` processes."""

from __future__ import annotations

import json
from pathlib import Path

from cliproc import CLI


def test_a_folder_share_says_what_it_leaves_out(cli: CLI, tmp_path: Path) -> None:
    folder = tmp_path / "album"
    (folder / "disc1").mkdir(parents=True)
    (folder / "disc1" / "track.flac").write_bytes(b"x" * 1000)
    (folder / "empty").mkdir()
    (folder / "link").symlink_to(folder / "disc1" / "track.flac")
    (folder / "folder-link").symlink_to(folder / "disc1")
    text = cli.run("share", str(folder), "--no-serve", *cli.node_args("s"))
    assert text.returncode == 0, text.stderr
    assert ("p2p: warning: left out 2 symlinks and 1 empty folder" in text.stderr
            and "(3.2 KiB, 1 chunk)" not in text.stderr and "1 chunk)" in text.stderr), text.stderr
    machine = cli.run("share", str(folder), "--no-serve", "--json", *cli.node_args("s"))
    info = json.loads(machine.stdout)
    assert info["left_out"] == {"symlinks": 2, "empty_folders": 1, "unreadable": 0, "special": 0}
    clean = cli.run("share", str(folder / "disc1"), "--no-serve", *cli.node_args("s"))
    assert clean.returncode == 0 and "left out" not in clean.stderr
