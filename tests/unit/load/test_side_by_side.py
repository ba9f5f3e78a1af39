"""load/side_by_side.py's pure parts: wrk's output, the run order, the medians and the side-by-side line."""

from pathlib import Path

import pytest

from load.side_by_side import (
    Run,
    api_key,
    classify_base,
    falls_short,
    lua_script,
    medians,
    parse_args,
    parse_connections,
    parse_wrk,
    schedule,
    side_by_side_line,
    to_ms,
)

# wrk 4.1.0's output for `wrk -t2 -c32 -d10s --latency -s post.lua URL`, with every optional line present.
WRK_WITH_ERRORS = """\
Running 10s test @ http://127.0.0.1:9191/v1/classify
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.61ms    3.02ms  41.97ms   80.11%
    Req/Sec     2.13k   201.45     2.61k    71.00%
  Latency Distribution
     50%    7.12ms
     75%    8.90ms
     90%   11.02ms
     99%   16.90ms
  42486 requests in 10.01s, 17.22MB read
  Socket errors: connect 0, read 2, write 1, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:   4244.17
Transfer/sec:      1.72MB
"""

WRK_CLEAN = """\
Running 10s test @ http://127.0.0.1:40123/v1/classify
  1 threads and 1 connections
  Latency Distribution
     50%  812.00us
     75%  900.00us
     90%    1.01ms
     99%    1.70s
  9431 requests in 10.00s, 3.10MB read
Requests/sec:    943.02
Transfer/sec:    317.35KB
"""


def test_parse_wrk_reads_rate_percentiles_and_counts_socket_errors_with_non_2xx_answers() -> None:
    assert parse_wrk(WRK_WITH_ERRORS) == Run(rps=4244.17, p50_ms=7.12, p99_ms=16.90, errors=2 + 1 + 3 + 5)


def test_parse_wrk_counts_no_errors_when_wrk_prints_no_error_lines() -> None:
    run = parse_wrk(WRK_CLEAN)
    assert (run.rps, run.errors) == (943.02, 0)
    assert run.p50_ms == pytest.approx(0.812)
    assert run.p99_ms == pytest.approx(1700.0)


def test_parse_wrk_refuses_output_without_a_latency_distribution() -> None:
    without_latency = "\n".join(line for line in WRK_CLEAN.splitlines() if "%" not in line)
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk(without_latency)


@pytest.mark.parametrize(
    ("text", "ms"), [("512.00us", 0.512), ("1.25ms", 1.25), ("1.02s", 1020.0), ("2.00m", 120000.0)]
)
def test_to_ms_converts_each_of_wrks_units(text: str, ms: float) -> None:
    assert to_ms(text) == pytest.approx(ms)


def test_to_ms_refuses_an_unknown_unit() -> None:
    with pytest.raises(ValueError, match="not a wrk duration"):
        to_ms("3h")


def test_side_by_side_line_gives_both_medians_the_ratio_and_the_p99s() -> None:
    line = side_by_side_line(32, 2, Run(4242.4, 7.1, 16.54, 0), Run(2170.0, 15.4, 31.0, 1))
    assert line == (
        "side-by-side connections=32 ratio=1.96 ours_rps=4242 seed_rps=2170 ours_p99_ms=16.5 seed_p99_ms=31.0 "
        "ours_errors=0 seed_errors=1 rounds=2"
    )


def test_side_by_side_line_adds_mlflow_serve_only_when_it_was_loaded() -> None:
    ours, seed = Run(3000, 8, 16, 0), Run(1500, 15, 30, 0)
    assert "mlflow" not in side_by_side_line(8, 1, ours, seed)
    assert side_by_side_line(8, 1, ours, seed, Run(600, 50, 90, 0)).endswith(
        "mlflow_serve_rps=600 vs_mlflow_serve=5.00 rounds=1"
    )


def test_medians_take_each_figure_median_and_sum_the_errors() -> None:
    runs = [Run(100, 1.0, 9.0, 0), Run(300, 3.0, 5.0, 2), Run(200, 2.0, 7.0, 1)]
    assert medians(runs) == Run(200, 2.0, 7.0, 3)


def test_schedule_runs_every_server_each_round_and_alternates_which_goes_first() -> None:
    assert schedule(["ours", "seed"], 3) == [
        (1, "ours"), (1, "seed"), (2, "seed"), (2, "ours"), (3, "ours"), (3, "seed"),
    ]  # fmt: skip


def test_parse_connections_accepts_commas_spaces_or_both_and_drops_repeats() -> None:
    assert parse_connections(["1,8", "32", "8"]) == [1, 8, 32]


@pytest.mark.parametrize("values", [["0"], [","], ["-4"]])
def test_parse_connections_refuses_counts_below_one_or_none(values: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_connections(values)


def test_falls_short_on_any_error_or_a_missed_bound_at_any_count() -> None:
    good, seed = Run(2000, 5, 15, 0), Run(1000, 10, 30, 0)
    assert not falls_short([(good, seed)], min_ratio=1.9, max_p99_ms=20)
    assert falls_short([(good, seed), (Run(2000, 5, 15, 1), seed)], None, None)
    assert falls_short([(good, seed)], min_ratio=2.1, max_p99_ms=None)
    assert falls_short([(good, seed)], min_ratio=None, max_p99_ms=10)


def test_lua_script_posts_the_json_body_with_every_header() -> None:
    script = lua_script({"sepal_length": 7.7}, {"X-API-Key": "k" * 24})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = [==[{"sepal_length": 7.7}]==]' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert f'wrk.headers["X-API-Key"] = "{"k" * 24}"' in script


def test_api_key_prefers_the_flag_then_api_key_then_the_stacks_first_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("\nfrom-file-1,from-file-2\n")
    assert api_key("flag", {"API_KEY": "locust", "API_KEYS": "a,b"}) == "flag"
    assert api_key(None, {"API_KEY": "locust", "API_KEYS": "a,b"}) == "locust"
    assert api_key(None, {"API_KEYS": " a , b"}) == "a"
    assert api_key(None, {"API_KEYS_FILE": str(keys)}) == "from-file-1"
    assert api_key(None, {}) is None


def test_ours_accepts_a_base_url_or_the_old_targets_classify_url() -> None:
    assert classify_base("http://127.0.0.1:9191/") == "http://127.0.0.1:9191"
    assert parse_args(["--target", "http://127.0.0.1:9303/v1/classify"]).ours == "http://127.0.0.1:9303/v1/classify"
    assert classify_base("http://127.0.0.1:9303/v1/classify") == "http://127.0.0.1:9303"


def test_parse_args_defaults_to_one_eight_and_thirty_two_connections_against_port_9191() -> None:
    args = parse_args([])
    assert (args.connections, args.rounds, args.ours) == ([1, 8, 32], 2, "http://127.0.0.1:9191")
