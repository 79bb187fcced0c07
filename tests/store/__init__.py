"""Tests of the local store (p2p/store/): real SQLite files, real files, real processes."""
