#!/usr/bin/env bash
# Install what the tests need, then run the linters, the type checker and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# A pyproject.toml edited without `make lock` would otherwise be tested against the old pins.
uv=$(find_uv)
lock_check=$("$uv" lock --check 2>&1) ||
  die "uv.lock does not match pyproject.toml: run 'make lock' and commit uv.lock with the change
$lock_check"
ensure_venv dev
# Integration tests need redis-server when no Redis answers (they then start a private one).
redis_answers "${TEST_REDIS_URL:-redis://127.0.0.1:6379}" || ensure_redis_server

say "ruff"
.venv/bin/ruff check .
say "mypy"
.venv/bin/mypy
say "architecture: import contracts (lint-imports) and dead code (vulture)"
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
.venv/bin/vulture
if [ -x scripts/lint-containers.sh ]; then
  say "container files"
  scripts/lint-containers.sh
fi
say "pytest"
.venv/bin/python -m pytest "$@"
