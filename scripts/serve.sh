#!/usr/bin/env bash
# Set everything up, then run the service on the embedded default (SQLite under var/,
# no other service): `syncline serve` listens on 127.0.0.1:8000. Arguments go to it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
mkdir -p var
exec .venv/bin/syncline serve "$@"
