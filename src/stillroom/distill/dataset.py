"""Datasets from a selection: stored completions -> a chat fine-tuning JSONL file (and optionally a
validation file), streamed into file storage row by row.

Options: a deterministic validation split (by a hash of the prompt, so one prompt never lands on both sides),
dropping truncated (`finish_reason: length`) and incomplete answers, dropping duplicates, keeping only the last
exchange (the last user turn and the answer, without the few-shot turns before it), and stripping or
replacing the system prompt (prompt distillation). Memory is constant except for duplicate detection, which
keeps 8 bytes of hash per distinct example.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from stillroom.distill.export import Selection, finish_reason, iter_selected, training_row
from stillroom.errors import BadRequestError
from stillroom.files import Upload, render_file
from stillroom.store import files as file_store
from stillroom.store.blobs import FileStorage
from stillroom.store.db import Engine
from stillroom.store.files import FileRow
from stillroom.store.projects import Writes
from stillroom.stored import catch_up_search
from stillroom.wire.files import MIN_EXAMPLES

DROP_REASONS = {
    "incomplete": "incomplete (the stream broke off)",
    "truncated": "truncated (finish_reason 'length')",
    "no_answer": "without an answer (no content or tool calls)",
    "duplicate": "duplicates",
}


@dataclass(frozen=True, slots=True)
class DatasetOptions:
    validation_fraction: float = 0.0  # 0 .. 0.5
    drop_truncated: bool = True
    drop_incomplete: bool = True
    dedupe: bool = True
    system_prompt: Literal["keep", "strip", "replace"] = "keep"
    replacement: str | None = None  # the new system prompt, for "replace"
    last_turn: bool = False  # keep only the last user turn and what follows it (drop few-shot turns)
    seed: int = 0
    limit: int | None = None  # at most this many examples in all


@dataclass(slots=True)
class Dataset:
    training: FileRow
    validation: FileRow | None
    selected: int
    dropped: Counter[str] = field(default_factory=Counter)
    training_examples: int = 0
    validation_examples: int = 0

    def render(self) -> dict[str, Any]:
        return {
            "object": "dataset",
            "training_file": render_file(self.training),
            "validation_file": render_file(self.validation) if self.validation else None,
            "counts": {
                "selected": self.selected,
                "training": self.training_examples,
                "validation": self.validation_examples,
                "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS},
            },
        }


def check_options(options: DatasetOptions) -> None:
    if not 0 <= options.validation_fraction <= 0.5:
        raise BadRequestError("Invalid 'validation_split': expected a number from 0 to 0.5.", param="validation_split")
    if options.system_prompt == "replace" and not options.replacement:
        raise BadRequestError("Replacing the system prompt needs the new prompt.", param="system_prompt")
    if options.limit is not None and options.limit < MIN_EXAMPLES:
        raise BadRequestError(f"Invalid 'limit': at least {MIN_EXAMPLES}.", param="limit")


def build_dataset(
    engine: Engine,
    writes: Writes,
    storage: FileStorage,
    project_id: str,
    selection: Selection,
    options: DatasetOptions,
    *,
    max_bytes: int,
) -> Dataset:
    """Write the dataset's file(s) and register them; BadRequestError (nothing kept) under 10 examples."""
    check_options(options)
    catch_up_search(engine, writes, selection.filters.search)
    name = f"distill-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    training = Upload(storage, "fine-tune", f"{name}.jsonl", max_bytes)
    validation = Upload(storage, "fine-tune", f"{name}-validation.jsonl", max_bytes)
    try:
        counts, dropped, selected = _write_examples(engine, project_id, selection, options, training, validation)
        _check_enough(counts, dropped, selected)
        dataset = Dataset(training.finish(writes, project_id), None, selected, dropped, counts[0], counts[1])
    except BaseException:
        training.abort()
        validation.abort()
        raise
    try:
        if counts[1]:
            dataset.validation = validation.finish(writes, project_id)
        else:
            validation.abort()
    except BaseException:  # e.g. over the quota: the training file, already registered, goes too
        file_store.delete_file(writes, project_id, dataset.training.id)
        training.abort()
        raise
    return dataset


def _write_examples(
    engine: Engine,
    project_id: str,
    selection: Selection,
    options: DatasetOptions,
    training: Upload,
    validation: Upload,
) -> tuple[list[int], Counter[str], int]:
    seen: set[bytes] = set()
    dropped: Counter[str] = Counter()
    counts = [0, 0]
    selected = 0
    for row, messages in iter_selected(engine, project_id, selection):
        if options.limit is not None and counts[0] + counts[1] >= options.limit:
            break
        selected += 1
        reason = _drop_reason(row.incomplete, finish_reason(row.response), options)
        example = None if reason else training_row(row, messages)
        if reason is None and example is None:
            reason = "no_answer"
        if example is not None:
            if options.last_turn:
                example = _last_exchange(example)
            example = _with_system_prompt(example, options)
            line = orjson.dumps(example, option=orjson.OPT_SORT_KEYS)
            digest = hashlib.blake2b(line, digest_size=8).digest()
            if options.dedupe and digest in seen:
                reason = "duplicate"
            else:
                if options.dedupe:
                    seen.add(digest)
                side = int(_is_validation(example, options))
                (validation if side else training).write(line + b"\n")
                counts[side] += 1
        if reason:
            dropped[reason] += 1
    return counts, dropped, selected


def _drop_reason(incomplete: bool, finish: str | None, options: DatasetOptions) -> str | None:
    if incomplete and options.drop_incomplete:
        return "incomplete"
    if finish == "length" and options.drop_truncated:
        return "truncated"
    return None


def _last_exchange(example: dict[str, Any]) -> dict[str, Any]:
    """The system and developer messages, then the last user turn and everything after it (the answer, and
    any tool calls and results on the way to it): the worked examples of a few-shot prompt are dropped."""
    messages = example["messages"]
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    if last_user is None:
        return example
    head = [m for m in messages[:last_user] if m["role"] in ("system", "developer")]
    return {**example, "messages": head + messages[last_user:]}


def _with_system_prompt(example: dict[str, Any], options: DatasetOptions) -> dict[str, Any]:
    if options.system_prompt == "keep":
        return example
    messages = [m for m in example["messages"] if m["role"] not in ("system", "developer")]
    if options.system_prompt == "replace":
        messages.insert(0, {"role": "system", "content": options.replacement})
    return {**example, "messages": messages}


def _is_validation(example: dict[str, Any], options: DatasetOptions) -> bool:
    """Deterministic in the seed and the prompt (everything but the final answer)."""
    if options.validation_fraction <= 0:
        return False
    prompt = orjson.dumps([example["messages"][:-1], example.get("tools")], option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(prompt, digest_size=8, key=str(options.seed).encode()).digest()
    return int.from_bytes(digest) / 2**64 < options.validation_fraction


def _check_enough(counts: list[int], dropped: Counter[str], selected: int) -> None:
    if counts[0] >= MIN_EXAMPLES:
        return
    why = ", ".join(f"{n} {DROP_REASONS[reason]}" for reason, n in sorted(dropped.items()) if n)
    split = f" ({counts[1]} went to the validation split)" if counts[1] else ""
    raise BadRequestError(
        f"Only {counts[0]} usable training example(s){split}; fine-tuning needs at least {MIN_EXAMPLES}. "
        f"{selected} stored completion(s) matched the selection" + (f"; dropped: {why}." if why else "."),
        param="selection",
        code="invalid_n_examples",
    )
