# Shared shell helpers for scripts/: pick a Python >= 3.11, keep .venv installed, find or start Redis.
# shellcheck shell=bash

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
# redact TEXT: TEXT with the password of every scheme://user:password@host replaced by *** (shared/redact.py).
redact() { printf '%s' "$*" | sed -E 's#([a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@[:space:]]*:)[^/?#[:space:]]*@#\1***@#g'; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

find_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  die "Python >= 3.11 is required (Debian/Ubuntu: apt-get install python3 python3-venv; macOS: brew install python@3.12)"
}

# The uv that installs from uv.lock; the Dockerfiles copy the same version (ghcr.io/astral-sh/uv:<version>).
UV_VERSION=0.13.8

# find_uv: print the path of uv $UV_VERSION: the one on PATH if it is that version, else one installed into .tools/.
find_uv() {
  if command -v uv >/dev/null 2>&1 && [ "$(uv --version 2>/dev/null | cut -d' ' -f2)" = "$UV_VERSION" ]; then
    command -v uv; return 0
  fi
  if [ "$(.tools/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    say "installing uv $UV_VERSION into .tools/ (uv installs the locked dependencies)" >&2
    rm -rf .tools
    "$(find_python)" -m venv .tools || die "could not create .tools (Debian/Ubuntu: apt-get install python3-venv)"
    local log
    log=$(.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" 2>&1) ||
      die "could not install uv $UV_VERSION from PyPI: $log"
  fi
  echo "$PWD/.tools/bin/uv"
}

# ensure_venv EXTRAS: install the versions uv.lock pins for the core dependencies and the comma-separated
# EXTRAS into .venv (and the project, editable), again only when uv.lock or pyproject.toml changes.
ensure_venv() {
  local extras=$1 stamp=".venv/.installed-${1//,/-}" digest uv extra args=()
  digest=$(cat uv.lock pyproject.toml | cksum | cut -d' ' -f1)
  [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ] && return 0
  uv=$(find_uv) || exit 1
  # An existing .venv is kept (uv checks it meets requires-python); a new one gets find_python's interpreter.
  [ -x .venv/bin/python ] || args+=(--python "$(find_python)")
  for extra in ${extras//,/ }; do args+=(--extra "$extra"); done
  say "installing the locked dependencies of .[$extras] into .venv with uv $UV_VERSION"
  # --frozen: install uv.lock as it is, never re-resolve. --inexact: keep what other extras installed, so
  # `make up` and `make test` in turn do not uninstall each other's packages.
  UV_PROJECT_ENVIRONMENT=.venv "$uv" sync --frozen --inexact --no-python-downloads "${args[@]}" ||
    die "could not install .[$extras] from uv.lock (see uv's message above)"
  echo "$digest" > "$stamp"
}

# install_only: exit 0 here when INSTALL_ONLY=1, so `make <target> INSTALL_ONLY=1` runs only the target's install
# step (tests/integration/test_make_targets.py runs each one on a fresh copy of the repository).
install_only() {
  [ "${INSTALL_ONLY:-}" = 1 ] || return 0
  say "installed what this target needs; INSTALL_ONLY=1, so not running it"
  exit 0
}

# need_tool COMMAND PACKAGE: stop with one line naming the system package when COMMAND is not on PATH.
need_tool() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: apt-get install $2 (macOS: brew install $2)"
}

# redis_answers URL: true when a Redis server answers PING at URL.
redis_answers() {
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
sys.exit(0 if redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping() else 1)
PY
}

# ensure_redis_server: make sure redis-server is installed, installing Debian's package when we can.
ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    return 0
  fi
  die "no Redis answers and redis-server is not installed. Install it with one of:
    sudo apt-get install redis-server     (Debian/Ubuntu)
    brew install redis                    (macOS)
  or point CELERY_BROKER_URL and CELERY_RESULT_BACKEND at a Redis you have."
}

# url_port URL [DEFAULT]: the URL's port, else DEFAULT (Redis's 6379 unless given).
url_port() {
  .venv/bin/python -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).port or sys.argv[2])' \
    "$1" "${2:-6379}"
}

url_host() {
  .venv/bin/python -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).hostname or "127.0.0.1")' "$1"
}
