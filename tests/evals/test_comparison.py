"""The paired significance test, intervals and plot, on data whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stillroom.evals.comparison import (
    Subject,
    compare,
    mcnemar_exact,
    paired_bootstrap,
    plot_comparison,
    wilson_interval,
)


def subject(name: str, outcomes: list[bool]) -> Subject:
    return Subject(name, dict(enumerate(outcomes)))


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)  # 0.00195
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # b=1, c=7: 2 * (C(8,0) + C(8,1)) / 2^8 = 2 * 9 / 256
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)


def test_wilson_interval_by_hand() -> None:
    low, high = wilson_interval(8, 10)  # p=0.8, n=10: (0.4902, 0.9433)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))


def test_a_real_improvement_is_significant() -> None:
    # 150 items: the floor passes 20, the student passes those 20 and 60 more (b=0, c=60).
    floor = [i < 20 for i in range(150)]
    student = [i < 80 for i in range(150)]
    result = compare([subject("base", floor), subject("student", student)])
    test = result.tests[0]
    assert (test.baseline_only, test.subject_only, test.n) == (0, 60, 150)
    assert test.difference == pytest.approx(60 / 150)
    assert test.p_value == pytest.approx(2 * 0.5**60)
    assert test.low > 0.3 and test.significant
    assert [s.passed for s in result.subjects] == [20, 80]


def test_equal_subjects_that_disagree_item_by_item_are_not_significant() -> None:
    # Same pass rate, 30 discordant pairs each way: p = 1, interval around 0.
    a = [i % 2 == 0 for i in range(120)]
    b = [i % 2 == 1 if i < 60 else i % 2 == 0 for i in range(120)]
    test = compare([subject("teacher", a), subject("student", b)]).tests[0]
    assert (test.baseline_only, test.subject_only) == (30, 30)
    assert test.p_value == 1.0 and test.low < 0 < test.high and not test.significant


def test_only_items_every_run_graded_are_paired() -> None:
    result = compare([Subject("a", {0: True, 1: False, 2: True}), Subject("b", {1: True, 2: True, 3: False})])
    assert result.items == [1, 2] and result.matrix == [[False, True], [True, True]]


def test_bootstrap_interval_is_reproducible_and_brackets_the_difference() -> None:
    base = np.array([True] * 30 + [False] * 70)
    other = np.array([True] * 50 + [False] * 50)
    first = paired_bootstrap(base, other, seed=1)
    assert first == paired_bootstrap(base, other, seed=1)
    assert first[0] < 0.2 < first[1]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    result = compare([subject("none", [False, False, False]), subject("all", [True, True, True])])
    out = tmp_path / "cmp.png"
    plot_comparison(result, out, "demo")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
