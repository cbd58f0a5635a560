#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis on loopback for the test suite.
#
#   scripts/services.sh start    start both (installs them with apt-get if missing), write var/services.env
#   scripts/services.sh stop     stop both, remove their data; safe to call when nothing runs
#   scripts/services.sh status   exit 0 if both answer, else 1
#   scripts/services.sh env      print var/services.env (for: eval "$(scripts/services.sh env)")
#
# var/services.env exports:
#   SYNCLINE_TEST_PG_URL        postgresql+asyncpg://postgres@127.0.0.1:PORT/syncline_test (trust auth)
#   SYNCLINE_TEST_REDIS_URL     redis://127.0.0.1:PORT/0
#   SYNCLINE_TEST_PG_BIN        directory of initdb/pg_ctl/postgres/psql
#   SYNCLINE_TEST_PG_CTL        pg_ctl path; SYNCLINE_TEST_PG_DATA its data directory
#   SYNCLINE_TEST_PG_RUN_AS     prefix to run PG binaries with ("runuser -u postgres --" as root, else empty)
#   SYNCLINE_TEST_PG_HOST/PORT/LOG, SYNCLINE_TEST_REDIS_SERVER/PORT/PID/PIDFILE/LOG, SYNCLINE_TEST_SERVICES_DIR
# A chaos test can restart PostgreSQL with
#   $SYNCLINE_TEST_PG_RUN_AS "$SYNCLINE_TEST_PG_CTL" -D "$SYNCLINE_TEST_PG_DATA" -w -m fast restart
# (the port and all settings live in the data directory), and Redis with
#   "$SYNCLINE_TEST_REDIS_SERVER" --port "$SYNCLINE_TEST_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
#       --pidfile "$SYNCLINE_TEST_REDIS_PIDFILE" --daemonize no
# `stop` finds a restarted Redis through that pid file (and a SHUTDOWN on its port).
#
# Settings: SYNCLINE_SERVICES_TIMEOUT (readiness deadline in seconds, default 60),
#           SYNCLINE_PG_BIN (use this PostgreSQL bin directory),
#           SYNCLINE_SERVICES_VAR (where services.env lives, default var/; a second set of services
#           for a developer who restarts them in chaos tests while others keep using var/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="${SYNCLINE_SERVICES_VAR:-$ROOT/var}"
ENV_FILE="$VAR/services.env"
LOCK_FILE="$VAR/services.lock"
DB_NAME="syncline_test"
TIMEOUT="${SYNCLINE_SERVICES_TIMEOUT:-60}"
PG_OS_USER="postgres"

say() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1; }

python_any() { # a Python for small helpers (free ports, pings); the venv's is not required
    local c
    for c in python3 "$ROOT/.venv/bin/python" python; do
        if have "$c" || [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    die "python3 is needed by this script"
}
PY="$(python_any)"

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

redis_ping() { # redis_ping PORT -> exit 0 if a Redis answers PONG on 127.0.0.1:PORT
    "$PY" - "$1" <<'EOF' >/dev/null 2>&1
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
EOF
}

redis_shutdown() { # ask whatever Redis listens on PORT to exit without saving
    "$PY" - "$1" <<'EOF' >/dev/null 2>&1 || true
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
        s.sendall(b"SHUTDOWN NOSAVE\r\n")
        s.recv(64)
except OSError:
    pass
EOF
}

pid_alive() { # running, and not a zombie waiting for a parent that does not reap it
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [ "$state" != Z ]
}

pid_is() { # pid_is PID NAME -> the process PID runs a program whose name contains NAME
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$2"
}

wait_gone() { # wait_gone PID SECONDS
    local pid=$1 deadline=$((SECONDS + $2))
    while pid_alive "$pid"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.1
    done
}

# ---------------------------------------------------------------- installing
APT_UPDATED=""
apt_install() {
    have apt-get || die "$* not found and apt-get is not available: install it by hand"
    [ "$(id -u)" -eq 0 ] || die "$* not found; installing needs root (sudo apt-get install -y $*)"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting system-wide daemons (on 5432/6379) while installing.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT   # also if we are interrupted
    fi
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        apt-get update -qq >/dev/null || say "apt-get update reported errors; trying the install anyway"
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    local rc=0
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    if [ -n "$made_policy" ]; then rm -f "$policy"; trap - EXIT; fi
    return $rc
}

pg_bin_ok() { [ -n "$1" ] && [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ]; }

find_pg_bin() {
    local d
    if [ -n "${SYNCLINE_PG_BIN:-}" ]; then
        pg_bin_ok "$SYNCLINE_PG_BIN" && { echo "$SYNCLINE_PG_BIN"; return 0; }
        die "SYNCLINE_PG_BIN=$SYNCLINE_PG_BIN has no initdb/pg_ctl/postgres"
    fi
    if have pg_ctl; then
        d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
        pg_bin_ok "$d" && { echo "$d"; return 0; }
    fi
    # newest major version first (/usr/lib/postgresql/<major>/bin)
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -V -r); do
        pg_bin_ok "$d" && { echo "$d"; return 0; }
    done
    return 1
}

