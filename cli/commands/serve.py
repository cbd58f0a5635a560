"""`syncline serve`: the gateway on uvicorn, on the embedded default (a SQLite file)."""
from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import click

from syncline.api.settings import WS_IMPLEMENTATIONS, Settings


@click.command()
@click.option("--host", default=None, help="Bind address (default SYNCLINE_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default SYNCLINE_PORT or 8000).")
@click.option("--db", "database_url", default=None, help="Store URL (default sqlite+aiosqlite:///var/syncline.db).")
@click.option("--redis", "redis_url", default=None, help="Redis URL for cross-process fan-out (optional).")
@click.option("--ws", default=None, type=click.Choice(WS_IMPLEMENTATIONS),
              help="WebSocket implementation: lean (ours, least memory per connection; default SYNCLINE_WS_IMPL "
                   "or lean) or one of uvicorn's.")
@click.option("--tls-cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate (chain) file: serve HTTPS and WSS (default SYNCLINE_TLS_CERT).")
@click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM private key file for --tls-cert (default SYNCLINE_TLS_KEY).")
@click.option("--relay", default=None, type=click.Choice(["redis-streams"]),
              help="Relay the log to Redis Streams on the --redis server (default SYNCLINE_RELAY; docs/bus.md).")
def serve(host: str | None, port: int | None, database_url: str | None, redis_url: str | None,
          ws: str | None, tls_cert: str | None, tls_key: str | None, relay: str | None) -> None:
    """Run the gateway (REST, WebSocket, Yjs) in one process."""
    from syncline.api.app import create_app
    from syncline.api.errors import InsecureSecret
    from syncline.engine.errors import ValidationError
    from syncline.server import make_server

    settings = Settings()
    if host:
        settings.host = host
    if port is not None:
        settings.port = port
    if database_url:
        settings.database_url = database_url
    if redis_url:
        settings.redis_url = redis_url
    if ws:
        settings.ws_impl = ws
    if relay:
        settings.relay = relay
    if settings.relay and not settings.redis_url:
        raise click.UsageError("--relay redis-streams needs --redis (or SYNCLINE_REDIS_URL)")
    if tls_cert:
        settings.tls_cert_file = tls_cert
    if tls_key:
        settings.tls_key_file = tls_key
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise click.UsageError("TLS needs both --tls-cert and --tls-key (or SYNCLINE_TLS_CERT and SYNCLINE_TLS_KEY)")
    if settings.database_url.startswith("sqlite+aiosqlite:///"):
        path = settings.database_url.removeprefix("sqlite+aiosqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        app = create_app(settings)
    except (InsecureSecret, ValidationError) as e:
        raise click.ClickException(f"{e.code}: {e.message}") from None
    server = make_server(app, settings.host, settings.port, ws=settings.ws_impl, tls_cert=settings.tls_cert_file,
                         tls_key=settings.tls_key_file)
    tls = bool(settings.tls_cert_file)
    url = f"{'https' if tls else 'http'}://{settings.host}:{settings.port}"
    wsurl = f"{'wss' if tls else 'ws'}://{settings.host}:{settings.port}"
    click.echo(f"Syncline listening on {url}  (store: {settings.database_url})")
    click.echo(f"  health:  {url}/healthz    ready: {url}/readyz    metrics: {url}/metrics    API: {url}/schema")
    click.echo(f"  WebSocket: {wsurl}/v1/ws    Yjs: {wsurl}/v1/yjs/<doc>?token=<jwt>")
    click.echo("  mint a development token:  syncline token --tenant acme --user alice")
    tune_gc()
    asyncio.run(server.serve())


def tune_gc() -> None:
    """A long-running server: move what startup allocated (modules, app, settings) out of
    the collector's way, and collect the young generation less often. Each decoded frame
    and event batch allocates many short-lived containers; with the default threshold
    (700) the gateway spent about a third of its CPU in collections during a drain
    (benchmarks/offline_drain.py). Memory use grows by at most a few MB."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


COMMANDS = [serve]
