#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install Syncline editable with its test and
# bench extras, pinned by constraints.txt. Idempotent and quiet: when nothing
# relevant changed since the last successful run, it returns in well under a second.
#
#   bash scripts/setup.sh            # normal use
#   SYNCLINE_PYTHON=python3.12 bash scripts/setup.sh   # choose the interpreter for a new .venv
#   SYNCLINE_SETUP_FORCE=1 bash scripts/setup.sh       # reinstall even if up to date
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.syncline-setup-stamp"
EXTRAS="server,test,bench"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

py_ok() { # is $1 a runnable Python >= 3.11 ?
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
    local c
    for c in ${SYNCLINE_PYTHON:-} python3 python3.13 python3.12 python3.11; do
        [ -n "$c" ] || continue
        command -v "$c" >/dev/null 2>&1 || continue
        # the real interpreter, not a shim (pyenv) or a symlink chain
        if py_ok "$c"; then "$c" -c 'import sys; print(sys.executable)'; return 0; fi
    done
    return 1
}

[ -f constraints.txt ] || die "constraints.txt is missing in $ROOT"

# 1. The virtual environment (recreated if it is broken or too old).
if [ -x "$VENV/bin/python" ] && ! py_ok "$VENV/bin/python"; then
    say ".venv is broken or older than Python 3.11: recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python)" || die "no Python >= 3.11 found (tried \$SYNCLINE_PYTHON, python3, python3.13..3.11); install one, e.g. apt-get install -y python3 python3-venv"
    say "creating .venv with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        die "'$PY -m venv' failed; on Debian install the venv module: apt-get install -y python3-venv"
    fi
fi

# 2. The project, editable, with pinned dependencies. Skipped when the stamp
#    (hash of the inputs that decide the install) is current.
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version)' | head -1)"
installed() { SYNCLINE_ROOT="$ROOT" "$VENV/bin/python" -I - <<'EOF' >/dev/null 2>&1
import importlib.metadata as m, json, os, sys
from urllib.parse import unquote, urlparse
# syncline must be installed editable from this very checkout
info = json.loads(m.distribution("syncline").read_text("direct_url.json") or "{}")
path = unquote(urlparse(info.get("url", "")).path)
ok = info.get("dir_info", {}).get("editable") and os.path.realpath(path) == os.path.realpath(os.environ["SYNCLINE_ROOT"])
sys.exit(0 if ok else 1)
EOF
}
if [ -z "${SYNCLINE_SETUP_FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && installed; then
    exit 0
fi

say "installing syncline[$EXTRAS] (editable, pinned by constraints.txt) into .venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
log="$(mktemp "${TMPDIR:-/tmp}/syncline-setup.XXXXXX")"
if ! "$VENV/bin/python" -m pip install -q --no-input -c constraints.txt -e ".[$EXTRAS]" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "pip install failed (output above). If a dependency in pyproject.toml changed, regenerate the pins: make constraints"
fi
rm -f "$log"
printf '%s\n' "$want" > "$STAMP"
say "ready: $VENV"