ensure_pg() {
    PG_BIN="$(find_pg_bin)" && return 0
    say "PostgreSQL server binaries not found: installing them"
    apt_install postgresql-15 || apt_install postgresql || die "could not install PostgreSQL (apt-get install postgresql-15 / postgresql failed)"
    PG_BIN="$(find_pg_bin)" || die "PostgreSQL was installed but initdb/pg_ctl/postgres are still not found under /usr/lib/postgresql/*/bin"
}

ensure_redis() {
    REDIS_SERVER="$(command -v redis-server || true)"
    [ -n "$REDIS_SERVER" ] && return 0
    say "redis-server not found: installing it"
    apt_install redis-server || die "could not install Redis (apt-get install redis-server failed)"
    REDIS_SERVER="$(command -v redis-server || true)"
    [ -n "$REDIS_SERVER" ] || die "redis-server was installed but is not on PATH"
}

# As root, PostgreSQL must run as an unprivileged user; as anyone else it runs as that user.
setup_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
            say "creating system user $PG_OS_USER"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$PG_OS_USER" || die "could not create user $PG_OS_USER"
        fi
        have runuser || die "runuser (util-linux) is needed to run PostgreSQL as $PG_OS_USER"
        RUN_AS=(runuser -u "$PG_OS_USER" --)
        PG_OWNER="$PG_OS_USER"
    else
        RUN_AS=()
        PG_OWNER="$(id -un)"
    fi
}

# ---------------------------------------------------------------- state
load_env() { # load var/services.env into this shell; exit 1 if absent
    [ -f "$ENV_FILE" ] || return 1
    # shellcheck disable=SC1090
    . "$ENV_FILE"
}

pg_ready() { # pg_ready -> 0 if our PostgreSQL accepts a query
    [ -n "${SYNCLINE_TEST_PG_BIN:-}" ] || return 1
    local -a run_as=()
    [ -z "${SYNCLINE_TEST_PG_RUN_AS:-}" ] || read -r -a run_as <<<"$SYNCLINE_TEST_PG_RUN_AS"
    "${run_as[@]}" "$SYNCLINE_TEST_PG_BIN/psql" -X -q -w -h 127.0.0.1 -p "$SYNCLINE_TEST_PG_PORT" \
        -U postgres -d "$DB_NAME" -tAc 'select 1' >/dev/null 2>&1
}

status() {
    load_env || { say "not running (no $ENV_FILE)"; return 1; }
    local ok=0
    if pg_ready; then say "postgresql: up on 127.0.0.1:$SYNCLINE_TEST_PG_PORT"; else say "postgresql: DOWN (127.0.0.1:$SYNCLINE_TEST_PG_PORT)"; ok=1; fi
    if redis_ping "$SYNCLINE_TEST_REDIS_PORT"; then say "redis: up on 127.0.0.1:$SYNCLINE_TEST_REDIS_PORT"; else say "redis: DOWN (127.0.0.1:$SYNCLINE_TEST_REDIS_PORT)"; ok=1; fi
    return $ok
}

