"""Shared helpers of the token-lifecycle and transport tests (issue 15, items 5 and 8): the
gateway fixtures and clients of tests/api, and the process helpers of tests/realtime."""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt

HERE = Path(__file__).resolve().parent
for sub in ("api", "realtime"):
    path = str(HERE.parent / sub)
    if path not in sys.path:
        sys.path.insert(0, path)

from api_support import SECRET, RunningGateway, base_settings, make_token  # noqa: E402
from api_wsclient import NativeClient  # noqa: E402
from cluster import SECRET as RT_SECRET  # noqa: E402
from cluster import GatewayProcess, start_gateways, stop_gateways  # noqa: E402

__all__ = ["SECRET", "RunningGateway", "base_settings", "make_token", "NativeClient", "token", "exp_in",
           "RT_SECRET", "GatewayProcess", "start_gateways", "stop_gateways"]


def exp_in(seconds: float) -> int:
    """An ``exp`` claim ``seconds`` from now (whole seconds, at least that far)."""
    return int(time.time() + seconds) + 1


def token(user: str = "alice", *, tenant: str = "acme", roles=("member",), exp: int | None = None,
          jti: str | None = None, iat: float | None = None, secret: str = SECRET, **extra: Any) -> str:
    """A signed test token with ``jti`` and ``iat`` (``exp``: default 10 minutes from now)."""
    claims: dict[str, Any] = {"sub": user, "tenant": tenant, "roles": list(roles),
                              "exp": exp if exp is not None else exp_in(600),
                              "jti": jti or uuid.uuid4().hex, "iat": int(iat if iat is not None else time.time())}
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")
