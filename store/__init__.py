"""Syncline store."""
