"""load/drill_hosts.py's pure parts: what an outcome counts as, the tally, the summary line, the bad-link checks."""

import json

import pytest

from load.drill_hosts import (
    ASYNC,
    FULL,
    ROWS_TASK,
    SHORT,
    SYNC,
    Outcome,
    Summary,
    Verdict,
    judge_bad_link,
    parse_answer,
    parse_args,
    parse_task_counts,
    percentile,
    silent_seconds,
    tally,
    verdict,
)

TASK = "0b6a3f52-0d6b-4cb0-9bd4-5c1f0c1b0e11"
KILLED = {"api1": 100.0}  # api1 was dead at t=100


def answer(data: object, status: int = 200) -> bytes:
    """An envelope as api/web/envelope.py writes it."""
    return json.dumps({"message": "success" if status < 400 else "failed", "data": data, "error": None,
                       "version": "0.0.0"}).encode()


def outcome(kind: str = SYNC, status: int | None = 200, host: str = "api2", started: float = 50.0,
            task_id: str | None = TASK, poll_url: str | None = None, error: str | None = None,
            phase: str = "cut") -> Outcome:
    return Outcome(kind, host, phase, started, started + 0.01, status, error, task_id, poll_url)


def test_a_sync_200_is_answered_and_an_async_202_accepted() -> None:
    assert verdict(outcome(), KILLED) is Verdict.ANSWERED
    assert verdict(outcome(ASYNC, 202, poll_url=f"/v1/tasks/{TASK}"), KILLED) is Verdict.ACCEPTED


def test_a_sync_504_is_accepted_only_with_a_poll_url() -> None:
    assert verdict(outcome(status=504, poll_url=f"/v1/tasks/{TASK}"), KILLED) is Verdict.ACCEPTED
    assert verdict(outcome(status=504), KILLED) is Verdict.FAILED
    assert verdict(outcome(ASYNC, 504, poll_url=f"/v1/tasks/{TASK}"), KILLED) is Verdict.FAILED


@pytest.mark.parametrize("status", [400, 401, 500, 503])
def test_any_other_answer_fails(status: int) -> None:
    assert verdict(outcome(status=status, task_id=None), KILLED) is Verdict.FAILED
    assert verdict(outcome(ASYNC, status, task_id=None), KILLED) is Verdict.FAILED


def test_a_202_without_a_task_id_or_poll_url_fails() -> None:
    assert verdict(outcome(ASYNC, 202, task_id=None, poll_url="/v1/tasks/x"), KILLED) is Verdict.FAILED
    assert verdict(outcome(ASYNC, 202), KILLED) is Verdict.FAILED


def test_no_answer_from_the_killed_host_is_in_flight_only_if_sent_before_it_died() -> None:
    before = outcome(status=None, task_id=None, host="api1", started=99.9, error="RemoteDisconnected")
    after = outcome(status=None, task_id=None, host="api1", started=100.1, error="ConnectionResetError")
    assert verdict(before, KILLED) is Verdict.IN_FLIGHT_ON_DEAD_HOST
    assert verdict(after, KILLED) is Verdict.FAILED


def test_no_answer_from_a_host_nobody_killed_fails() -> None:
    assert verdict(outcome(status=None, task_id=None, error="timeout"), KILLED) is Verdict.FAILED
    assert verdict(outcome(status=None, task_id=None, host="", error="no API host is up"), KILLED) is Verdict.FAILED


def test_an_answer_from_the_killed_host_before_it_died_counts_as_any_answer() -> None:
    assert verdict(outcome(host="api1", started=99.0), KILLED) is Verdict.ANSWERED


