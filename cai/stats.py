"""Interval estimates and paired tests for the judge's rates, so every figure carries its
uncertainty and a claim that one checkpoint beats another is tested on the same prompts.

* Wilson score interval for a binomial rate (Wilson 1927): with p̂ = k/n and z = 1.96,

      centre = (p̂ + z²/2n) / (1 + z²/n),
      half   = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/4n²);

  unlike p̂ ± z·sqrt(p̂(1 − p̂)/n) it stays inside [0, 1] and is not zero-width at 0 or 1.
* McNemar's exact test for paired binary outcomes: of the prompts where the two checkpoints
  disagree, b are won by the first and c by the second; under "no difference" b ~ Bin(b + c,
  1/2), and the two-sided p-value is the binomial test's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from scipy import stats as scipy_stats

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval (lo, hi) for k successes in n trials; (nan, nan) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(flags: Sequence[bool]) -> dict[str, Any]:
    """A rate, its 95% Wilson interval and its n, as summary.json stores them."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else math.nan, "ci95": [lo, hi], "n": n}


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test on paired outcomes (same prompts, same order): the rates, their
    difference (second − first), the discordant counts and the two-sided p-value."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes of different lengths: {len(first)} and {len(second)}")
    b = sum(bool(x) and not bool(y) for x, y in zip(first, second))  # first only
    c = sum(bool(y) and not bool(x) for x, y in zip(first, second))  # second only
    n = len(first)
    p = scipy_stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    return {
        "n": n,
        "first_rate": sum(map(bool, first)) / n if n else math.nan,
        "second_rate": sum(map(bool, second)) / n if n else math.nan,
        "difference": (c - b) / n if n else math.nan,
        "first_only": b,
        "second_only": c,
        "p_value": float(p),
    }
