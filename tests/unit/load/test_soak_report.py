"""Judging a soak from its RSS samples and Locust totals: growth per role and process, restarts, verdict."""

import json
from pathlib import Path

import pytest

from load.soak_report import (
    Growth,
    Sample,
    parse_duration,
    process_changes,
    process_growth,
    report,
    role_growth,
    verdict,
)


def samples(rss: dict[tuple[str, int], list[float | None]], every: float = 10.0) -> list[Sample]:
    """Build samples taken every ``every`` seconds; None means the process was not there at that sample."""
    return [Sample(i * every, 1000.0 + i * every, role, pid, value)
            for (role, pid), values in rss.items() for i, value in enumerate(values) if value is not None]


def test_durations_read_like_locusts_run_time() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "2m", "1h30m", "1m30s", "0.5m")] == [90, 90, 120, 5400, 90, 30]


@pytest.mark.parametrize("text", ["", "ten", "2 m", "5d", "m"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_role_growth_sums_the_roles_processes_and_ignores_the_warm_up() -> None:
    data = samples({("api", 1): [10, 40, 50, 50, 50, 51, 51, 51], ("api", 2): [10, 40, 50, 50, 50, 51, 51, 51],
                    ("worker", 3): [300, 330, 330, 330, 330, 330, 330, 330]})
    api, worker = role_growth(data, warmup=20, window=3)
    assert (api.name, api.start, api.end) == ("api", 100, 102)
    assert (worker.name, worker.start, worker.end) == ("worker", 330, 330)
    assert api.percent == pytest.approx(2.0)
    assert str(api) == "api 100→102 MB (+2.0%)"


def test_a_single_peak_sample_does_not_move_the_median() -> None:
    data = samples({("worker", 3): [300, 300, 300, 300, 300, 300, 300, 400, 300]})
    (worker,) = role_growth(data, warmup=0, window=3)
    assert worker.end == 300


def test_each_process_is_judged_on_its_own_so_a_leak_cannot_hide_in_a_total() -> None:
    data = samples({("api", 1): [100, 100, 100, 100, 100, 100], ("api", 2): [50, 50, 50, 60, 60, 60]})
    by_name = {g.name: g for g in process_growth(data, warmup=0, window=3)}
    assert by_name["api 2"].percent == pytest.approx(20.0)
    (api,) = role_growth(data, warmup=0, window=3)
    assert api.percent < 10


def test_a_process_missing_from_either_window_is_not_judged_alone() -> None:
    data = samples({("worker", 3): [300, 300, 300, None, None, None], ("worker", 4): [None, None, None, 50, 50, 50]})
    assert process_growth(data, warmup=0, window=3) == []


def test_a_respawned_process_is_reported_as_one_ending_and_one_starting() -> None:
    data = samples({("api", 1): [60, 60, None, None], ("api", 5): [None, None, 40, 60], ("worker", 3): [300] * 4})
    assert process_changes(data) == ["api pid 1 ended between 10 s and 20 s",
                                     "api pid 5 started between 10 s and 20 s"]


def test_a_run_no_longer_than_its_warm_up_cannot_be_judged() -> None:
    data = samples({("api", 1): [60, 60, 60]})
    with pytest.raises(ValueError, match="warm-up"):
        role_growth(data, warmup=20)


def test_no_failures_and_flat_rss_pass() -> None:
    line, ok = verdict(245_000, 0, [Growth("api", 92, 93), Growth("worker", 160, 161)], [], [], limit=10)
    assert ok
    assert line == "soak: 0 failures in 245,000 requests; RSS api 92→93 MB (+1.1%), worker 160→161 MB (+0.6%): flat"


def test_any_failure_fails_the_soak() -> None:
    line, ok = verdict(1000, 1, [Growth("api", 92, 93)], [], [], limit=10)
    assert not ok
    assert line.startswith("soak: 1 failures in 1,000 requests")


def test_a_run_without_requests_fails() -> None:
    assert not verdict(0, 0, [Growth("api", 92, 93)], [], [], limit=10)[1]


def test_growth_past_the_limit_fails_and_names_who_grew() -> None:
    line, ok = verdict(1000, 0, [Growth("api", 100, 105)], [Growth("api 7", 50, 56)], [], limit=10)
    assert not ok
    assert line.endswith("grew more than 10%: api 7")


def test_restarts_are_counted_in_the_verdict() -> None:
    line, ok = verdict(1000, 0, [Growth("api", 100, 100)], [], ["api pid 1 ended", "api pid 5 started"], limit=10)
    assert ok
    assert line.endswith("flat (2 process starts/ends, listed above)")


def test_report_reads_a_soak_directory(tmp_path: Path) -> None:
    rows = ["elapsed_s,time,role,pid,rss_mb"] + [f"{t},{1000 + t},{role},{pid},{mb}" for t in (0, 10, 20, 30, 40)
                                                for role, pid, mb in (("api", 1, 60), ("worker", 2, 300 + 2 * t))]
    (tmp_path / "rss.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "locust-20250101-000000_stats.csv").write_text("Type,Name,Request Count,Failure Count\n")
    (tmp_path / "locust-20250101-000000_summary.json").write_text(json.dumps({"requests": 500, "failures": 0}))
    lines, ok = report(tmp_path, warmup=10, limit=10, window=2)
    assert not ok
    assert lines[-1] == ("soak: 0 failures in 500 requests; RSS api 60→60 MB (+0.0%), worker 330→370 MB (+12.1%): "
                         "grew more than 10%: worker, worker 2")
