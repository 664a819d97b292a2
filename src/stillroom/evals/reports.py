"""An eval's runs compared, per testing criterion: what `GET /evals/{eval_id}/comparison` answers and the
console's run page draws.

Each run is a subject (the stored answers, or a model). For the item verdict ("every criterion passed") and
for each criterion on its own, `comparison.compare` gives every subject's pass rate with its Wilson 95%
interval on the items all compared runs graded, and each subject against the first run (the baseline):
McNemar's exact p-value and a paired-bootstrap interval of the difference.

    {"object": "eval.comparison", "eval_id": ..., "items": <paired items>,
     "runs": [{"id", "name", "model", "status"}],
     "criteria": [{"testing_criteria": null | "<criterion id>", "name": "all criteria" | "<grader name>",
                   "subjects": [{"run_id", "name", "n", "passed", "pass_rate", "low", "high"}],
                   "tests": [{"baseline", "subject", "n", "difference", "low", "high",
                              "baseline_only", "subject_only", "p_value", "significant"}]}]}
"""

from __future__ import annotations

from typing import Any

from stillroom.errors import BadRequestError
from stillroom.evals.evaluations import get_eval_row
from stillroom.store import evals as store
from stillroom.store.db import Engine

FINISHED = ("completed", "canceled")
MAX_RUNS = 20


def compare_eval_runs(engine: Engine, project_id: str, eval_id: str, run_ids: list[str] | None) -> dict[str, Any]:
    """`run_ids` in the order to compare (the first is the baseline); by default every finished run of the
    eval, oldest first."""
    found = get_eval_row(engine, project_id, eval_id)
    runs = _runs(engine, project_id, eval_id, run_ids)
    verdicts = {run.id: store.all_output_items(engine, run.id) for run in runs}
    criteria: list[tuple[str | None, str]] = [(None, "all criteria")]
    criteria += [(c["id"], str(c.get("name") or c["id"])) for c in found.testing_criteria]
    names = {run.id: run.name for run in runs}
    reports = [_criterion(criterion, label, runs, verdicts, names) for criterion, label in criteria]
    return {
        "object": "eval.comparison",
        "eval_id": eval_id,
        "items": reports[0][1],
        "runs": [{"id": r.id, "name": r.name, "model": r.model, "status": r.status} for r in runs],
        "criteria": [report for report, _ in reports],
    }


def _runs(engine: Engine, project_id: str, eval_id: str, run_ids: list[str] | None) -> list[store.RunRow]:
    if run_ids is None:
        rows, _ = store.list_runs(
            engine, project_id, eval_id, status=None, after=None, limit=MAX_RUNS, descending=False
        )
        return [r for r in rows if r.status in FINISHED]
    if len(run_ids) > MAX_RUNS:
        raise BadRequestError(f"Invalid 'run_ids': compare at most {MAX_RUNS} runs.", param="run_ids")
    runs = []
    for run_id in dict.fromkeys(run_ids):
        row = store.get_run(engine, project_id, eval_id, run_id) if "\x00" not in run_id else None
        if row is None:
            raise BadRequestError(f"Run with id '{run_id}' not found in eval '{eval_id}'.", param="run_ids")
        runs.append(row)
    return runs


def _criterion(
    criterion: str | None,
    label: str,
    runs: list[store.RunRow],
    verdicts: dict[str, list[store.OutputItemRow]],
    names: dict[str, str],
) -> tuple[dict[str, Any], int]:
    """The criterion's report, and how many items it paired."""
    from stillroom.evals.comparison import Subject, compare  # numpy: only when a comparison is asked for

    subjects = [Subject(run.id, _passed(verdicts[run.id], criterion)) for run in runs]
    result = compare(subjects)
    report = {
        "testing_criteria": criterion,
        "name": label,
        "subjects": [
            {
                "run_id": s.name,
                "name": names[s.name],
                "n": s.n,
                "passed": s.passed,
                "pass_rate": s.pass_rate,
                "low": s.low,
                "high": s.high,
            }
            for s in result.subjects
        ],
        "tests": [
            {
                "baseline": t.baseline,
                "subject": t.subject,
                "n": t.n,
                "difference": t.difference,
                "low": t.low,
                "high": t.high,
                "baseline_only": t.baseline_only,
                "subject_only": t.subject_only,
                "p_value": t.p_value,
                "significant": t.significant,
            }
            for t in result.tests
        ],
    }
    return report, len(result.items)


def _passed(items: list[store.OutputItemRow], criterion: str | None) -> dict[int, bool]:
    """datasource_item_id -> passed: the item's verdict, or one criterion's (an item it did not grade is
    left out)."""
    if criterion is None:
        return {o.datasource_item_id: o.status == "pass" for o in items}
    found = {}
    for o in items:
        for result in o.results:
            if result.get("name") == criterion:
                found[o.datasource_item_id] = bool(result.get("passed")) and not result.get("error")
    return found