def test_parse_answer_reads_the_task_id_and_the_poll_url_of_each_kind() -> None:
    sync = answer({"pred_label": "Iris-virginica", "task_id": TASK})
    assert parse_answer(SYNC, 200, sync) == (TASK, None)
    accepted = answer({"task_id": TASK, "status": "PENDING", "status_url": f"/v1/tasks/{TASK}"}, 202)
    assert parse_answer(ASYNC, 202, accepted) == (TASK, f"/v1/tasks/{TASK}")
    timed_out = json.dumps({"message": "failed", "data": {"task_id": TASK, "status": "PENDING",
                                                          "status_url": f"/v1/tasks/{TASK}"},
                            "error": {"raised": "Timeout", "code": "504"}}).encode()
    assert parse_answer(SYNC, 504, timed_out) == (TASK, f"/v1/tasks/{TASK}")


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"data": null}', b'{"data": {"task_id": 7}}',
                                  b'{"message": "failed"}'])
def test_parse_answer_finds_nothing_in_what_is_not_an_envelope(body: bytes) -> None:
    assert parse_answer(SYNC, 503, body) == (None, None)


def test_tally_counts_each_verdict_and_the_accepted_tasks_that_never_succeeded() -> None:
    ids = [f"{n:08d}-0000-0000-0000-000000000000" for n in range(4)]
    outcomes = [
        outcome(task_id=ids[0]),  # answered
        outcome(ASYNC, 202, task_id=ids[1], poll_url=f"/v1/tasks/{ids[1]}"),  # accepted, SUCCESS
        outcome(status=504, task_id=ids[2], poll_url=f"/v1/tasks/{ids[2]}"),  # accepted, still PENDING
        outcome(ASYNC, 202, task_id=ids[3], poll_url=f"/v1/tasks/{ids[3]}"),  # accepted, FAILURE
        outcome(status=None, task_id=None, host="api1", started=99.0, error="reset"),  # in flight
        outcome(status=503, task_id=None),  # failed
    ]
    final = {ids[1]: "SUCCESS", ids[2]: "PENDING", ids[3]: "FAILURE"}
    counted = tally(outcomes, KILLED, final)
    assert (counted.requests, counted.answered, counted.accepted, counted.in_flight, counted.failed,
            counted.lost) == (6, 1, 3, 1, 1, 2)
    assert counted.lost_ids == (ids[2], ids[3])


def test_an_accepted_task_never_polled_is_lost() -> None:
    counted = tally([outcome(ASYNC, 202, poll_url=f"/v1/tasks/{TASK}")], {}, {})
    assert counted.lost == 1


def test_the_summary_line_reads_back_as_written() -> None:
    summary = Summary(5, 60_123, 0, 1, 4.25, 38.0, 24.46)
    line = summary.line()
    assert line == "hosts=5 requests=60123 failed=0 lost=1 rejoin_s=4.2 drain_1_s=38.0 drain_2_s=24.5"
    assert Summary.parse(line) == Summary(5, 60_123, 0, 1, 4.2, 38.0, 24.5)


def test_what_was_not_measured_reads_none() -> None:
    line = Summary(5, 10, 2, 0, None, None, 3.0).line()
    assert "rejoin_s=none drain_1_s=none drain_2_s=3.0" in line
    assert Summary.parse(line).rejoin_s is None


@pytest.mark.parametrize("line", ["", "drill-hosts +1.0s hosts up", "hosts=5 requests=1 failed=0 lost=0",
                                  "hosts=5 requests=1 failed=0 lost=0 rejoin_s=1 drain_1_s=2 drain_2_s=3 extra=4",
                                  "hosts=5 requests=1 failed=0 lost=0 rejoin_s=1 drain_1_s=2 drain_2_s=3 trailing"])
def test_anything_else_is_not_a_summary_line(line: str) -> None:
    with pytest.raises(ValueError):
        Summary.parse(line)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.9), percentile(values, 0.99)) == (50.0, 90.0, 99.0)
    assert percentile([], 0.5) == 0.0
    assert percentile([7.0], 0.99) == 7.0


def test_silent_seconds_names_the_seconds_in_which_nothing_ended() -> None:
    ended = [10.1, 10.9, 11.5, 13.2, 14.99, 15.0, 9.0]
    assert silent_seconds(ended, start=10.0, end=15.0) == [2]
    assert silent_seconds([], start=0.0, end=3.0) == [0, 1, 2]


