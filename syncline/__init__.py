"""Syncline: an event-sourced CRDT sync engine.

The subpackages are ``syncline.engine`` (pure core), ``syncline.store`` (the event log
and its adapters), ``syncline.bus`` (the event bus runtime), ``syncline.api`` (the
gateway), ``syncline.server`` (the socket server), ``syncline.cli`` (the command
line), ``syncline.clientkit`` (the offline-first client) and ``syncline.simulations``.

In an installed wheel they sit inside this package. In a source checkout they are the
folders at the repository root, beside this one: the package's path then includes the
root, so ``syncline.engine`` is ``engine/``.
"""
from __future__ import annotations

import os as _os

__version__ = "0.2.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "engine")) and _os.path.isfile(
    _os.path.join(_root, "engine", "__init__.py")
):
    __path__.append(_root)  # noqa: F821 - a package's __path__
