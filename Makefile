# The two commands a newcomer needs are `make up` and `make test`; the rest are conveniences.
.PHONY: up test env lock train reload rollback promote-challenger worker api api-gunicorn flower mlflow-ui bench side-by-side load soak drill-hosts clean help
# scripts/lib.sh is bash; make's default /bin/sh is dash on Debian.
SHELL := /bin/bash
# Each target installs what it needs first (ensure_venv, scripts/lib.sh); `make <target> INSTALL_ONLY=1` stops
# there (install_only), which is how tests/integration/test_make_targets.py checks every target on a fresh copy.

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up:  ## run Redis (if needed), a champion (trained if none), WORKERS workers and the API; restart what exits
	@. scripts/lib.sh && ensure_venv api,worker,training,local && install_only && exec scripts/up.sh

test:  ## install test dependencies, run ruff, mypy, container checks and pytest
	@scripts/test.sh

env:  ## write .env for docker compose: a random Redis password, API key and Flower login (never overwrites)
	@. scripts/lib.sh && install_only && exec scripts/make-env.sh

lock:  ## re-pin uv.lock after editing pyproject.toml's dependencies (ARGS=--upgrade to take every upgrade)
	@. scripts/lib.sh && uv=$$(find_uv) && install_only && "$$uv" lock $(ARGS)

train:  ## train, register and promote if at least as good (ARGS=--force to always promote)
	@. scripts/lib.sh && ensure_venv api,worker,training && install_only && .venv/bin/python -m training $(ARGS)

reload:  ## make every worker check the champion alias now and swap in a new version (they also poll)
	@. scripts/lib.sh && ensure_venv api,worker,training && install_only && .venv/bin/python -m shared.reload $(ARGS)

rollback:  ## move the champion alias back to the version it replaced; the workers follow
	@. scripts/lib.sh && ensure_venv api,worker,training && install_only && .venv/bin/python -m training.rollback $(ARGS)

promote-challenger:  ## move the champion alias to the challenger once shadowing shows they agree (ARGS=--min-rows N)
	@. scripts/lib.sh && ensure_venv api,worker,training && install_only && .venv/bin/python -m training.promote_challenger $(ARGS)

# The worker needs the training extra's full MLflow for the default sqlite store (mlflow-skinny reads only a server).
worker:  ## run one worker in the foreground
	@. scripts/lib.sh && ensure_venv worker,training && install_only && \
		exec .venv/bin/celery -A worker worker --without-gossip --without-mingle

api:  ## run the API in the foreground (granian, as make up and the container do)
	@. scripts/lib.sh && ensure_venv api && install_only && exec .venv/bin/python -m api

api-gunicorn:  ## run the API with gunicorn instead (the seed's server; slower here, see docs/performance.md)
	@. scripts/lib.sh && ensure_venv api && install_only && exec .venv/bin/gunicorn -c gunicorn.conf.py

flower:  ## Flower on http://127.0.0.1:5555 behind FLOWER_BASIC_AUTH=user:password: workers, queues, tasks (FLOWER_PORT)
	@. scripts/lib.sh && ensure_venv flower && install_only && { [ -n "$${FLOWER_BASIC_AUTH:-}" ] || \
		die "Flower shows every task's arguments and results: set FLOWER_BASIC_AUTH=user:password"; } && \
		CELERY_BROKER_URL="$${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}" \
		exec .venv/bin/celery flower --address=127.0.0.1 --port="$${FLOWER_PORT:-5555}"

mlflow-ui:  ## the MLflow UI on http://localhost:8081: runs, confusion matrices, the registry and its aliases
	@. scripts/lib.sh && ensure_venv api,worker,training && install_only && exec .venv/bin/mlflow ui \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlruns.db}" --port "$${MLFLOW_PORT:-8081}"

# The seed's design (load/seed_baseline.py) needs the api, worker and training extras; the plot, load's matplotlib.
bench:  ## benchmark a running stack (make up first): sync, async, batch; report and plot in load/reports/
	@. scripts/lib.sh && ensure_venv api,worker,training,load && need_tool wrk wrk && install_only && \
		exec .venv/bin/python load/bench.py $(ARGS)

side-by-side:  ## load a running stack and the seed's in-process design (load/seed_baseline.py) in turn, with wrk
	@scripts/side-by-side.sh $(ARGS)

load:  ## locust load test of a running stack (USERS, DURATION, HOST); writes load/reports/
	@scripts/load.sh

soak:  ## long load test of a running stack (50 users, 10 min): fails on any failure or RSS growth > 10%
	@scripts/soak.sh

# Root only: the hosts are network namespaces (iproute2). load/drill_hosts.py trains its own champion in a temp dir.
drill-hosts:  ## five hosts in network namespaces: pull a cable, kill an API host, a bad link, drains (ARGS=--short)
	@. scripts/lib.sh && ensure_venv api,worker,training && need_tool ip iproute2 && install_only && \
		ensure_redis_server && exec .venv/bin/python -m load.drill_hosts $(ARGS)

clean:  ## remove the virtualenvs (.venv, uv in .tools), local MLflow store and run state
	@. scripts/lib.sh && install_only && rm -rf .venv .tools .run mlruns mlruns.db load/reports .pytest_cache .mypy_cache .ruff_cache
