"""Syncline simulations."""