PAGE = """\
# HELP iris_task_duration_seconds Time to run a task, by task name.
# TYPE iris_task_duration_seconds histogram
iris_task_duration_seconds_bucket{le="0.0005",task="iris.classify_rows"} 10.0
iris_task_duration_seconds_count{task="iris.classify_rows"} 42.0
iris_task_duration_seconds_sum{task="iris.classify_rows"} 0.05
iris_task_duration_seconds_count{task="iris.classify"} 7.0
iris_predictions_total{label="Iris-virginica"} 49.0
"""


def test_the_task_counts_are_read_from_the_workers_metrics_page() -> None:
    assert parse_task_counts(PAGE) == {"iris.classify_rows": 42.0, "iris.classify": 7.0}
    assert parse_task_counts("") == {}


def sync_answers(latencies: list[float], start: float = 0.0) -> list[Outcome]:
    """Sync 200s, one every 0.1 s from ``start``, with these latencies."""
    return [Outcome(SYNC, "api2", "bad-link", start + n * 0.1 - latency, start + n * 0.1, 200, None, TASK)
            for n, latency in enumerate(latencies)]


def test_a_bad_link_that_answered_every_second_with_the_delay_passes() -> None:
    outcomes = sync_answers([0.003] * 45 + [0.25] * 5)
    assert judge_bad_link(outcomes, 0.0, 5.0, {ROWS_TASK: 6.0, "iris.classify": 4.0}, 0.41) == []


def test_a_second_without_answers_is_a_wedge() -> None:
    outcomes = [o for o in sync_answers([0.25] * 50) if not 2.0 <= o.ended < 3.0]
    problems = judge_bad_link(outcomes, 0.0, 5.0, {ROWS_TASK: 5.0}, 0.41)
    assert len(problems) == 1 and "second(s) [2]" in problems[0] and "wedge" in problems[0]


def test_batches_over_the_bad_link_that_no_slow_answer_shows_fail() -> None:
    problems = judge_bad_link(sync_answers([0.003] * 49 + [0.25]), 0.0, 5.0, {ROWS_TASK: 10.0}, 0.41)
    assert len(problems) == 1 and "only 1 sync answers" in problems[0]


def test_a_scrape_faster_than_two_round_trips_means_the_link_was_not_delayed() -> None:
    problems = judge_bad_link(sync_answers([0.003] * 50), 0.0, 5.0, {ROWS_TASK: 0.0}, 0.005)
    assert len(problems) == 1 and "not delayed" in problems[0]


def test_without_batches_or_counts_or_a_timed_scrape_only_the_wedge_is_judged() -> None:
    assert judge_bad_link(sync_answers([0.003] * 50), 0.0, 5.0, {"iris.classify": 3.0}, 0.41) == []
    assert judge_bad_link(sync_answers([0.003] * 50), 0.0, 5.0, None, None) == []


def test_the_short_drill_shortens_the_phases_and_the_backlog() -> None:
    assert parse_args([]).plan == FULL
    assert (FULL.cut_s, FULL.netem_s, FULL.backlog, FULL.visibility_timeout_s) == (30, 60, 20_000, 120)
    short = parse_args(["--short"]).plan
    assert short == SHORT and (short.cut_s, short.netem_s, short.backlog) == (10, 15, 2_000)


def test_seconds_scale_stretches_the_timed_phases_only() -> None:
    plan = parse_args(["--short", "--seconds-scale", "2", "--backlog", "500"]).plan
    assert (plan.warmup_s, plan.cut_s, plan.after_kill_s, plan.netem_s) == (10, 20, 16, 30)
    assert (plan.backlog, plan.visibility_timeout_s) == (500, SHORT.visibility_timeout_s)


@pytest.mark.parametrize("argv", [["--seconds-scale", "0"], ["--rate", "-1"], ["--threads", "0"], ["--backlog", "0"]])
def test_nonsense_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


