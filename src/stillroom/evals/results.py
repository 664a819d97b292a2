"""What grading one item with one grader produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Usage = dict[str, dict[str, int]]  # model -> invocation_count, prompt/completion/total/cached tokens


@dataclass(slots=True)
class Grade:
    score: float
    passed: bool
    error: str | None = None  # why this item could not be graded (it then counts as not passed)
    sample: dict[str, Any] | None = None  # what a model judge was asked and answered
    usage: Usage = field(default_factory=dict)
    sub_rewards: dict[str, float] = field(default_factory=dict)


def merge_usage(total: Usage, more: Usage) -> None:
    for model, counts in more.items():
        slot = total.setdefault(model, {})
        for key, value in counts.items():
            slot[key] = slot.get(key, 0) + value
