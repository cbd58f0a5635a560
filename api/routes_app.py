"""The browser pages under ``/app/`` and the development login that mints their token.

The pages (editor, task board, operations) are static files built from ``web/`` by
``make web`` into ``api/static/app/``; they ship inside the package (pyproject's
package-data), so ``syncline serve`` needs nothing but Python to serve them.

``POST /dev/token`` mints a token for the login form, only while the server signs with
the development secret (``var/dev-jwt-secret``, used when ``SYNCLINE_JWT_SECRET`` is not
set) and only for a loopback client that no proxy relayed (no ``Forwarded`` or
``X-Forwarded-For``): the development secret may only serve a loopback address anyway
(api/settings.py ``check_startup_secrets``), and a local reverse proxy must not open it. With a real secret it answers
403 ``dev_login_disabled``; the pages then take a token from ``#token=…`` or a paste box.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from litestar import Request, post
from litestar.static_files import create_static_files_router

from syncline.engine.errors import ValidationError
from syncline.engine.events import check_tenant

from .errors import DevLoginDisabled
from .settings import is_dev_secret, is_loopback

STATIC_DIR = Path(__file__).with_name("static") / "app"
DEV_ROLES = ("member", "viewer", "auditor", "admin")
DEV_TOKEN_TTL_S = 8 * 3600
# A request relayed by a proxy comes from loopback too: with any of these it is refused.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _dev_login_allowed(request: Request) -> bool:
    settings = request.app.state.settings
    client = request.client.host if request.client else ""
    return (settings.jwt_algorithm == "HS256" and is_dev_secret(settings.jwt_secret)
            and is_loopback(settings.host) and is_loopback(client or "")
            and not any(h in request.headers for h in PROXY_HEADERS))


@post("/dev/token", status_code=200, summary="Development login: a token signed with the development secret")
async def dev_token(request: Request, data: dict[str, Any]) -> dict:
    if not _dev_login_allowed(request):
        raise DevLoginDisabled("the development login is only available while the server runs with the "
                               "development secret on a loopback address; pass a token with #token=…")
    tenant, user, role = data.get("tenant"), data.get("user"), data.get("role", "member")
    if not isinstance(user, str) or not user.strip() or len(user) > 64 or not user.isprintable():
        raise ValidationError("user must be printable text of 1 to 64 characters")
    if not isinstance(tenant, str):
        raise ValidationError("tenant must be a string")
    check_tenant(tenant)
    if role not in DEV_ROLES:
        raise ValidationError(f"role must be one of {', '.join(DEV_ROLES)}")
    now = int(time.time())
    claims = {"sub": user.strip(), "tenant": tenant, "roles": [role], "iat": now, "exp": now + DEV_TOKEN_TTL_S,
              "jti": uuid.uuid4().hex}  # (as `syncline token` mints them: revocable by jti or user)
    token = jwt.encode(claims, request.app.state.settings.jwt_secret, algorithm="HS256")
    return {"token": token, "tenant": tenant, "user": user.strip(), "role": role, "ttl_s": DEV_TOKEN_TTL_S}


def app_router() -> Any:
    """``/app/…``: the built pages (``/app/`` is ``index.html``)."""
    return create_static_files_router(path="/app", directories=[STATIC_DIR], html_mode=True, name="app")


ROUTES = [dev_token]
