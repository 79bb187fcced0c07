"""The terminal app and the command line on one state directory: the app's node serves the
control socket, so ``p2p share`` and ``p2p ls`` go through it and a second node is refused.

The app runs headless in a process of its own (Textual's test driver), which prints
``ready`` once its node listens and quits on SIGUSR1.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from cliproc import CLI, Proc, clean_env, make_file

from p2p.exitcodes import EXIT_BUSY

ROOT = Path(__file__).resolve().parents[2]

DRIVER = r"""
import asyncio, os, signal, sys
from pathlib import Path
from p2p import NodeConfig
from tui.app import build_app

async def main() -> None:
    config = NodeConfig(state_dir=Path(sys.argv[1]), host="127.0.0.1", port=0,
                        download_dir=Path(sys.argv[2]), max_contacts_per_ip=None)
    app = build_app(config, refresh_interval=60)
    stop = asyncio.Event()
    # SIGUSR1 quits as the q key does (the app keeps SIGTERM and SIGHUP for itself).
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stop.set)
    async with app.run_test(size=(80, 24)):
        await asyncio.wait_for(app.ready.wait(), 30)
        # Textual captures print() while the app runs: write to the descriptor itself.
        os.write(1, f"ready {app.node.peer_id}\n".encode())
        await stop.wait()
        await app.action_quit()
    print("stopped", flush=True)

