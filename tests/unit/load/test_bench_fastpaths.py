"""The fast-path benchmark: alternating rounds, medians per operation, one line per path."""

from load.bench_fastpaths import compare, line


def test_rounds_alternate_which_path_runs_first_and_report_medians_per_operation() -> None:
    calls: list[tuple[str, int]] = []
    fast_rounds = iter([(0.5, 0.4), (0.001, 0.001), (0.003, 0.002), (0.002, 0.001)])  # warm-up first
    slow_rounds = iter([(0.5, 0.4), (0.010, 0.005), (0.030, 0.020), (0.020, 0.010)])

    def fast(n: int) -> tuple[float, float]:
        calls.append(("fast", n))
        return next(fast_rounds)

    def fallback(n: int) -> tuple[float, float]:
        calls.append(("fallback", n))
        return next(slow_rounds)

    got = compare(fast, fallback, rounds=3, n=10)
    assert [name for name, _ in calls] == ["fast", "fallback", "fast", "fallback", "fallback", "fast", "fast",
                                          "fallback"]
    assert [n for _, n in calls] == [1, 1, 10, 10, 10, 10, 10, 10]
    assert got == {"fast": (200.0, 100.0), "fallback": (2000.0, 1000.0)}


def test_a_line_gives_both_paths_and_the_saving() -> None:
    text = line("store_many", {"fast": (160.4, 120.0), "fallback": (1880.0, 900.0)})
    assert text == "store_many: fast 160 µs, fallback 1,880 µs per operation (saves 1,720 µs); CPU 120 vs 900 µs"
