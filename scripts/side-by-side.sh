#!/usr/bin/env bash
# Load the running stack and the seed's in-process design (load/seed_baseline.py) in alternating wrk rounds.
#   make up            # in another terminal
#   make side-by-side ARGS="--connections 32 --rounds 3"
# load/side_by_side.py --help lists the options; its last lines, one per connection count, are the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# The seed's design needs Flask and gunicorn (api), MLflow's sqlite store (training) and skops (worker).
ensure_venv api,worker,training
need_tool wrk wrk
install_only
say "side by side with the seed's design (about a minute per connection count; wrk runs in rounds)"
exec .venv/bin/python -m load.side_by_side --python .venv/bin/python "$@"
