"""Observe many values into one prometheus-client histogram child at once, past ``Histogram.observe``.

Written against prometheus-client 0.2x (pinned below 1 in pyproject.toml). ``observe`` adds each value to the
sum and one bucket, and in multiprocess mode each addition is a locked write to a memory-mapped file, a visible
share of a sync request's API CPU (docs/design.md has the figure and the command). The API
(api/observability/metrics.py) queues its requests' durations and its edge batches' sizes and, once a second per
process, adds each bucket's count and the sum in one write each, through the child's
``_upper_bounds``, ``_buckets`` and ``_sum``. The buckets are cumulative only when exported, so a value counts
in the first bucket whose bound it does not exceed, as ``observe`` counts it.

tests/unit/api/observability/test_observe_many.py pins those attributes and checks the exported samples
equal those of one ``observe`` per value. FAST_PATHS=0 (``fast=False``) calls ``observe`` per value instead.
"""

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any


def observe_many(child: Any, values: Sequence[float], fast: bool = True) -> None:
    """Add ``values`` to histogram ``child`` (a ``Histogram.labels(...)`` result) as one observe each would."""
    bounds = getattr(child, "_upper_bounds", None)
    if not fast or bounds is None or not hasattr(child, "_buckets") or not hasattr(child, "_sum"):
        for value in values:
            child.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value; the last bound is +Inf
    for bucket, count in zip(child._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    child._sum.inc(sum(values))
