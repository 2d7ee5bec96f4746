"""Lesson 06, exercise: estimate a percentile from a histogram's cumulative buckets, as Prometheus does.

    histogram_quantile(0.99, [(0.1, 90), (0.25, 98), (0.5, 100), (math.inf, 100)])   # 0.375

tests/test_monitoring.py checks it against a real Prometheus's `histogram_quantile` on the same buckets.
"""

import math


def histogram_quantile(q, buckets):
    """The q-quantile (0 <= q <= 1) of a histogram given as [(upper bound, cumulative count)], sorted by
    bound and ending with (math.inf, total). nan when the histogram is empty."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0  # the bucket's lower bound, and how many requests fall under it
    for upper, count in buckets:
        if count >= rank:
            if upper == math.inf or count == below:
                # No upper bound to interpolate to, the largest finite bound is all we know (or, for q=0, an
                # empty first bucket: nothing to interpolate in).
                return lower
            # Assume the bucket's requests are spread evenly between its bounds.
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower
