"""Several subjects (runs of one eval) side by side: pass rates with confidence intervals, per-item
differences, and a paired significance test for each subject against the first (the baseline).

Items are paired by `datasource_item_id`; only items every compared run graded count. The tests:

- McNemar's exact test on the discordant pairs (b: baseline passed and the subject failed, c: the
  reverse): two-sided binomial p-value of min(b, c) in b + c draws at 1/2.
- A paired bootstrap of the pass-rate difference (resampling items, a fixed seed): its 95% interval.
  A difference is called significant when p < alpha and the interval excludes 0.
- Each pass rate carries a Wilson 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Subject:
    name: str
    passed: dict[int, bool]  # datasource_item_id -> passed


@dataclass(frozen=True, slots=True)
class SubjectSummary:
    name: str
    n: int
    passed: int
    pass_rate: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class PairedTest:
    baseline: str
    subject: str
    n: int
    difference: float  # subject pass rate - baseline pass rate
    low: float
    high: float
    baseline_only: int  # b: items the baseline passed and the subject failed
    subject_only: int  # c
    p_value: float
    significant: bool


@dataclass(frozen=True, slots=True)
class Comparison:
    subjects: list[SubjectSummary]
    tests: list[PairedTest]
    items: list[int]
    matrix: list[list[bool]]  # [subject][item]


def wilson_interval(passed: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = passed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: P(X <= min(b, c)) * 2 for X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = float(Fraction(sum(math.comb(n, i) for i in range(k + 1)), 1 << n))  # exact for any n
    return min(1.0, 2 * tail)


def paired_bootstrap(
    baseline: np.typing.NDArray[np.bool_], subject: np.typing.NDArray[np.bool_], *, rounds: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of mean(subject) - mean(baseline), resampling items with replacement."""
    n = len(baseline)
    if n == 0:
        return 0.0, 0.0
    diffs = subject.astype(np.float64) - baseline.astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(rounds, n))
    means = diffs[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compare(subjects: list[Subject], *, alpha: float = 0.05) -> Comparison:
    if not subjects:
        return Comparison([], [], [], [])
    shared = sorted(set.intersection(*(set(s.passed) for s in subjects)))
    matrix = [[s.passed[i] for i in shared] for s in subjects]
    summaries = []
    for s, row in zip(subjects, matrix, strict=True):
        k, n = sum(row), len(row)
        low, high = wilson_interval(k, n)
        summaries.append(SubjectSummary(s.name, n, k, k / n if n else 0.0, low, high))
    base = np.array(matrix[0], dtype=bool)
    tests = []
    for s, row in zip(subjects[1:], matrix[1:], strict=True):
        other = np.array(row, dtype=bool)
        b = int(np.sum(base & ~other))
        c = int(np.sum(~base & other))
        low, high = paired_bootstrap(base, other)
        p = mcnemar_exact(b, c)
        difference = float(other.mean() - base.mean()) if len(row) else 0.0
        significant = p < alpha and (low > 0 or high < 0)
        tests.append(PairedTest(subjects[0].name, s.name, len(row), difference, low, high, b, c, p, significant))
    return Comparison(summaries, tests, shared, matrix)


def plot_comparison(comparison: Comparison, path: Path, title: str = "") -> None:
    """Pass rates with their 95% intervals, one bar per subject, written as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in comparison.subjects]
    rates = [100 * s.pass_rate for s in comparison.subjects]
    errors = [
        [max(0.0, 100 * (s.pass_rate - s.low)) for s in comparison.subjects],
        [max(0.0, 100 * (s.high - s.pass_rate)) for s in comparison.subjects],
    ]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.8 * len(names) + 1), 4.0))
    bars = ax.bar(names, rates, yerr=errors, capsize=6, color="#5b8def")
    for bar, rate in zip(bars, rates, strict=True):
        ax.annotate(
            f"{rate:.0f}%",
            (bar.get_x() + bar.get_width() / 2, rate),
            ha="center",
            va="bottom",
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_ylim(0, 105)
    ax.set_ylabel("pass rate (%), 95% CI")
    for test in comparison.tests:
        mark = "significant" if test.significant else "not significant"
        title += f"\n{test.subject} vs {test.baseline}: {100 * test.difference:+.0f} pts, p={test.p_value:.3g} ({mark})"
    ax.set_title(title.strip(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
