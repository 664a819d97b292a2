"""Fine-tuning jobs on the wire: the create request, checked field by field, with OpenAI's bounds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stillroom.errors import BadRequestError
from stillroom.wire.chat import validate_metadata

STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
MAX_SEED = 2_147_483_647
_SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# name: (lowest, highest, integer?) — `"auto"` is always accepted
_HYPERPARAMETERS: dict[str, tuple[float, float, bool]] = {
    "n_epochs": (1, 50, True),
    "batch_size": (1, 256, True),
    "learning_rate_multiplier": (0, float("inf"), False),
}


@dataclass(slots=True)
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int | None
    metadata: dict[str, str] | None
    method: dict[str, Any]  # {"type": "supervised", "supervised": {"hyperparameters": {...}}}


def parse_job_request(body: dict[str, Any]) -> JobRequest:
    model = _required_string(body, "model")
    training_file = _required_string(body, "training_file")
    validation_file = body.get("validation_file")
    if validation_file is not None and not isinstance(validation_file, str):
        raise BadRequestError("Invalid type for 'validation_file': expected a string.", param="validation_file")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
        raise BadRequestError("Invalid 'suffix': use 1 to 64 letters, digits, '-', '_' or '.'.", param="suffix")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise BadRequestError(f"Invalid 'seed': expected an integer between 0 and {MAX_SEED}.", param="seed")
    if body.get("integrations"):
        raise BadRequestError("Integrations are not supported by this server.", param="integrations")
    return JobRequest(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        suffix=suffix,
        seed=seed,
        metadata=validate_metadata(body.get("metadata")),
        method=_method(body),
    )


def _required_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise BadRequestError(f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise BadRequestError(f"Invalid type for '{name}': expected a non-empty string.", param=name)
    return value


def _method(body: dict[str, Any]) -> dict[str, Any]:
    """The method with every hyperparameter present ("auto" where not given). The deprecated top-level
    `hyperparameters` is read when `method` is absent."""
    method = body.get("method")
    if method is None:
        given, param = body.get("hyperparameters") or {}, "hyperparameters"
    else:
        if not isinstance(method, dict):
            raise BadRequestError("Invalid type for 'method': expected an object.", param="method")
        kind = method.get("type", "supervised")
        if kind != "supervised":
            raise BadRequestError(
                f"Invalid 'method.type': {kind!r} is not supported here; use 'supervised'.", param="method.type"
            )
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise BadRequestError("Invalid type for 'method.supervised'.", param="method.supervised")
        given, param = supervised.get("hyperparameters") or {}, "method.supervised.hyperparameters"
    if not isinstance(given, dict):
        raise BadRequestError(f"Invalid type for '{param}': expected an object.", param=param)
    unknown = set(given) - set(_HYPERPARAMETERS)
    if unknown:
        name = sorted(unknown)[0]
        raise BadRequestError(f"Unknown hyperparameter '{name}'.", param=f"{param}.{name}")
    hyperparameters = {name: _hyperparameter(given.get(name, "auto"), name, param) for name in _HYPERPARAMETERS}
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def _hyperparameter(value: Any, name: str, param: str) -> Any:
    if value == "auto":
        return value
    low, high, integer = _HYPERPARAMETERS[name]
    valid_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not valid_type:
        kind = "an integer" if integer else "a number"
        raise BadRequestError(f"Invalid '{param}.{name}': expected 'auto' or {kind}.", param=f"{param}.{name}")
    in_range = low <= value <= high if integer else low < value < high
    if not in_range:
        bounds = f"between {low} and {high}" if integer else "greater than 0"
        raise BadRequestError(f"Invalid '{param}.{name}': must be {bounds}.", param=f"{param}.{name}")
    return value
