#!/usr/bin/env bash
# Set everything up, start a throwaway PostgreSQL and Redis, run the whole test
# suite against them, stop them again. Arguments go to pytest:
#   scripts/test.sh                      # everything
#   scripts/test.sh tests/test_setup_smoke.py -k redis
# Exit code: pytest's; "no tests collected" (5) counts as a failure.
# If services are already running (scripts/services.sh start), they are reused and left running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

# The browser tests (tests/browser/) drive Debian's chromium with Playwright: install it
# as PostgreSQL and Redis are installed (as root, non-interactively) when it is missing.
ensure_chromium() {
    [ -x "${SYNCLINE_CHROMIUM:-/usr/bin/chromium}" ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "test: warning: chromium is missing and cannot be installed here (needs root and apt-get):" \
             "the browser tests will skip (and fail under CI)" >&2
        return 0
    fi
    echo "test: installing chromium (apt-get install -y chromium)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || echo "test: apt-get update reported errors; trying the install anyway" >&2
    apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null \
        || echo "test: warning: apt-get install chromium failed: the browser tests will skip (and fail under CI)" >&2
}
ensure_chromium

started=""
# shellcheck disable=SC2317  # cleanup is called by the EXIT trap
cleanup() {
    local rc=$?
    if [ -n "$started" ]; then
        bash scripts/services.sh stop || echo "test: warning: scripts/services.sh stop failed" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if bash scripts/services.sh status >/dev/null 2>&1; then
    echo "test: reusing the services already running (var/services.env); they stay up" >&2
else
    started=1
    bash scripts/services.sh start
fi

set -a
# shellcheck disable=SC1091
. var/services.env
set +a

rc=0
if [ "$#" -eq 0 ]; then
    # The whole run: lint and types first (seconds), then the suite, then the wheel.
    echo "test: ruff check" >&2
    .venv/bin/ruff check . || rc=1
    echo "test: mypy (engine/)" >&2
    .venv/bin/mypy || rc=1
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" </dev/null || { r=$?; [ "$r" -eq 5 ] && {
    echo "test: error: pytest collected no tests (exit 5); counting that as a failure" >&2; r=1; }; rc=$r; }
if [ "$#" -eq 0 ]; then
    bash scripts/wheel_smoke.sh || rc=1
fi
exit "$rc"
