#!/usr/bin/env bash
# Run the whole stack in the foreground under supervisord: Redis (when none answers), a champion model,
# WORKERS Celery workers and the API. A worker, the API or that Redis is restarted when it exits.
# Ctrl-C or SIGTERM stops everything this script started, and nothing else.
# RUN_DIR (default .run) holds the logs and supervisord's config. UP_SKIP_SETUP=1 skips the venv install
# and the training check, for callers (the tests) that have done both already.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}
export CELERY_RESULT_BACKEND=${CELERY_RESULT_BACKEND:-redis://127.0.0.1:6379/1}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlruns.db}
export PORT=${PORT:-9191}
# A local stack listens on this machine only; API_HOST=0.0.0.0 offers it to the network (set API_KEYS then).
export API_HOST=${API_HOST:-127.0.0.1}
export WORKERS=${WORKERS:-1}
case "$WORKERS" in ''|*[!0-9]*|0) die "WORKERS must be a whole number of at least 1, not '$WORKERS'";; esac
# Worker N serves Prometheus metrics on WORKER_METRICS_PORT + N - 1 (0: none); the API serves /metrics on PORT.
export WORKER_METRICS_PORT=${WORKER_METRICS_PORT:-9192}
case "$WORKER_METRICS_PORT" in ''|*[!0-9]*) die "WORKER_METRICS_PORT must be a port number or 0, not '$WORKER_METRICS_PORT'";; esac
# supervisord's config reads these as %(ENV_...)s.
export UP_ROOT=$PWD
mkdir -p "${RUN_DIR:-.run}"
RUN_DIR=$(cd "${RUN_DIR:-.run}" && pwd)
export RUN_DIR

sup=""
stop_all() {
  # A second Ctrl-C must not cut the orderly stop short; supervisord bounds it (SIGKILL after stopwaitsecs).
  trap '' INT TERM
  trap - EXIT
  if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
    say "stopping the API, the workers and what else supervisord started"
    kill -TERM "$sup" 2>/dev/null || true
    wait "$sup" 2>/dev/null || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "${UP_SKIP_SETUP:-}" = 1 ] || ensure_venv api,worker,training,local

conf="$RUN_DIR/supervisord.conf"
# supervisorctl's password, new each run. As root, say so in the config, or supervisord warns at every start.
password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
as_root='s/^;user=root$/user=root/'
[ "$(id -u)" = 0 ] || as_root=''
# supervisorctl reads this file without up.sh's environment: write the run directory in literally.
(umask 077 && sed -e "s/@PASSWORD@/$password/" -e "$as_root" -e "s|%(ENV_RUN_DIR)s|$RUN_DIR|g" \
  scripts/supervisord.conf > "$conf")
logs="$RUN_DIR/worker-*.log  $RUN_DIR/api.log"

# Redis always holds results and replies; with RabbitMQ as the broker, Redis is the result backend's.
redis_url=$CELERY_BROKER_URL
case "$CELERY_BROKER_URL" in
  amqp://*|amqps://*|pyamqp://*)
    redis_url=$CELERY_RESULT_BACKEND
    (echo > "/dev/tcp/$(url_host "$CELERY_BROKER_URL")/$(url_port "$CELERY_BROKER_URL" 5672)") 2>/dev/null ||
      die "no RabbitMQ answers at $(redact "$CELERY_BROKER_URL")"
    say "using the RabbitMQ at $(redact "$CELERY_BROKER_URL") as the broker" ;;
esac
if redis_answers "$redis_url"; then
  say "using the Redis at $(redact "$redis_url")"
else
  host=$(url_host "$redis_url")
  case "$host" in 127.0.0.1|localhost|::1) ;; *) die "no Redis answers at $(redact "$redis_url")";; esac
  ensure_redis_server
  REDIS_PORT=$(url_port "$redis_url")
  export REDIS_PORT
  mkdir -p "$RUN_DIR/redis"
  cat scripts/supervisord-redis.conf >> "$conf"
  say "redis-server will run on 127.0.0.1:$REDIS_PORT, with its AOF in $RUN_DIR/redis"
  logs="$logs  $RUN_DIR/redis.log"
fi

if (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then die "port $PORT is in use: stop what runs there or set PORT"; fi

if [ "${UP_SKIP_SETUP:-}" != 1 ]; then
  say "checking for a champion model in $(redact "$MLFLOW_TRACKING_URI")"
  .venv/bin/python -m training --if-missing
fi

say "starting supervisord: $WORKERS worker(s) and the API on port $PORT (config: $conf)"
: > "$RUN_DIR/supervisord.log"
.venv/bin/supervisord -c "$conf" &
sup=$!

wait_s=${UP_READY_TIMEOUT:-120}
say "waiting for /readyz (up to $wait_s s)"
deadline=$((SECONDS + wait_s))
until .venv/bin/python -c "import urllib.request as r; r.urlopen('http://127.0.0.1:$PORT/readyz', timeout=2)" 2>/dev/null; do
  kill -0 "$sup" 2>/dev/null || die "supervisord exited during start-up; see $RUN_DIR/supervisord.log"
  if grep -q 'gave up:' "$RUN_DIR/supervisord.log"; then
    tail -n 20 "$RUN_DIR"/*.log; die "a program kept failing during start-up"
  fi
  [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$RUN_DIR"/*.log; die "the stack was not ready within $wait_s s"; }
  sleep 0.25
done

worker_metrics=""
if [ "$WORKER_METRICS_PORT" -gt 0 ]; then
  worker_metrics=", workers on ports $WORKER_METRICS_PORT-$((WORKER_METRICS_PORT + WORKERS - 1))"
  [ "$WORKERS" -gt 1 ] || worker_metrics=", worker on port $WORKER_METRICS_PORT"
fi
key_hint=""
# The keys themselves are never printed.
if [ -n "${API_KEYS:-}${API_KEYS_FILE:-}" ]; then key_hint="
      -H 'X-API-Key: <one of API_KEYS>' \\"; fi
cat <<MSG

  Iris classifier is ready.
    API        http://127.0.0.1:$PORT/v1/classify   (async: /v1/classify/async, poll: /v1/tasks/<id>)
    Health     http://127.0.0.1:$PORT/readyz
    Metrics    http://127.0.0.1:$PORT/metrics (API)$worker_metrics
    Workers    $WORKERS, restarted when they exit: .venv/bin/supervisorctl -c $conf status
    Logs       $logs

  Try it:
    curl -s http://127.0.0.1:$PORT/v1/classify -H 'Content-Type: application/json' \\$key_hint
      -d '{"sepal_length": 7.7, "sepal_width": 2.6, "petal_length": 6.9, "petal_width": 2.3}'

  Ctrl-C stops everything started here.
MSG

# Stay in the foreground with supervisord, which prints each exit and restart.
rc=0
wait "$sup" || rc=$?
sup=""
die "supervisord exited with status $rc; see $RUN_DIR/supervisord.log"
