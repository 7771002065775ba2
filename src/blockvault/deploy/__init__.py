"""Multicast deployment: one snapshot to many computers at once (see docs/CAST.md)."""
