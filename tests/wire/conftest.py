"""Shared fixtures for the wire tests."""
