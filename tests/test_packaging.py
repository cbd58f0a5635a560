"""The package layout: every folder with code is installed under ``syncline.``, and the
source checkout resolves ``syncline.engine`` to ``engine/`` like the wheel does."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_for_installation():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = {"syncline"}
    for name, folder in mapping.items():
        if name == "syncline":
            continue
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    assert found == listed


def test_the_checkout_and_the_names_agree():
    import syncline.engine.events as events

    assert Path(events.__file__).resolve() == ROOT / "engine" / "events.py"
    assert (ROOT / "syncline" / "py.typed").exists()
