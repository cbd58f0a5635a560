"""Syncline api."""
