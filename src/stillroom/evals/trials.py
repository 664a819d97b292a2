"""Trying a grader on one sample: the `/fine_tuning/alpha/graders/run` and `/validate` routes.

`run` answers `{reward, sub_rewards, metadata{errors, execution_time, name, scores, token_usage, type},
model_grader_token_usage_per_model}`: the shape OpenAI's grader test route returns. `model_sample` is the
text graded as `{{sample.output_text}}` (and, when it parses, `{{sample.output_json}}`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from stillroom.errors import BadRequestError
from stillroom.evals.graders import GradingContext, grade, validate_grader

_ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)


def validate_grader_request(body: dict[str, Any]) -> dict[str, Any]:
    return {"grader": validate_grader(body.get("grader"), in_eval=False)}


async def run_grader(body: dict[str, Any], ctx: GradingContext) -> dict[str, Any]:
    grader = validate_grader(body.get("grader"), in_eval=False)
    text = body.get("model_sample")
    if not isinstance(text, str):
        raise BadRequestError("Missing required parameter: 'model_sample' (a string).", param="model_sample")
    item = body.get("item") or {}
    if not isinstance(item, dict):
        raise BadRequestError("Invalid 'item': expected an object.", param="item")
    sample = {"output_text": text, "output_json": _json_or_none(text), "output_tools": [], "choices": []}
    started = time.perf_counter()
    result = await grade(grader, item, sample, ctx)
    errors: dict[str, Any] = dict.fromkeys(_ERROR_FLAGS, False)
    errors |= {
        "model_grader_server_error_details": None,
        "python_grader_runtime_error_details": None,
        "python_grader_server_error_type": None,
    }
    if result.error is not None:
        _flag(errors, grader["type"], result.error)
    token_usage = sum(u.get("total_tokens", 0) for u in result.usage.values()) if result.usage else None
    return {
        "reward": result.score,
        "sub_rewards": result.sub_rewards,
        "metadata": {
            "errors": errors,
            "execution_time": time.perf_counter() - started,
            "name": grader["name"],
            "sampled_model_name": None,
            "scores": result.sub_rewards or {grader["name"]: result.score},
            "token_usage": token_usage,
            "type": grader["type"],
        },
        "model_grader_token_usage_per_model": result.usage,
    }


def _flag(errors: dict[str, Any], kind: str, message: str) -> None:
    if kind == "python":
        errors["python_grader_runtime_error"] = True
        errors["python_grader_runtime_error_details"] = message
    elif kind in ("label_model", "score_model"):
        key = "model_grader_server_error" if "failed" in message else "model_grader_parse_error"
        errors[key] = True
        if key == "model_grader_server_error":
            errors["model_grader_server_error_details"] = message
    elif "calculate_output" in message:
        errors["formula_parse_error"] = True
    elif "{{" in message:
        errors["invalid_variable_error"] = True
    else:
        errors["other_error"] = True


def _json_or_none(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