asyncio.run(main())
"""


def test_the_command_line_goes_through_the_terminal_apps_node(cli: CLI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    app = Proc([sys.executable, "-c", DRIVER, str(state), str(tmp_path)], clean_env(), ROOT)
    cli.procs.append(app)
    ready = app.line().split()
    assert ready[0] == "ready", ready
    peer_id = ready[1]
    assert (state / "control.sock").exists()
    src = make_file(tmp_path / "notes.bin", 1 << 20)
    shared = cli.run("share", str(src), "--json", "--state-dir", str(state))
    assert shared.returncode == 0, shared.stderr
    info = json.loads(shared.stdout)
    assert info["peer_id"] == peer_id
    listed = cli.run("ls", "--json", "--state-dir", str(state))
    assert listed.returncode == 0, listed.stderr
    assert [s["content_id"] for s in json.loads(listed.stdout)["shares"]] == [info["content_id"]]
    second = cli.run("serve", "--listen", "127.0.0.1:0", "--state-dir", str(state))
    assert second.returncode == EXIT_BUSY, second.stderr
    assert "already running" in second.stderr
    app.send(signal.SIGUSR1)
    assert app.line().strip() == "stopped"
    assert app.wait() == 0, app.err()
    assert not (state / "control.sock").exists()


async def test_the_terminal_app_attaches_to_a_running_serve_and_leaves_it_running(
        cli: CLI, tmp_path: Path) -> None:
    """``p2p-tui`` on the state directory of a running ``p2p serve`` drives that node through
    its control socket: a share made in the app is the node's (``p2p ls`` lists it), the
    Library shows it, and quitting the app leaves the node serving."""
    from p2p import NodeConfig
    from tui.app import build_app
    from tui.link import AttachedLink

    state = tmp_path / "state" / "node"
    serve = cli.start("serve", "--json", "--state-dir", str(state), "--listen", "127.0.0.1:0")
    peer_id = str(serve.json()["peer_id"])
    src = make_file(tmp_path / "notes.bin", 1 << 20)
    config = NodeConfig(state_dir=state, host="127.0.0.1", port=0, download_dir=tmp_path / "dl",
                        max_contacts_per_ip=None)
    app = build_app(config, refresh_interval=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        async with asyncio.timeout(30):
            await app.ready.wait()
        link = app.link
        assert isinstance(link, AttachedLink)
        assert str(link.peer_id) == peer_id
        assert "attached" in str(app.sub_title)
        outcome = await link.share(src)
        assert outcome.name == "notes.bin" and outcome.ticket.startswith("p2p")
        assert outcome.left_out.total == 0
        listed = cli.run("ls", "--json", "--state-dir", str(state))
        assert listed.returncode == 0, listed.stderr
        assert [s["name"] for s in json.loads(listed.stdout)["shares"]] == ["notes.bin"]
        async with asyncio.timeout(30):
            while not any(r.name == "notes.bin" for r in app._library):
                await pilot.pause(0.05)
        await app.action_quit()
    peers = cli.run("peers", "--json", "--state-dir", str(state))
    assert peers.returncode == 0, peers.stderr  # the node still runs: its control socket answers
    assert serve.stop() == 0


async def test_the_terminal_app_shows_and_sets_the_limits_of_a_running_serve(
        cli: CLI, tmp_path: Path) -> None:
    """Attached to ``p2p serve --max-upload-rate 2MiB/s``, the app's status line names that
    limit and its limits dialog (b) shows it; a download limit set there is the serve's
    (``p2p limit`` reads it back); a folder shared through it says what it left out."""
    import os

    from textual.widgets import Input

    from p2p import NodeConfig
    from tui.app import build_app
    from tui.link import AttachedLink
    from tui.screens import LimitScreen
    from tui.widgets import StatusLine

    mib = 1024 * 1024
    state = tmp_path / "state" / "node"
    serve = cli.start("serve", "--json", "--state-dir", str(state), "--listen", "127.0.0.1:0",
                      "--max-upload-rate", "2MiB/s")
    serve.json()
    folder = tmp_path / "album"
    make_file(folder / "song.flac", 4096)
    os.symlink(folder / "song.flac", folder / "link.flac")
    config = NodeConfig(state_dir=state, host="127.0.0.1", port=0, download_dir=tmp_path / "dl",
                        max_contacts_per_ip=None)
    app = build_app(config, refresh_interval=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        async with asyncio.timeout(30):
            await app.ready.wait()
            assert isinstance(app.link, AttachedLink)
            status = app.main.query_one(StatusLine)
            while "↑2.0 MiB/s" not in status.line(78):
                await pilot.pause(0.05)
            await pilot.press("b")
            while not (isinstance(app.screen, LimitScreen) and app.focused is not None
                       and app.focused.id == "limit-up"):  # composed
                await pilot.pause(0.05)
            dialog = app.screen
            assert dialog.query_one("#limit-up", Input).value == "2.0 MiB/s"
            assert dialog.query_one("#limit-down", Input).value == "unlimited"
            dialog.query_one("#limit-down", Input).value = "1MiB/s"
            await pilot.press("enter")  # in the upload field: Set
            while "limits up 2.0 MiB/s, down 1.0 MiB/s" not in status.line(200):
                await pilot.pause(0.05)
        limits = cli.run("limit", "--json", "--state-dir", str(state))
        assert limits.returncode == 0, limits.stderr
        shown = json.loads(limits.stdout)
        assert (shown["up"]["rate"], shown["down"]["rate"]) == (2 * mib, 1 * mib)

        app.share(folder)
        log = app.main.query_one("#log-view")
        async with asyncio.timeout(30):
            while not any("left out" in e.message for e in log.entries):  # type: ignore[attr-defined]
                await pilot.pause(0.05)
        assert [e.message for e in log.entries if "left out" in e.message] == [  # type: ignore[attr-defined]
            "album: left out 1 symlink (a folder share holds readable regular files only)"]
        await app.action_quit()
    assert serve.stop() == 0


async def test_a_refused_fetch_through_a_running_serve_offers_a_new_name(
        cli: CLI, tmp_path: Path) -> None:
    """Attached to a running ``p2p serve``, a fetch whose destination holds a different file
    is refused by that node; the app's dialog offers "Rename to notes (1).bin" and the
    download then goes beside the other file (the ``start`` request's ``rename``)."""
    import filecmp

    from textual.widgets import Button

    from p2p import NodeConfig
    from p2p.node import Node
    from tui.app import build_app
    from tui.link import AttachedLink
    from tui.screens import ConfirmScreen

    source = make_file(tmp_path / "files" / "notes.bin", 256 * 1024)
    downloads = tmp_path / "dl"
    other = make_file(downloads / "notes.bin", 1000, seed=2)
    state = tmp_path / "state" / "node"
    serve = cli.start("serve", "--json", "--state-dir", str(state), "--listen", "127.0.0.1:0")
    serve.json()
    seed_config = NodeConfig(state_dir=tmp_path / "seed", host="127.0.0.1", port=0,
                             download_dir=tmp_path / "seed-dl", max_contacts_per_ip=None)
    async with Node(seed_config) as seed:
        result = await seed.share(source)
        config = NodeConfig(state_dir=state, host="127.0.0.1", port=0, download_dir=downloads,
                            max_contacts_per_ip=None)
        app = build_app(config, refresh_interval=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            async with asyncio.timeout(60):
                await app.ready.wait()
                assert isinstance(app.link, AttachedLink)
                app.start_fetch(str(result.ticket))
                while not isinstance(app.screen, ConfirmScreen):
                    await pilot.pause(0.05)
                dialog = app.screen
                while app.focused is None or app.focused.id != "confirm-back":  # mounted
                    await pilot.pause(0.05)
                rename = dialog.query_one("#confirm-ok", Button)
                assert str(rename.label) == "Rename to notes (1).bin"
                rename.focus()
                while app.focused is not rename:
                    await pilot.pause(0.05)
                await pilot.press("enter")
                while not any(r.state == "complete" for r in app.transfers.rows()):
                    await pilot.pause(0.05)
            assert filecmp.cmp(downloads / "notes (1).bin", source, shallow=False)
            assert other.stat().st_size == 1000
            await app.action_quit()
    assert serve.stop() == 0
