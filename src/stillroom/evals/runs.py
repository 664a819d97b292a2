"""Executing an eval run: sample (when the run names a model), grade every item with every criterion,
write output items and running counts as it goes.

`execute_run` is the plain executor: items in, graded items out through `on_batch`, with at most
`concurrency` items in flight against providers. It stops early when `should_stop()` says so (a cancel).
`RunWorker` claims queued runs from the database with a lease, feeds them to `execute_run`, heartbeats,
and writes progress; it runs in the worker process (`stillroom eval worker`), never in the server.

An item passes when every criterion passed; it is `errored` when its sampling failed or a grader could
not grade it (it then also counts as a failed output item).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stillroom.errors import StillroomError
from stillroom.evals.datasets import Item, ReadFile, error_sample, load_items, sample_from_completion
from stillroom.evals.evaluations import new_id
from stillroom.evals.graders import GradingContext, grade
from stillroom.evals.judges import Sampler, chat_messages
from stillroom.evals.results import Grade, Usage, merge_usage
from stillroom.evals.templates import MissingReferenceError, resolve_reference
from stillroom.store import evals as store
from stillroom.store.db import Engine

log = logging.getLogger("stillroom.evals")


@dataclass(slots=True)
class GradedItem:
    item: Item
    sample: dict[str, Any]
    grades: list[Grade]
    errored: bool

    @property
    def passed(self) -> bool:
        return not self.errored and all(g.passed for g in self.grades)


@dataclass(slots=True)
class Tally:
    criteria: list[str]
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "errored": 0, "failed": 0, "passed": 0})
    usage: Usage = field(default_factory=dict)
    per_criterion: dict[str, list[int]] = field(default_factory=dict)

    def add(self, graded: GradedItem, sampled_model: str | None) -> None:
        self.counts["total"] += 1
        if graded.errored:
            self.counts["errored"] += 1
        self.counts["passed" if graded.passed else "failed"] += 1
        for criterion, g in zip(self.criteria, graded.grades, strict=True):
            slot = self.per_criterion.setdefault(criterion, [0, 0])
            slot[0 if g.passed else 1] += 1
            merge_usage(self.usage, g.usage)
        if sampled_model is not None and graded.sample.get("error") is None:
            u = graded.sample["usage"]
            merge_usage(self.usage, {sampled_model: {"invocation_count": 1, **u}})

    def values(self) -> dict[str, Any]:
        return {
            "result_counts": dict(self.counts),
            "per_model_usage": [
                {
                    "model_name": model,
                    "invocation_count": u.get("invocation_count", 0),
                    "prompt_tokens": u.get("prompt_tokens", 0),
                    "completion_tokens": u.get("completion_tokens", 0),
                    "total_tokens": u.get("total_tokens", 0),
                    "cached_tokens": u.get("cached_tokens", 0),
                }
                for model, u in sorted(self.usage.items())
            ],
            "per_testing_criteria_results": [
                {
                    "testing_criteria": c,
                    "passed": self.per_criterion.get(c, [0, 0])[0],
                    "failed": self.per_criterion.get(c, [0, 0])[1],
                }
                for c in self.criteria
            ],
        }


async def execute_run(
    criteria: list[dict[str, Any]],
    data_source: dict[str, Any],
    items: Sequence[Item],
    ctx: GradingContext,
    *,
    concurrency: int,
    on_batch: Callable[[list[GradedItem]], Awaitable[None]],
    should_stop: Callable[[], bool],
    batch_size: int = 8,
) -> bool:
    """Grade `items`; False when it stopped early because `should_stop()` said so."""
    semaphore = asyncio.Semaphore(max(1, concurrency))
    pending: list[GradedItem] = []
    stopped = False

    async def one(item: Item) -> GradedItem | None:
        async with semaphore:
            if should_stop():
                return None
            return await grade_item(criteria, data_source, item, ctx)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        for next_done in asyncio.as_completed(tasks):
            graded = await next_done
            if graded is None:
                stopped = True
                continue
            pending.append(graded)
            if len(pending) >= batch_size:
                await on_batch(pending)
                pending = []
            if should_stop():
                stopped = True
                for task in tasks:
                    task.cancel()
                break
        if pending:
            await on_batch(pending)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return not stopped


async def grade_item(
    criteria: list[dict[str, Any]], data_source: dict[str, Any], item: Item, ctx: GradingContext
) -> GradedItem:
    sample, errored = await _sample(data_source, item, ctx.sampler)
    grades = [await grade(criterion, item.item, sample, ctx) for criterion in criteria]
    return GradedItem(item, sample, grades, errored or any(g.error for g in grades))


async def _sample(data_source: dict[str, Any], item: Item, sampler: Sampler | None) -> tuple[dict[str, Any], bool]:
    model = data_source.get("model")
    if model is None:
        if item.sample is None:
            return error_sample([], "", "no_sample", "This item has no sample and the run names no model."), True
        return item.sample, False
    try:
        messages = _input_messages(data_source["input_messages"], item.item)
    except MissingReferenceError as exc:
        return error_sample([], model, "invalid_template", str(exc)), True
    if sampler is None:
        return error_sample(messages, model, "no_sampler", "No model can be sampled here."), True
    params = data_source.get("sampling_params") or {}
    body: dict[str, Any] = {"model": model, "messages": messages}
    for key in (
        "temperature",
        "top_p",
        "seed",
        "max_completion_tokens",
        "response_format",
        "tools",
        "reasoning_effort",
    ):
        if params.get(key) is not None:
            body[key] = params[key]
    try:
        completion = await sampler.complete(model, body)
    except StillroomError as exc:
        return error_sample(messages, model, exc.code or exc.type, exc.message), True
    return sample_from_completion(completion, messages, params), False


def _input_messages(spec: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]]:
    context = {"item": item, "sample": None}
    if spec["type"] == "template":
        return chat_messages(spec["template"], context)
    messages = resolve_reference(spec["item_reference"], context)
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list):
        raise MissingReferenceError(f"{spec['item_reference']} is not a list of messages")
    return [dict(m) for m in messages if isinstance(m, dict)]


def output_item_row(run: store.RunRow, criteria: list[dict[str, Any]], graded: GradedItem) -> store.OutputItemRow:
    results = []
    for criterion, g in zip(criteria, graded.grades, strict=True):
        result: dict[str, Any] = {
            "name": criterion["id"],
            "type": criterion["type"],
            "score": g.score,
            "passed": g.passed,
            "sample": g.sample,
        }
        if g.error is not None:
            result["error"] = g.error
        if g.sub_rewards:
            result["sub_rewards"] = g.sub_rewards
        results.append(result)
    return store.OutputItemRow(
        id=new_id("outputitem_"),
        run_id=run.id,
        eval_id=run.eval_id,
        datasource_item_id=graded.item.index,
        status="pass" if graded.passed else "fail",
        datasource_item=graded.item.item,
        results=results,
        sample=graded.sample,
        created_at=int(time.time()),
    )


# --- the worker side ---


class RunWorker:
    """Claims queued eval runs and executes them, one at a time, writing progress as it goes."""

    def __init__(
        self,
        engine: Engine,
        sampler: Sampler,
        read_file: ReadFile,
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        worker_id: str | None = None,
        grading: GradingContext | None = None,
    ) -> None:
        self.engine = engine
        self.read_file = read_file
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:evals"
        self.grading = grading or GradingContext()
        self.grading.sampler = sampler

    async def run_once(self, only: Sequence[str] | None = None) -> bool:
        """Claim one run (of `only`, when given) and execute it to the end; False when none was waiting."""
        run = await asyncio.to_thread(
            store.claim_run, self.engine, self.id, lease_seconds=self.lease_seconds, now=time.time(), only=only
        )
        if run is None:
            return False
        try:
            await self._execute(run)
        except Exception as exc:  # the edge of one run: it fails with the reason, the worker goes on
            log.exception("eval run %s failed", run.id)
            error = {
                "code": getattr(exc, "code", None) or "server_error",
                "message": str(getattr(exc, "message", exc))[:1000],
            }
            await asyncio.to_thread(
                store.finish_run,
                self.engine,
                run.id,
                self.id,
                {"status": "failed", "error": error, "finished_at": int(time.time())},
            )
        return True

    async def _execute(self, run: store.RunRow) -> None:
        found = store.get_eval(self.engine, run.project_id, run.eval_id)
        if found is None:
            return
        criteria = found.testing_criteria
        items = await asyncio.to_thread(load_items, run.data_source, self.engine, run.project_id, self.read_file)
        done = await asyncio.to_thread(store.graded_item_ids, self.engine, run.id)
        tally = Tally([c["id"] for c in criteria])
        for row in store.all_output_items(self.engine, run.id):  # a run taken over keeps what was graded
            tally.add(_regraded(row), None)
        tally.usage = {u["model_name"]: {k: v for k, v in u.items() if k != "model_name"} for u in run.per_model_usage}
        todo = [item for item in items if item.index not in done]
        held = True

        async def on_batch(batch: list[GradedItem]) -> None:
            nonlocal held
            for graded in batch:
                tally.add(graded, run.data_source.get("model"))
            rows = [output_item_row(run, criteria, g) for g in batch]
            held = await asyncio.to_thread(store.save_progress, self.engine, run.id, self.id, tally.values(), rows)

        async def heartbeat() -> None:
            nonlocal held
            while held:
                await asyncio.sleep(self.lease_seconds / 3)
                held = await asyncio.to_thread(
                    store.renew_run_lease,
                    self.engine,
                    run.id,
                    self.id,
                    lease_seconds=self.lease_seconds,
                    now=time.time(),
                )

        beat = asyncio.ensure_future(heartbeat())
        try:
            finished = await execute_run(
                criteria,
                run.data_source,
                todo,
                self.grading,
                concurrency=self.concurrency,
                on_batch=on_batch,
                should_stop=lambda: not held,
            )
        finally:
            beat.cancel()
        if finished and held:
            values = {**tally.values(), "status": "completed", "finished_at": int(time.time())}
            await asyncio.to_thread(store.finish_run, self.engine, run.id, self.id, values)

    async def run_forever(self, should_stop: Callable[[], bool], *, poll_seconds: float = 0.5) -> None:
        log.info("eval worker %s waiting for runs", self.id)
        while not should_stop():
            try:
                worked = await self.run_once()
            except Exception:  # the worker loop's edge: log, wait, go on
                log.exception("eval worker %s: claiming or running failed", self.id)
                worked = False
            if not worked:
                await asyncio.sleep(poll_seconds)


def _regraded(row: store.OutputItemRow) -> GradedItem:
    grades = [Grade(float(r["score"]), bool(r["passed"]), r.get("error")) for r in row.results]
    errored = row.sample.get("error") is not None or any(r.get("error") for r in row.results)
    return GradedItem(Item(row.datasource_item_id, row.datasource_item, row.sample), row.sample, grades, errored)
