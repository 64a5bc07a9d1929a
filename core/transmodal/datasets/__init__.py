"""Datasets the core ships (no download)."""
