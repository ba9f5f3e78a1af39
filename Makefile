# The two commands a newcomer needs are `make up` and `make test`; the rest are conveniences.
.PHONY: up test train worker api api-granian bench load clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

up:  ## run Redis (if needed), train a champion (if none), the worker and the API, in the foreground
	@scripts/up.sh

test:  ## install test dependencies, run ruff, mypy, container checks and pytest
	@scripts/test.sh

train:  ## train, register and promote if at least as good (ARGS=--force to always promote)
	@. scripts/lib.sh && ensure_venv api,worker,training && .venv/bin/python -m training $(ARGS)

worker:  ## run one worker in the foreground
	.venv/bin/celery -A worker worker --without-gossip --without-mingle

api:  ## run the API in the foreground with gunicorn
	.venv/bin/gunicorn -c gunicorn.conf.py

api-granian:  ## run the API with granian instead (measured faster; see README, Performance)
	.venv/bin/python -m api

bench:  ## compare a running stack (make up first) with the seed in-process design, using wrk
	@scripts/bench.sh $(ARGS)

load:  ## locust load test of a running stack (USERS, DURATION, HOST); writes load/reports/
	@scripts/load.sh

clean:  ## remove the virtualenv, local MLflow store and run state
	rm -rf .venv .run mlruns mlruns.db load/reports .pytest_cache .mypy_cache .ruff_cache
