"""RS256 / ES256 tokens verified with a public key (SYNCLINE_JWT_PUBLIC_KEY)."""
from __future__ import annotations

import time

import httpx
import jwt
import pytest
from api_wsclient import ws_close_code

crypto = pytest.importorskip("cryptography", reason="RS256/ES256 need the 'cryptography' package (not installed)")


def _keys(alg: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" \
        else ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, pem


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_asymmetric_tokens(gateway, alg):
    key, pem = _keys(alg)
    other, _ = _keys(alg)
    srv = gateway(jwt_algorithm=alg, jwt_public_key=pem)
    claims = {"sub": "alice", "tenant": "acme", "roles": ["member"], "exp": int(time.time()) + 60}
    good = jwt.encode(claims, key, algorithm=alg)
    forged = jwt.encode(claims, other, algorithm=alg)
    hs = jwt.encode(claims, "x" * 32, algorithm="HS256")
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/v1/log", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        r = c.get("/v1/log", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and r.json()["code"] == "token_bad_signature"
        r = c.get("/v1/log", headers={"Authorization": f"Bearer {hs}"})  # algorithm confusion refused
        assert r.status_code == 401 and r.json()["code"] == "token_bad_signature"
    assert await ws_close_code(f"{srv.ws_url}/v1/ws?token={forged}") == 4401
    assert await ws_close_code(f"{srv.ws_url}/v1/ws?token={good}", wait_s=0.3) is None
