"""Headless DHT bootstrap daemon."""
