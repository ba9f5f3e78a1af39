#!/usr/bin/env bash
# Lint the container definitions: hadolint on both Dockerfiles, and `docker-compose config` when available.
set -e
cd "$(dirname "$0")/.."

HADOLINT="${HADOLINT:-}"
if [ -z "$HADOLINT" ]; then
    if [ -x .venv/bin/hadolint ]; then HADOLINT=.venv/bin/hadolint; else HADOLINT=hadolint; fi
fi
"$HADOLINT" --failure-threshold error Dockerfile.api Dockerfile.worker
echo "lint-containers: hadolint OK (Dockerfile.api, Dockerfile.worker)"

if command -v docker-compose >/dev/null 2>&1; then
    # The compose file has no default for its secrets; any value checks the rest of it.
    export REDIS_PASSWORD=lint API_KEYS=lint FLOWER_BASIC_AUTH=lint:lint
    docker-compose -f docker-compose.yml config -q
    docker-compose -f docker-compose.yml --profile load --profile observability --profile tracing config -q
    echo "lint-containers: docker-compose config OK ($(docker-compose version --short 2>/dev/null || echo unknown version))"
else
    echo "lint-containers: docker-compose not on PATH; skipping the compose check (apt-get install docker-compose)"
fi
