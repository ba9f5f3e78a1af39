#!/usr/bin/env bash
# Headless Locust run against a running API, with CSV, HTML and PNG reports under load/reports/.
#   scripts/load.sh                                   # 32 users for 60 s against http://127.0.0.1:9191
#   USERS=64 SPAWN_RATE=16 DURATION=2m HOST=http://10.0.0.5:9191 scripts/load.sh
#   scripts/load.sh SyncClassifyUser                  # extra arguments go to locust (e.g. user classes)
set -e
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Locust, and matplotlib for the plot.
ensure_venv load
install_only

USERS="${USERS:-32}"
SPAWN_RATE="${SPAWN_RATE:-8}"
DURATION="${DURATION:-60s}"
HOST="${HOST:-http://127.0.0.1:9191}"
REPORTS="${REPORTS:-load/reports}"

mkdir -p "$REPORTS"
prefix="$REPORTS/locust-$(date +%Y%m%d-%H%M%S)"
echo "load: $USERS users (spawn rate $SPAWN_RATE/s) for $DURATION against $HOST; reports: $prefix*"

# Locust exits 1 when any request failed: keep going to write the plot and summary, then exit with its code.
status=0
.venv/bin/python -m locust -f load/locustfile.py --headless \
    --users "$USERS" --spawn-rate "$SPAWN_RATE" --run-time "$DURATION" --host "$HOST" \
    --stop-timeout 20 --csv "$prefix" --html "$prefix.html" "$@" || status=$?

if [ -s "${prefix}_stats_history.csv" ]; then
    .venv/bin/python load/plot_locust.py "$prefix" --title "$USERS users against $HOST"
    echo "reports: ${prefix}_stats.csv ${prefix}_stats_history.csv $prefix.html $prefix.png"
else
    echo "load: locust wrote no stats history (exit $status)" >&2
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
