#!/usr/bin/env bash
# The wheel as a user gets it: build it, install it with the server extra into a clean
# virtual environment (nothing from this checkout on the path), start `syncline serve`
# from it on a fresh SQLite file, and run a client-kit round trip against it from a
# second clean environment that has only the client extra.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'wheel-smoke: %s\n' "$*" >&2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/syncline-wheel.XXXXXX")"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

say "building the wheel"
# From a copy of the tracked files: a build/ folder left in the checkout by an earlier
# build would otherwise be reused.
mkdir -p "$work/src"
git ls-files -z | xargs -0 tar -cf - | tar -xf - -C "$work/src"
(cd "$work/src" && "$ROOT/.venv/bin/python" -m pip wheel -q --no-deps -w "$work/dist" . >"$work/wheel.log" 2>&1) || { cat "$work/wheel.log" >&2; exit 1; }
wheel="$(ls "$work"/dist/syncline-*.whl)"
"$ROOT/.venv/bin/python" - "$wheel" <<'PY' || exit 1
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
if "syncline/py.typed" not in names:
    sys.exit("wheel-smoke: py.typed is missing from the wheel")
missing = [f"syncline/api/static/app/{f}" for f in ("index.html", "editor.js", "board.js", "ops.js", "style.css")
           if f"syncline/api/static/app/{f}" not in names]
if missing:
    sys.exit(f"wheel-smoke: the built browser pages are missing from the wheel: {missing}")
if tops != {"syncline"}:
    sys.exit(f"wheel-smoke: the wheel installs top-level packages besides syncline: {sorted(tops)}")
PY

export PIP_DISABLE_PIP_VERSION_CHECK=1
say "installing it with [server] into a clean environment"
python3 -m venv "$work/server"
quiet() { "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; exit 1; }; }
quiet "$work/server/bin/pip" install -q -c constraints.txt "$wheel[server]"
say "installing it with [client] into another one"
python3 -m venv "$work/client"
quiet "$work/client/bin/pip" install -q -c constraints.txt "$wheel[client]"
if "$work/client/bin/python" -c "import litestar" 2>/dev/null || "$work/client/bin/python" -c "import asyncpg" 2>/dev/null; then
    say "the client extra pulled in server dependencies"; exit 1
fi

port="$("$work/server/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cd "$work"  # nothing of the checkout importable from here
export SYNCLINE_JWT_SECRET="wheel-smoke-secret-0123456789abcdef0123"
"$work/server/bin/syncline" serve --port "$port" --db "sqlite+aiosqlite:///$work/smoke.db" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    if "$work/server/bin/python" -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$port/healthz').status_code != 200)" 2>/dev/null; then
        break
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; say "syncline serve exited"; exit 1; }
    sleep 0.1
done
"$work/server/bin/python" -c "import httpx, sys; r = httpx.get('http://127.0.0.1:$port/app/editor.js'); sys.exit(r.status_code != 200 or len(r.content) < 1000)" \
    || { say "the installed server does not serve /app/editor.js"; exit 1; }
token="$("$work/server/bin/syncline" token --tenant acme --user alice)"

say "client-kit round trip against it"
"$work/client/bin/python" - "$port" "$token" <<'PY'
import asyncio, sys

import syncline
from syncline.clientkit.client import SynclineClient

port, token = sys.argv[1], sys.argv[2]
assert "site-packages" in syncline.__file__, syncline.__file__


async def main() -> None:
    a = SynclineClient(f"http://127.0.0.1:{port}", token, user="alice")
    b = SynclineClient(f"http://127.0.0.1:{port}", token, user="alice")
    await a.start()
    await b.start()
    a.set("rec/notes/1", {"title": "from the wheel"})
    await a.wait_synced(timeout=20)
    for _ in range(200):
        if b.get("rec/notes/1").get("title") == "from the wheel":
            break
        await asyncio.sleep(0.05)
    assert b.get("rec/notes/1").get("title") == "from the wheel", b.get("rec/notes/1")
    await a.close()
    await b.close()


asyncio.run(main())
print("wheel-smoke: ok")
PY
