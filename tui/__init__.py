"""Textual terminal app for the p2p node."""