# ---------------------------------------------------------------- start
start_pg() { # uses SVC_DIR, PG_BIN, RUN_AS, PG_OWNER; sets PG_PORT, PG_DATA, PG_LOG
    PG_DATA="$SVC_DIR/pgdata"
    PG_LOG="$SVC_DIR/postgres.log"
    mkdir -p "$PG_DATA" && chmod 700 "$PG_DATA" && touch "$PG_LOG"
    chown "$PG_OWNER" "$PG_DATA" "$PG_LOG"
    if ! "${RUN_AS[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C --no-sync >"$SVC_DIR/initdb.log" 2>&1; then
        cat "$SVC_DIR/initdb.log" >&2
        die "initdb failed (output above)"
    fi
    # Trust, and only from 127.0.0.1 (plus the private socket in the data directory).
    cat >"$PG_DATA/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 trust
EOF
    chown "$PG_OWNER" "$PG_DATA/pg_hba.conf"
    local attempt
    for attempt in 1 2 3 4 5; do
        PG_PORT="$(free_port)"
        # Everything lives in postgresql.conf so that a plain `pg_ctl restart` keeps it.
        cat >>"$PG_DATA/postgresql.conf" <<EOF

# --- syncline test instance (scripts/services.sh), attempt $attempt
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DATA'
max_connections = 200
logging_collector = off
log_min_messages = warning
EOF
        # 9>&-: the server must not inherit this script's lock file descriptor
        if "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" start >/dev/null 2>&1 9>&-; then
            break
        fi
        if grep -q -i -e 'could not bind' -e 'address already in use' "$PG_LOG"; then
            say "port $PG_PORT was taken meanwhile; retrying with another"
            continue
        fi
        tail -n 30 "$PG_LOG" >&2
        die "PostgreSQL did not start within ${TIMEOUT}s (log above: $PG_LOG)"
    done
    [ "$attempt" -lt 5 ] || [ -f "$PG_DATA/postmaster.pid" ] || die "PostgreSQL could not bind a free port"
    # pg_ctl -w already waited; still poll for a connection over TCP with a deadline.
    local deadline=$((SECONDS + TIMEOUT))
    until "${RUN_AS[@]}" "$PG_BIN/psql" -X -q -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
            -tAc 'select 1' >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { tail -n 30 "$PG_LOG" >&2; die "PostgreSQL on 127.0.0.1:$PG_PORT does not answer after ${TIMEOUT}s"; }
        sleep 0.2
    done
    "${RUN_AS[@]}" "$PG_BIN/psql" -X -q -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB_NAME" >/dev/null \
        || die "could not create database $DB_NAME"
}

start_redis() { # uses SVC_DIR, REDIS_SERVER; sets REDIS_PORT, REDIS_PID, REDIS_PIDFILE, REDIS_LOG
    REDIS_LOG="$SVC_DIR/redis.log"
    REDIS_PIDFILE="$SVC_DIR/redis.pid"
    local attempt deadline
    local -a SETSID=()
    have setsid && SETSID=(setsid -w)   # -w: if setsid must fork, it stays as the parent while Redis runs
    for attempt in 1 2 3 4 5; do
        REDIS_PORT="$(free_port)"
        rm -f "$REDIS_PIDFILE"
        # own session (like PostgreSQL under pg_ctl): a Ctrl-C meant for the tests must not kill it
        "${SETSID[@]}" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --pidfile "$REDIS_PIDFILE" --dir "$SVC_DIR" --logfile "$REDIS_LOG" \
            </dev/null >/dev/null 2>&1 9>&- &
        REDIS_PID=$!
        deadline=$((SECONDS + TIMEOUT))
        until redis_ping "$REDIS_PORT"; do
            if ! pid_alive "$REDIS_PID"; then
                wait "$REDIS_PID" 2>/dev/null || true
                break
            fi
            [ $SECONDS -lt $deadline ] || { kill "$REDIS_PID" 2>/dev/null || true; tail -n 20 "$REDIS_LOG" >&2 || true; die "Redis did not answer PING within ${TIMEOUT}s (log: $REDIS_LOG)"; }
            sleep 0.1
        done
        if pid_alive "$REDIS_PID" && redis_ping "$REDIS_PORT"; then
            # the pid file is the authority (it is also right if the shell forked in between)
            [ -s "$REDIS_PIDFILE" ] && REDIS_PID="$(cat "$REDIS_PIDFILE")"
            return 0
        fi
        if grep -q -i -e 'address already in use' -e 'could not create server' "$REDIS_LOG" 2>/dev/null; then
            say "port $REDIS_PORT was taken meanwhile; retrying with another"
            continue
        fi
        tail -n 20 "$REDIS_LOG" >&2 || true
        die "Redis exited at start (log above: $REDIS_LOG)"
    done
    die "Redis could not bind a free port"
}

