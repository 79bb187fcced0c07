"""Child of bench/folder.py, run with the Python of a venv that has libtorrent: a multi-file
torrent of one folder, its seeders and its leecher (the shared harness,
``../shared/bench/bench_libtorrent.py``, only makes single-file torrents).

    python bench/folder_lt.py make --folder DIR --version hybrid|v1 --torrent OUT
        creates the torrent of DIR (libtorrent's default piece size; ``hybrid`` is
        libtorrent's default v1+v2 torrent, ``v1`` is ``create_torrent.v1_only``),
        prints {"pieces", "piece_length", "files", "hash_s"}.
    python bench/folder_lt.py seed --torrent T --save PARENT
        seeds DIR from PARENT (``seed_mode``: no recheck), prints {"port"} once listening,
        serves until stdin closes.
    python bench/folder_lt.py leech --torrent T --save DIR --peers P1,P2
        downloads into DIR from 127.0.0.1:P1.. and prints {"ok", "elapsed"}: the time from
        add_torrent to is_seeding (every piece checked against its hash).

Settings as the shared harness's (``enc off``): 127.0.0.1 only, TCP only, DHT, LSD, UPnP and
NAT-PMP off, no rate limits, several connections per IP allowed, encryption off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import libtorrent as lt

HOST = "127.0.0.1"


def settings() -> dict[str, object]:
    return {
        "listen_interfaces": f"{HOST}:0",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "enable_incoming_utp": False, "enable_outgoing_utp": False,
        "enable_incoming_tcp": True, "enable_outgoing_tcp": True,
        "upload_rate_limit": 0, "download_rate_limit": 0,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": int(lt.alert_category.error | lt.alert_category.status
                          | lt.alert_category.storage),
        "user_agent": "p2pbench",
        "in_enc_policy": int(lt.enc_policy.pe_disabled),
        "out_enc_policy": int(lt.enc_policy.pe_disabled),
        "allowed_enc_level": int(lt.enc_level.pe_plaintext),
    }


LOAD_LIMITS = {"max_buffer_size": 1 << 30, "max_pieces": 1 << 24, "max_decode_tokens": 1 << 28}
"""A torrent of 100,000 files is larger than libtorrent loads by default ("metadata too large")."""


def load(path: str) -> lt.torrent_info:
    return lt.torrent_info(path, LOAD_LIMITS)


def check_alerts(ses: lt.session) -> None:
    for al in ses.pop_alerts():
        if isinstance(al, (lt.torrent_error_alert, lt.file_error_alert)):
            raise SystemExit(al.message())


def make(a: argparse.Namespace) -> None:
    folder = os.path.abspath(a.folder)
    fs = lt.file_storage()
    lt.add_files(fs, folder)
    flags = lt.create_torrent.v1_only if a.version == "v1" else 0
    ct = lt.create_torrent(fs, 0, flags)
    ct.set_creator("p2pbench")
    t0 = time.perf_counter()
    lt.set_piece_hashes(ct, os.path.dirname(folder))
    hash_s = time.perf_counter() - t0
    with open(a.torrent, "wb") as f:
        f.write(lt.bencode(ct.generate()))
    ti = load(a.torrent)
    print(json.dumps({"pieces": ti.num_pieces(), "piece_length": ti.piece_length(),
                      "files": ti.num_files(), "hash_s": hash_s}), flush=True)


def seed(a: argparse.Namespace) -> None:
    ses = lt.session(settings())
    atp = lt.add_torrent_params()
    atp.ti = load(a.torrent)
    atp.save_path = a.save
    atp.flags |= lt.torrent_flags.seed_mode  # the data is the torrent's: no recheck
    h = ses.add_torrent(atp)
    t0 = time.time()
    while not h.status().is_seeding:
        if time.time() - t0 > 300:
            raise SystemExit("seeder never reached seeding")
        ses.wait_for_alert(100)
        check_alerts(ses)
    print(json.dumps({"port": ses.listen_port()}), flush=True)
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    while not closed.is_set():
        ses.wait_for_alert(500)
        ses.pop_alerts()


def leech(a: argparse.Namespace) -> None:
    ses = lt.session(settings())
    atp = lt.add_torrent_params()
    atp.ti = load(a.torrent)
    atp.save_path = a.save
    t0 = time.perf_counter()
    h = ses.add_torrent(atp)
    for p in a.peers.split(","):
        h.connect_peer((HOST, int(p)))
    ok = False
    while time.perf_counter() - t0 < a.timeout:
        ses.wait_for_alert(20)
        check_alerts(ses)
        if h.status().is_seeding:
            ok = True
            break
    elapsed = time.perf_counter() - t0
    st = h.status()
    print(json.dumps({"ok": ok, "elapsed": elapsed, "total_wanted": st.total_wanted,
                      "total_payload_download": st.total_payload_download}), flush=True)
    # Wait for stdin to close, so the parent can read /proc/PID of this process.
    sys.stdin.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["make", "seed", "leech"])
    ap.add_argument("--folder")
    ap.add_argument("--version", default="hybrid", choices=["hybrid", "v1"])
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--save")
    ap.add_argument("--peers")
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    {"make": make, "seed": seed, "leech": leech}[a.role](a)


if __name__ == "__main__":
    main()
