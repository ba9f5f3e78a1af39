# Shared shell helpers for scripts/: pick a Python >= 3.11, keep .venv installed, find or start Redis.
# shellcheck shell=bash

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
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

# ensure_venv EXTRAS: create .venv and install the project with EXTRAS, again only when pyproject.toml changes.
ensure_venv() {
  local extras=$1 stamp=".venv/.installed-${1//,/-}" digest
  digest=$(cksum pyproject.toml | cut -d' ' -f1)
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $(find_python)"
    "$(find_python)" -m venv .venv || die "could not create .venv (Debian/Ubuntu: apt-get install python3-venv)"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    say "installing .[$extras] into .venv (first run takes a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # One line per package fetched, so a first run shows progress without pip's full chatter.
    .venv/bin/python -m pip install -e ".[$extras]" 2>&1 |
      grep --line-buffered -E '^(Collecting|Successfully installed|ERROR)' | cut -c1-100
    echo "$digest" > "$stamp"
  fi
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

# url_port URL: the port of a redis:// URL (6379 when it names none).
url_port() {
  .venv/bin/python -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).port or 6379)' "$1"
}

url_host() {
  .venv/bin/python -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).hostname or "127.0.0.1")' "$1"
}