write_env() {
    local tmp="$ENV_FILE.tmp.$$"
    {
        echo "# Written by scripts/services.sh start on $(date -u +%FT%TZ); removed by scripts/services.sh stop."
        echo "# Load with: set -a; . var/services.env; set +a"
        printf 'export %s=%q\n' \
            SYNCLINE_TEST_PG_URL "postgresql+asyncpg://postgres@127.0.0.1:$PG_PORT/$DB_NAME" \
            SYNCLINE_TEST_REDIS_URL "redis://127.0.0.1:$REDIS_PORT/0" \
            SYNCLINE_TEST_PG_HOST "127.0.0.1" \
            SYNCLINE_TEST_PG_PORT "$PG_PORT" \
            SYNCLINE_TEST_PG_BIN "$PG_BIN" \
            SYNCLINE_TEST_PG_CTL "$PG_BIN/pg_ctl" \
            SYNCLINE_TEST_PG_DATA "$PG_DATA" \
            SYNCLINE_TEST_PG_LOG "$PG_LOG" \
            SYNCLINE_TEST_PG_RUN_AS "${RUN_AS[*]}" \
            SYNCLINE_TEST_REDIS_SERVER "$REDIS_SERVER" \
            SYNCLINE_TEST_REDIS_PORT "$REDIS_PORT" \
            SYNCLINE_TEST_REDIS_PID "$REDIS_PID" \
            SYNCLINE_TEST_REDIS_PIDFILE "$REDIS_PIDFILE" \
            SYNCLINE_TEST_REDIS_LOG "$REDIS_LOG" \
            SYNCLINE_TEST_SERVICES_DIR "$SVC_DIR"
    } >"$tmp"
    mv -f "$tmp" "$ENV_FILE"
}

start() {
    if [ -f "$ENV_FILE" ]; then
        if status >/dev/null 2>&1; then
            load_env
            say "already running (PostgreSQL 127.0.0.1:$SYNCLINE_TEST_PG_PORT, Redis 127.0.0.1:$SYNCLINE_TEST_REDIS_PORT); env in var/services.env"
            return 0
        fi
        say "found stale state from an earlier run: cleaning it up first"
        stop
    fi
    ensure_pg
    ensure_redis
    setup_pg_user
    SVC_DIR="$(mktemp -d "${TMPDIR:-/tmp}/syncline-services.XXXXXX")"
    chmod 755 "$SVC_DIR"   # the postgres user must reach its data directory inside
    touch "$SVC_DIR/.syncline-services"
    # If anything below fails, leave nothing running behind.
    trap 'rc=$?; if [ $rc -ne 0 ]; then say "start failed: cleaning up"; cleanup_dir "$SVC_DIR"; fi' EXIT
    start_pg
    start_redis
    write_env
    trap - EXIT
    say "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (db $DB_NAME), Redis on 127.0.0.1:$REDIS_PORT; env in var/services.env"
}

