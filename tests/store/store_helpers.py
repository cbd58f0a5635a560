"""Helpers for the store tests."""
from __future__ import annotations

import sqlite3

import asyncpg


async def raw_sql(store, url: str, sql: str, *args) -> None:
    """Run SQL behind the store's back (to tamper with rows as an attacker would)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        db = sqlite3.connect(path)
        db.execute(sql.replace("$1", "?").replace("$2", "?"), args)
        db.commit()
        db.close()
    else:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        await conn.execute(sql, *args)
        await conn.close()
