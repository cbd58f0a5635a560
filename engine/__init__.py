"""Syncline engine."""
