#!/usr/bin/env bash
# Run the whole stack in the foreground: Redis (when none answers), a champion model, a worker and the API.
# Ctrl-C or SIGTERM stops what this script started, and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}
export CELERY_RESULT_BACKEND=${CELERY_RESULT_BACKEND:-redis://127.0.0.1:6379/1}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlruns.db}
export PORT=${PORT:-9191}
mkdir -p .run

pids=()
stop_all() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_venv api,worker,training

if redis_answers "$CELERY_BROKER_URL"; then
  say "using the Redis at $CELERY_BROKER_URL"
else
  host=$(url_host "$CELERY_BROKER_URL")
  case "$host" in 127.0.0.1|localhost|::1) ;; *) die "no Redis answers at $CELERY_BROKER_URL";; esac
  ensure_redis_server
  port=$(url_port "$CELERY_BROKER_URL")
  say "starting redis-server on 127.0.0.1:$port (log: .run/redis.log)"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$PWD/.run" \
    > .run/redis.log 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis_answers "$CELERY_BROKER_URL" && break; sleep 0.1; done
  redis_answers "$CELERY_BROKER_URL" || die "redis-server did not start; see .run/redis.log"
fi

if (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then die "port $PORT is in use: stop what runs there or set PORT"; fi

say "checking for a champion model in $MLFLOW_TRACKING_URI"
.venv/bin/python -m training --if-missing

say "starting the worker (log: .run/worker.log)"
.venv/bin/celery -A worker worker --without-gossip --without-mingle > .run/worker.log 2>&1 &
pids+=($!)
say "starting the API on port $PORT (log: .run/api.log)"
.venv/bin/python -m api > .run/api.log 2>&1 &
pids+=($!)

printf 'waiting for /readyz '
for i in $(seq 240); do
  if .venv/bin/python -c "import sys, urllib.request as r; r.urlopen('http://127.0.0.1:$PORT/readyz', timeout=2)" 2>/dev/null; then
    ready=1; break
  fi
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo; tail -n 20 .run/*.log; die "a process exited during start-up"; }; done
  [ $((i % 4)) -eq 0 ] && printf '.'
  sleep 0.25
done
echo
[ "${ready:-}" = 1 ] || { tail -n 20 .run/worker.log .run/api.log; die "the stack was not ready within 60 s"; }

cat <<MSG

  Iris classifier is ready.
    API        http://127.0.0.1:$PORT/v1/classify   (async: /v1/classify/async, poll: /v1/tasks/<id>)
    Health     http://127.0.0.1:$PORT/readyz
    Logs       .run/worker.log  .run/api.log

  Try it:
    curl -s http://127.0.0.1:$PORT/v1/classify -H 'Content-Type: application/json' \\
      -d '{"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}'

  Ctrl-C stops everything started here.
MSG

# Stay in the foreground; if any process dies, stop the rest and say so.
while true; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 .run/worker.log .run/api.log; die "process $pid exited"; }
  done
  sleep 1
done
