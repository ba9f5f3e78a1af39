#!/usr/bin/env bash
# Load the running stack and the seed's in-process design side by side (../shared/bench/side_by_side.py).
#   make up            # in another terminal
#   make side-by-side ARGS="--with-mlflow-serve --rounds 3"
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${SIDE_BY_SIDE:-../shared/bench/side_by_side.py}
[ -f "$bench" ] || { echo "error: $bench not found (set SIDE_BY_SIDE)" >&2; exit 1; }
command -v wrk >/dev/null 2>&1 || { echo "error: wrk is not installed (apt-get install wrk; brew install wrk)" >&2; exit 1; }
# The seed server runs from the benchmark's folder, so a relative sqlite path would miss this store.
uri=${MLFLOW_TRACKING_URI:-sqlite:///mlruns.db}
case "$uri" in sqlite:////*) ;; sqlite:///*) uri="sqlite:///$PWD/${uri#sqlite:///}";; esac
export MLFLOW_TRACKING_URI=$uri
echo "==> side by side with the seed (about a minute; wrk runs in rounds)"
exec .venv/bin/python "$bench" --python .venv/bin/python "$@"
