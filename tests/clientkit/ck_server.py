"""A gateway process for the client kit tests: the colleague's app factory (api.app.create_app)
under uvicorn, with the records resolution config the tests need.

    python tests/clientkit/ck_server.py --port N --db sqlite+aiosqlite:///path.db [--config notes]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys


def notes_config():
    from syncline.clientkit.transports.core_server import open_config
    from syncline.engine.records import MANUAL, CollectionPolicy, merged

    return open_config(notes=CollectionPolicy(fields={"title": MANUAL, "likes": merged("counter")}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--config", default="notes")
    args = ap.parse_args()
    from syncline.api.app import create_app
    from syncline.api.settings import Settings
    from syncline.server import make_server

    s = Settings()
    s.database_url = args.db
    s.port = args.port
    app = create_app(s, resolution=notes_config() if args.config == "notes" else None)
    server = make_server(app, "127.0.0.1", args.port)
    print("ready", flush=True)
    asyncio.run(server.serve())


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
