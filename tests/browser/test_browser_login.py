"""The pages' token: ``POST /dev/token`` mints one only while the server signs with the
development secret, and the login form uses it; with a real secret it refuses and the
page takes a token from ``#token=`` (or the paste box)."""
from __future__ import annotations

import httpx
from browser_support import Pages
from playwright.sync_api import expect
from security.sec_limits_support import Serve

BODY = {"tenant": "acme", "user": "dev", "role": "admin"}


def _dev_server(workdir) -> Serve:
    """``syncline serve`` without SYNCLINE_JWT_SECRET: it makes and signs with var/dev-jwt-secret."""
    s = Serve(workdir)
    del s.env["SYNCLINE_JWT_SECRET"]
    return s


def test_dev_login_form_mints_a_token_with_the_development_secret(browser, tmp_path):
    server = _dev_server(tmp_path / "dev").start()
    pages = Pages(browser, server)
    try:
        r = httpx.post(f"{server.url}/dev/token", json={**BODY, "role": "super-admin"}, timeout=10)
        assert r.status_code == 400 and r.json()["code"] == "invalid"
        r = httpx.post(f"{server.url}/dev/token", json={**BODY, "tenant": "no/slash"}, timeout=10)
        assert r.status_code == 400
        for proxied in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}):
            r = httpx.post(f"{server.url}/dev/token", json=BODY, headers=proxied, timeout=10)
            assert r.status_code == 403 and r.json()["code"] == "dev_login_disabled", proxied
        minted = httpx.post(f"{server.url}/dev/token", json=BODY, timeout=10).json()["token"]
        r = httpx.get(f"{server.url}/v1/ops/stats", headers={"Authorization": f"Bearer {minted}"}, timeout=10)
        assert r.status_code == 200  # a real token of this server, with the role asked for

        page = pages.context().new_page()
        page.goto(f"{server.url}/app/ops.html")
        page.fill("#login-user", "dev")
        page.select_option("#login-role", "admin")
        page.click("#dev-login button[type=submit]")
        expect(page.locator("#who")).to_contain_text("dev @ acme (admin)")
        expect(page.locator("#card-state")).to_contain_text("up sqlite")
        # the token stays in this tab's sessionStorage: a reload keeps the session
        page.reload()
        expect(page.locator("#who")).to_contain_text("dev @ acme (admin)")
        page.click("#sign-out")
        expect(page.locator("#dev-login")).to_be_visible()
    finally:
        pages.close()
        server.stop()


def test_a_real_token_is_passed_in_the_fragment_and_leaves_the_address_bar(pages, server):
    page = pages.open("/app/editor.html?doc=frag", user="frank")
    expect(page.locator("#who")).to_contain_text("frank @ acme")
    assert "token=" not in page.url
    # without a token the page offers the login form and the paste box; the dev login explains its refusal
    bare = pages.context().new_page()
    bare.goto(f"{server.url}/app/editor.html")
    bare.click("#dev-login button[type=submit]")
    expect(bare.locator("#login-error")).to_contain_text("dev_login_disabled")
    from security.sec_limits_support import token

    bare.fill("#token-paste", token("paula"))
    bare.click("#token-form button[type=submit]")
    expect(bare.locator("#who")).to_contain_text("paula @ acme")
