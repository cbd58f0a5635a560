"""Syncline clientkit."""
