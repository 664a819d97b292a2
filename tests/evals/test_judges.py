"""label_model and score_model judges: the embedded model through the provider registry, and the parsing
of replies from providers that ignore structured output."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from stillroom.config import ModelConfig
from stillroom.evals.graders import GradingContext, grade, validate_grader
from stillroom.evals.judges import request_body
from stillroom.evals.results import Grade
from stillroom.evals.sampling import RegistrySampler
from stillroom.providers.registry import ProviderRegistry

LOCAL = "smollm2-135m-instruct"
ITEM = {"statement": "Water is wet.", "answer": "yes"}
SAMPLE = {"output_text": "yes", "output_json": None, "output_tools": []}


def label_grader(model: str = LOCAL) -> dict[str, Any]:
    return validate_grader(
        {
            "type": "label_model",
            "name": "truth",
            "model": model,
            "input": [
                {"role": "system", "content": "Classify the statement as true or false."},
                {"role": "user", "content": "Statement: {{item.statement}}"},
            ],
            "labels": ["true", "false"],
            "passing_labels": ["true"],
        }
    )


async def _grade_with_local(grader: dict[str, Any]) -> Grade:
    async with aiohttp.ClientSession() as session:
        registry = ProviderRegistry([ModelConfig(name=LOCAL, provider="local")], session)
        try:
            return await grade(grader, ITEM, SAMPLE, GradingContext(sampler=RegistrySampler(registry)))
        finally:
            await registry.aclose()


def test_label_model_judge_with_the_embedded_model_answers_a_label() -> None:
    result = asyncio.run(_grade_with_local(label_grader()))
    assert result.error is None, result.error
    assert result.sample is not None and result.sample["label"] in ("true", "false")
    assert result.passed == (result.sample["label"] == "true")
    assert result.usage[LOCAL]["invocation_count"] == 1 and result.usage[LOCAL]["total_tokens"] > 0


def test_score_model_judge_with_the_embedded_model_answers_a_score_in_range() -> None:
    grader = validate_grader(
        {
            "type": "score_model",
            "name": "quality",
            "model": LOCAL,
            "input": [{"role": "user", "content": "Rate from 1 to 5: {{sample.output_text}}"}],
            "range": [1, 5],
            "sampling_params": {"max_completions_tokens": 16, "seed": 7},
        }
    )
    result = asyncio.run(_grade_with_local(grader))
    assert result.error is None, result.error
    assert 1 <= result.score <= 5


class CannedJudge:
    """A fake sampler, named as such: it isolates our parsing of judge replies from any model."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.bodies: list[dict[str, Any]] = []

    async def complete(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        return {"model": model, "choices": [{"message": {"content": self.reply}}], "usage": usage}


@pytest.mark.parametrize(
    ("reply", "label"),
    [('{"label": "false"}', "false"), ("true", "true"), ("The answer is: false.", "false"), ('"true"', "true")],
)
def test_label_replies_parse(reply: str, label: str) -> None:
    result = asyncio.run(grade(label_grader("m"), ITEM, SAMPLE, GradingContext(sampler=CannedJudge(reply))))
    assert result.error is None and result.sample is not None and result.sample["label"] == label


@pytest.mark.parametrize("reply", ["maybe", "true or false", '{"label": "perhaps"}'])
def test_label_replies_without_exactly_one_label_fail_the_item(reply: str) -> None:
    result = asyncio.run(grade(label_grader("m"), ITEM, SAMPLE, GradingContext(sampler=CannedJudge(reply))))
    assert not result.passed and result.error is not None and reply[:5] in result.error


def test_score_is_clipped_to_range_and_passes_at_the_middle_by_default() -> None:
    grader = validate_grader(
        {
            "type": "score_model",
            "name": "q",
            "model": "m",
            "input": [{"role": "user", "content": "x"}],
            "range": [0, 10],
        }
    )
    high = asyncio.run(grade(grader, ITEM, SAMPLE, GradingContext(sampler=CannedJudge('{"score": 42}'))))
    low = asyncio.run(grade(grader, ITEM, SAMPLE, GradingContext(sampler=CannedJudge("4.5"))))
    assert (high.score, high.passed) == (10.0, True)
    assert (low.score, low.passed) == (4.5, False)


def test_judge_request_renders_templates_and_asks_for_a_schema() -> None:
    body = request_body(label_grader("m"), {"item": ITEM, "sample": SAMPLE})
    assert body["messages"][1] == {"role": "user", "content": "Statement: Water is wet."}
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == ["true", "false"]
    assert body["temperature"] == 0