# ---------------------------------------------------------------- stop
stop_pg_dir() { # stop_pg_dir DATA_DIR [PG_BIN] [RUN_AS...]
    local data=$1 bin=${2:-} pid
    shift 2 || shift $#
    [ -f "$data/postmaster.pid" ] || return 0
    pid="$(head -n1 "$data/postmaster.pid" 2>/dev/null || true)"
    if [ -n "$bin" ] && [ -x "$bin/pg_ctl" ]; then
        "$@" "$bin/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if pid_alive "$pid" && pid_is "$pid" postgres; then
        kill -TERM "$pid" 2>/dev/null || true   # smart shutdown refused: ask again, then insist
        wait_gone "$pid" 10 || { kill -QUIT "$pid" 2>/dev/null || true; wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true; }
    fi
}

stop_redis() { # stop_redis PIDFILE PORT [PID]
    local pidfile=$1 port=$2 pid pids=""
    [ -s "$pidfile" ] && pids="$(cat "$pidfile")"
    [ -n "${3:-}" ] && pids="$pids $3"
    for pid in $pids; do
        if pid_alive "$pid" && pid_is "$pid" redis-server; then
            kill -TERM "$pid" 2>/dev/null || true
            wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # a Redis that a test restarted without the pid file
    if [ -n "$port" ] && redis_ping "$port"; then
        redis_shutdown "$port"
    fi
}

cleanup_dir() { # stop whatever runs from a services dir, then remove it
    local dir=$1 pgbin=${PG_BIN:-} port=${REDIS_PORT:-} pid=${REDIS_PID:-}
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    [ -e "$dir/.syncline-services" ] || { say "refusing to remove $dir: not a services directory"; return 0; }
    local -a run_as=()
    if [ "$(id -u)" -eq 0 ] && id -u "$PG_OS_USER" >/dev/null 2>&1; then run_as=(runuser -u "$PG_OS_USER" --); fi
    [ -n "$pgbin" ] || pgbin="$(find_pg_bin 2>/dev/null || true)"
    stop_pg_dir "$dir/pgdata" "$pgbin" "${run_as[@]}"
    stop_redis "$dir/redis.pid" "$port" "$pid"
    rm -rf "$dir"
}

stop() {
    if ! load_env; then
        say "nothing to stop (no $ENV_FILE)"
        return 0
    fi
    PG_BIN="$SYNCLINE_TEST_PG_BIN" REDIS_PORT="$SYNCLINE_TEST_REDIS_PORT" REDIS_PID="$SYNCLINE_TEST_REDIS_PID" \
        cleanup_dir "$SYNCLINE_TEST_SERVICES_DIR"
    # Data directory moved elsewhere by hand? stop what the env file names anyway.
    if [ -d "${SYNCLINE_TEST_PG_DATA:-}" ]; then
        local -a run_as=()
        [ -z "${SYNCLINE_TEST_PG_RUN_AS:-}" ] || read -r -a run_as <<<"$SYNCLINE_TEST_PG_RUN_AS"
        stop_pg_dir "$SYNCLINE_TEST_PG_DATA" "$SYNCLINE_TEST_PG_BIN" "${run_as[@]}"
    fi
    stop_redis "${SYNCLINE_TEST_REDIS_PIDFILE:-}" "$SYNCLINE_TEST_REDIS_PORT" "$SYNCLINE_TEST_REDIS_PID"
    rm -f "$ENV_FILE"
    say "stopped PostgreSQL (127.0.0.1:$SYNCLINE_TEST_PG_PORT) and Redis (127.0.0.1:$SYNCLINE_TEST_REDIS_PORT); data removed"
}

# ---------------------------------------------------------------- main
# (sourcing the file only defines the functions)
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi

cmd="${1:-}"
case "$cmd" in
    start|stop|status|env) ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac

mkdir -p "$VAR"
if have flock && [ "$cmd" != env ]; then
    exec 9>"$LOCK_FILE"
    flock -w "$TIMEOUT" 9 || die "another scripts/services.sh is running (lock $LOCK_FILE)"
fi

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env)
        [ -f "$ENV_FILE" ] || die "not running: start with scripts/services.sh start"
        cat "$ENV_FILE"
        ;;
esac
