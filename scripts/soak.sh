#!/usr/bin/env bash
# Soak a running stack (make up): Locust's scenario for a long run while the RSS of the API and worker
# processes is sampled; fails on any failed request or when RSS grows by more than RSS_LIMIT after warm-up.
#   scripts/soak.sh                                     # 50 users for 10 min against http://127.0.0.1:9191
#   USERS=20 DURATION=90s WARMUP=30s SAMPLE=5s scripts/soak.sh
#   scripts/soak.sh AsyncClassifyUser                   # extra arguments go to locust (e.g. user classes)
# Reports go to load/reports/soak-YYYYmmdd-HHMMSS/: rss.csv, soak.png and the Locust run's files.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Locust (run by scripts/load.sh), psutil for the RSS sampler and matplotlib for the plot.
ensure_venv load
install_only

USERS="${USERS:-50}"
DURATION="${DURATION:-10m}"
HOST="${HOST:-http://127.0.0.1:9191}"
WARMUP="${WARMUP:-2m}"
SAMPLE="${SAMPLE:-10s}"
RSS_LIMIT="${RSS_LIMIT:-10}"

.venv/bin/python -c "import sys, urllib.request as r; r.urlopen(sys.argv[1] + '/readyz', timeout=5)" "$HOST" 2>/dev/null ||
  die "no stack answers $HOST/readyz: start one with 'make up' (in another terminal) first"
port=$(.venv/bin/python -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).port or 80)' "$HOST")
run="load/reports/soak-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run"
say "soak: $USERS users for $DURATION against $HOST; RSS every $SAMPLE, judged after a $WARMUP warm-up; reports: $run/"

# The sampler runs beside Locust; SIGTERM makes it take one last sample and exit.
.venv/bin/python -m load.rss --port "$port" --interval "$SAMPLE" --output "$run/rss.csv" &
sampler=$!
trap 'kill -TERM "$sampler" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$run/rss.csv" ] && break; kill -0 "$sampler" 2>/dev/null || break; sleep 0.1; done
[ -s "$run/rss.csv" ] || die "the RSS sampler found no stack to watch (soak samples processes on this machine)"

status=0
USERS="$USERS" DURATION="$DURATION" HOST="$HOST" REPORTS="$run" scripts/load.sh "$@" || status=$?
kill -TERM "$sampler" && wait "$sampler" || true
trap - EXIT

.venv/bin/python -m load.plot_soak "$run" --warmup "$WARMUP" --limit "$RSS_LIMIT" || true
.venv/bin/python -m load.soak_report "$run" --warmup "$WARMUP" --limit "$RSS_LIMIT" || status=$?
exit "$status"
