#!/usr/bin/env bash
# Write .env for docker compose with fresh random secrets: REDIS_PASSWORD, API_KEYS and FLOWER_BASIC_AUTH.
# An existing .env is never overwritten. The secrets are written to the file (mode 600), never printed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ -e .env ] && die ".env exists already; edit it, or remove it to make a new one"
# Hex: safe inside a redis:// URL and in a header, with 128 bits or more of randomness.
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
(umask 077 && cat > .env <<ENV
# Made by \`make env\`; docker compose reads it. Keep it out of version control (.gitignore lists it).
REDIS_PASSWORD=$(hex 24)
# Clients send one of these as X-API-Key or Authorization: Bearer (comma-separated; rotate by adding one).
API_KEYS=$(hex 24)
FLOWER_BASIC_AUTH=admin:$(hex 16)
ENV
)
say "wrote .env (mode 600): REDIS_PASSWORD, API_KEYS and FLOWER_BASIC_AUTH; read them there, they are not shown here"
