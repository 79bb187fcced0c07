"""Tests of the local store (p2p/store.py): real SQLite files, real files, real processes."""
