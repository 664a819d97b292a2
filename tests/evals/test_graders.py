"""Graders against outcomes worked out by hand, each with a case that must fail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stillroom.errors import BadRequestError
from stillroom.evals.graders import GradingContext, grade, validate_grader, with_criterion_id
from stillroom.evals.results import Grade

ITEM = {"answer": "Paris", "nested": {"list": ["a", "Dear customer"]}}
SAMPLE = {"output_text": "Dear customer, the capital is Paris.", "output_json": None, "output_tools": []}


def run(grader: dict[str, Any], item: dict[str, Any] = ITEM, sample: dict[str, Any] | None = SAMPLE) -> Grade:
    return asyncio.run(grade(validate_grader(grader), item, sample, GradingContext()))


def check(op: str, reference: str, text: str = "{{sample.output_text}}") -> Grade:
    return run({"type": "string_check", "name": "s", "input": text, "reference": reference, "operation": op})


def test_string_check_eq_and_ne() -> None:
    assert check("eq", "Paris", "{{item.answer}}").passed
    assert check("eq", "paris", "{{item.answer}}").score == 0.0
    assert check("ne", "Lyon", "{{item.answer}}").passed
    assert not check("ne", "Paris", "{{item.answer}}").passed


def test_string_check_like_is_a_case_sensitive_substring_test() -> None:
    assert check("like", "{{item.answer}}").passed
    assert not check("like", "paris").passed
    assert not check("like", "Dear%Paris").passed  # % is an ordinary character, not a SQL wildcard


def test_string_check_ilike_ignores_case() -> None:
    assert check("ilike", "PARIS").passed
    assert check("ilike", "dear CUSTOMER").passed
    assert not check("ilike", "london").passed


def test_templates_reach_into_nested_items_and_lists() -> None:
    assert check("like", "{{item.nested.list.1}}").passed


def test_a_missing_template_field_fails_the_item_with_the_reason() -> None:
    result = check("eq", "{{item.missing}}")
    assert not result.passed
    assert result.error is not None and "missing" in result.error


def test_text_similarity_passes_at_the_threshold_only() -> None:
    grader = {
        "type": "text_similarity",
        "name": "t",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
    }
    text = {"output_text": "Pariss"}  # 2*5/11 = 0.909
    assert run({**grader, "pass_threshold": 0.9}, sample=text).passed
    low = run({**grader, "pass_threshold": 0.95}, sample=text)
    assert low.score == pytest.approx(10 / 11) and not low.passed


def test_python_grader_scores_and_applies_its_threshold() -> None:
    source = "def grade(sample, item):\n    return 0.75 if item['answer'] in sample['output_text'] else 0.0\n"
    grader = {"type": "python", "name": "p", "source": source, "pass_threshold": 0.5}
    assert run(grader).score == 0.75 and run(grader).passed
    assert not run(grader, sample={"output_text": "Lyon"}).passed


def test_multi_grader_combines_named_graders() -> None:
    exact = {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "Paris",
        "operation": "eq",
    }
    loose = {
        "type": "string_check",
        "name": "loose",
        "input": "{{sample.output_text}}",
        "reference": "paris",
        "operation": "ilike",
    }
    grader = {
        "type": "multi",
        "name": "m",
        "graders": {"exact": exact, "loose": loose},
        "calculate_output": "0.5 * exact + 0.5 * loose",
    }
    result = asyncio.run(grade(validate_grader(grader, in_eval=False), ITEM, SAMPLE, GradingContext()))
    assert result.score == 0.5 and result.sub_rewards == {"exact": 0.0, "loose": 1.0}


def test_multi_grader_accepts_one_grader_named_by_its_name() -> None:
    one = {
        "type": "string_check",
        "name": "hit",
        "input": "{{sample.output_text}}",
        "reference": "Paris",
        "operation": "like",
    }
    grader = validate_grader(
        {"type": "multi", "name": "m", "graders": one, "calculate_output": "2 ^ hit"}, in_eval=False
    )
    assert asyncio.run(grade(grader, ITEM, SAMPLE, GradingContext())).score == 2.0


@pytest.mark.parametrize("formula", ["__import__('os')", "exact.real", "exact[0]", "unknown + 1", "lambda: 1"])
def test_multi_grader_refuses_unsafe_or_unknown_formulas(formula: str) -> None:
    exact = {"type": "string_check", "name": "exact", "input": "a", "reference": "a", "operation": "eq"}
    with pytest.raises(BadRequestError) as info:
        validate_grader(
            {"type": "multi", "name": "m", "graders": {"exact": exact}, "calculate_output": formula}, in_eval=False
        )
    assert info.value.param == "calculate_output"


def test_multi_is_refused_in_eval_testing_criteria() -> None:
    with pytest.raises(BadRequestError) as info:
        validate_grader({"type": "multi", "name": "m", "graders": {}, "calculate_output": "1"})
    assert info.value.param == "grader.type"


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        (
            {"type": "string_check", "name": "s", "input": "x", "reference": "y", "operation": "glob"},
            "grader.operation",
        ),
        (
            {"type": "string_check", "name": "s", "input": "{{foo.bar}}", "reference": "y", "operation": "eq"},
            "grader.input",
        ),
        (
            {
                "type": "text_similarity",
                "name": "t",
                "input": "x",
                "reference": "y",
                "evaluation_metric": "wer",
                "pass_threshold": 1,
            },
            "grader.evaluation_metric",
        ),
        (
            {"type": "text_similarity", "name": "t", "input": "x", "reference": "y", "evaluation_metric": "bleu"},
            "grader.pass_threshold",
        ),
        ({"type": "python", "name": "p", "source": "def score(s, i): return 1"}, "grader.source"),
        ({"type": "python", "name": "p", "source": "def grade(:"}, "grader.source"),
        (
            {
                "type": "label_model",
                "name": "l",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "labels": ["a"],
                "passing_labels": ["b"],
            },
            "grader.passing_labels",
        ),
        (
            {
                "type": "score_model",
                "name": "s",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "range": [1, 0],
            },
            "grader.range",
        ),
        ({"type": "nope"}, "grader.type"),
    ],
)
def test_invalid_graders_are_refused_with_the_field(grader: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as info:
        validate_grader(grader)
    assert info.value.param == param


def test_label_model_messages_are_normalised_and_criteria_get_ids() -> None:
    grader = validate_grader(
        {
            "type": "label_model",
            "name": "judge",
            "model": "m",
            "input": [{"role": "user", "content": "{{item.answer}}"}],
            "labels": ["good", "bad"],
            "passing_labels": ["good"],
        }
    )
    assert grader["input"] == [
        {"type": "message", "role": "user", "content": {"type": "input_text", "text": "{{item.answer}}"}}
    ]
    assert with_criterion_id(grader)["id"].startswith("judge-")
