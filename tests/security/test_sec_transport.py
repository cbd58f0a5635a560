"""Issue 15, item 8: secrets and transport.

- a JWT secret shorter than 32 bytes (an empty one too) is refused at start, and the
  development secret is refused on a non-loopback bind;
- `syncline serve --tls-cert --tls-key` serves HTTPS and WSS (a certificate made here);
- a WebSocket Origin allow-list (403 at the handshake, counted);
- security headers on HTTP responses, no `server` header;
- `/readyz` shows the log head to admins only;
- SQLite files (and their -wal/-shm) are created 0600.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets
from sec_tokens_support import SECRET, NativeClient, RunningGateway, base_settings, token
from waiting import wait_for

from syncline.api import settings as settings_mod
from syncline.api.app import create_app
from syncline.api.errors import InsecureSecret
from syncline.api.settings import Settings
from syncline.clientkit.queue import SqliteOpQueue
from syncline.engine import protocol as P

SYNCLINE = Path(sys.executable).with_name("syncline")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLINE_")}
    full.update(SYNCLINE_LOG_FORMAT="json", SYNCLINE_PRUNE_INTERVAL_S="0", **env)
    return subprocess.Popen([str(SYNCLINE), "serve", *args], cwd=cwd, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------------------ secrets


@pytest.mark.parametrize("secret", ["", "x", "s" * 31, "é" * 15])
def test_a_secret_shorter_than_32_bytes_is_refused(tmp_path, secret):
    s = base_settings(f"sqlite+aiosqlite:///{tmp_path}/a.db", jwt_secret=secret)
    with pytest.raises(InsecureSecret) as info:
        create_app(s)
    assert "at least 32 bytes" in info.value.message and info.value.code == "insecure_secret"


def test_a_32_byte_secret_starts(tmp_path):
    create_app(base_settings(f"sqlite+aiosqlite:///{tmp_path}/a.db", jwt_secret="k" * 32))


def test_an_empty_env_secret_is_not_replaced_by_the_development_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNCLINE_JWT_SECRET", "")
    s = Settings()
    assert s.jwt_secret == "" and not (tmp_path / "var" / "dev-jwt-secret").exists()
    with pytest.raises(InsecureSecret, match="empty"):
        create_app(s)


def test_the_development_secret_is_refused_on_a_public_bind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNCLINE_JWT_SECRET", raising=False)
    dev = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/a.db")
    assert dev.jwt_secret == (tmp_path / settings_mod.DEV_SECRET_FILE).read_text().strip()
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        dev.host = host
        create_app(dev)
    for host in ("0.0.0.0", "::", "192.0.2.10", "gateway.example"):
        dev.host = host
        with pytest.raises(InsecureSecret, match="loopback"):
            create_app(dev)
        # the same secret given explicitly is still the development one
        with pytest.raises(InsecureSecret):
            create_app(Settings(database_url=dev.database_url, host=host, jwt_secret=dev.jwt_secret))
    create_app(Settings(database_url=dev.database_url, host="0.0.0.0", jwt_secret=SECRET))


def test_syncline_serve_refuses_with_a_clear_error(tmp_path):
    short = _serve(["--port", str(_free_port())], tmp_path, SYNCLINE_JWT_SECRET="1")
    _, err = short.communicate(timeout=60)
    assert short.returncode != 0
    assert "insecure_secret" in err and "at least 32 bytes" in err
    public = _serve(["--host", "0.0.0.0", "--port", str(_free_port())], tmp_path)  # development secret
    _, err = public.communicate(timeout=60)
    assert public.returncode != 0 and "loopback" in err


# ------------------------------------------------------------------------------ TLS


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncline-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_serve_over_tls_https_and_wss(tmp_path):
    cert, key = _certificate(tmp_path)
    port = _free_port()
    proc = _serve(["--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)], tmp_path,
                  SYNCLINE_JWT_SECRET=SECRET)
    try:
        first = proc.stdout.readline()
        assert f"https://127.0.0.1:{port}" in first
        ctx = ssl.create_default_context(cafile=str(cert))

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read())
            try:
                return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "the TLS gateway to answer")
        r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=ctx)
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        assert "server" not in r.headers
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)
        ws = await websockets.connect(f"wss://127.0.0.1:{port}/v1/ws?token={token()}", ssl=ctx,
                                      subprotocols=[P.SUBPROTOCOL_MSGPACK], ping_interval=None)
        welcome = P.decode_frame(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["t"] == "welcome" and welcome["user"] == "alice"
        await ws.close()
        yws = await websockets.connect(f"wss://127.0.0.1:{port}/v1/yjs/d?token={token()}", ssl=ctx,
                                       ping_interval=None)
        assert isinstance(await asyncio.wait_for(yws.recv(), 10), bytes)  # sync step 1
        await yws.close()
    finally:
        proc.terminate()
        proc.wait(15)


# ------------------------------------------------------------------------------ Origin, headers, readyz


@pytest.fixture
def gw(tmp_path):
    g = RunningGateway(base_settings(f"sqlite+aiosqlite:///{tmp_path}/t.db",
                                     ws_allowed_origins=("https://app.example.com",))).start()
    yield g
    g.stop()


def _origin_refused(g: RunningGateway) -> float:
    for line in httpx.get(f"{g.url}/metrics").text.splitlines():
        if line.startswith("syncline_ws_origin_refused_total "):
            return float(line.split()[1])
    return 0.0


async def test_the_origin_allow_list(gw):
    for path in ("/v1/ws", "/v1/yjs/d"):
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(f"{gw.ws_url}{path}?token={token()}", origin="https://evil.example",
                                     ping_interval=None)
        assert info.value.response.status_code == 403
    assert _origin_refused(gw) == 2
    ok = await NativeClient.connect(gw.ws_url, token(), headers={"Origin": "https://app.example.com"})
    assert (await ok.expect("welcome"))["user"] == "alice"
    await ok.close()
    no_origin = await NativeClient.connect(gw.ws_url, token())  # a non-browser client
    await no_origin.expect("welcome")
    await no_origin.close()
    assert _origin_refused(gw) == 2


async def test_without_an_allow_list_any_origin_is_accepted(tmp_path):
    g = RunningGateway(base_settings(f"sqlite+aiosqlite:///{tmp_path}/o.db")).start()
    try:
        c = await NativeClient.connect(g.ws_url, token(), headers={"Origin": "https://anywhere.example"})
        await c.expect("welcome")
        await c.close()
    finally:
        g.stop()


def test_security_headers_and_no_server_header(gw):
    admin = {"Authorization": f"Bearer {token('root', roles=('admin',))}"}
    for method, path, headers, status in (("GET", "/healthz", {}, 200), ("GET", "/v1/log", {}, 401),
                                          ("GET", "/v1/log", admin, 200), ("GET", "/nowhere", {}, 404),
                                          ("POST", "/v1/streams/x/1", admin, 400)):
        r = httpx.request(method, f"{gw.url}{path}", headers=headers, content=b"{" if method == "POST" else None)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        assert r.headers["referrer-policy"] == "no-referrer", path
        assert "server" not in r.headers, path
        assert "strict-transport-security" not in r.headers  # plain HTTP: no HSTS


def test_readyz_shows_the_log_head_to_admins_only(gw):
    r = httpx.post(f"{gw.url}/v1/streams/feed/1", json={"events": [{"type": "note.added"}]},
                   headers={"Authorization": f"Bearer {token()}"})
    assert r.status_code == 201
    anonymous = httpx.get(f"{gw.url}/readyz").json()
    assert anonymous["dependencies"]["store"]["state"] == "up"
    assert "head" not in anonymous["dependencies"]["store"]
    member = httpx.get(f"{gw.url}/readyz", headers={"Authorization": f"Bearer {token()}"}).json()
    assert "head" not in member["dependencies"]["store"]
    bad = httpx.get(f"{gw.url}/readyz", headers={"Authorization": "Bearer junk"})
    assert bad.status_code == 200 and "head" not in bad.json()["dependencies"]["store"]
    admin = httpx.get(f"{gw.url}/readyz", headers={"Authorization": f"Bearer {token('root', roles=('admin',))}"})
    assert admin.json()["dependencies"]["store"]["head"] >= 1


# ------------------------------------------------------------------------------ file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_files_are_created_0600(tmp_path, gw):
    old = os.umask(0o022)
    try:
        db = tmp_path / "fresh" / "syncline.db"
        g = RunningGateway(base_settings(f"sqlite+aiosqlite:///{db}")).start()
        try:
            r = httpx.post(f"{g.url}/v1/streams/feed/1", json={"events": [{"type": "note.added"}]},
                           headers={"Authorization": f"Bearer {token()}"})
            assert r.status_code == 201
            files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
            for f in files:
                assert f.exists() and _mode(f) == 0o600, (f, oct(_mode(f)))
        finally:
            g.stop()
        q = SqliteOpQueue(tmp_path / "client.queue.db")
        q.close()
        assert _mode(tmp_path / "client.queue.db") == 0o600
        for extra in ("-wal", "-shm"):
            f = tmp_path / f"client.queue.db{extra}"
            assert not f.exists() or _mode(f) == 0o600
    finally:
        os.umask(old)
