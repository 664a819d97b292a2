"""`stillroom eval`: evaluate a selection of stored completions over several subjects and compare them.

    stillroom eval --metadata task=reply --grader 'like:Dear customer' --model smollm2 --model ft:...
    stillroom eval show RUN --plot out.png

The first form makes an eval (a `logs` data source with the metadata filter), one run grading the stored
answers themselves (unless --no-stored) and one run per --model sampling it on the same inputs, executes
them here with a progress bar (on the database directly, like `export`), and prints the comparison: pass
rates with 95% intervals, and each subject against the first with McNemar's exact test and a paired
bootstrap interval. `show` prints the comparison of every finished run of a run's eval and can plot it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from stillroom.cli_edge import ConfigFile, DatabaseUrl, Debug, database, load_settings_or_fail, parse_pairs
from stillroom.cli_jobs import Project

if TYPE_CHECKING:
    from stillroom.evals.comparison import Comparison
    from stillroom.store.db import Engine

eval_app = typer.Typer(
    help="Evaluate stored completions (and models on the same inputs); compare with significance tests.",
    invoke_without_command=True,
    no_args_is_help=False,
)
_STRING_OPS = ("eq", "ne", "like", "ilike")
_FINISHED = ("completed", "failed", "canceled")


def parse_grader(spec: str, n: int) -> dict[str, Any]:
    """`OP:REFERENCE` (a string_check of the sample's text), a JSON grader object, or `@file.json`."""
    if spec.startswith("@"):
        spec = Path(spec[1:]).read_text()
    if spec.lstrip().startswith("{"):
        grader: dict[str, Any] = orjson.loads(spec)
        return grader
    op, sep, reference = spec.partition(":")
    if not sep or op not in _STRING_OPS:
        raise typer.BadParameter(f"--grader {spec!r}: use OP:REFERENCE with OP in {_STRING_OPS}, JSON, or @file")
    return {
        "type": "string_check",
        "name": f"{op}-{n}",
        "input": "{{sample.output_text}}",
        "reference": reference,
        "operation": op,
    }


@eval_app.callback()
def evaluate(
    ctx: typer.Context,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="key=value filter, repeatable")] = None,
    grader: Annotated[
        list[str] | None, typer.Option("--grader", "-g", help="OP:REFERENCE, JSON or @file; repeatable")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Also sample this model on the inputs; repeatable")
    ] = None,
    stored: Annotated[bool, typer.Option(help="Grade the stored answers too (the first subject)")] = True,
    inputs: Annotated[str, typer.Option(help="What models are sent: 'full' (item.input) or 'last-user'")] = "full",
    max_tokens: Annotated[int, typer.Option(help="max_completion_tokens for sampled models")] = 128,
    limit: Annotated[int | None, typer.Option(help="Most stored completions to evaluate")] = None,
    name: Annotated[str | None, typer.Option(help="Name of the eval")] = None,
    project: Project = "default",
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
    debug: Debug = False,
) -> None:
    """Make an eval from a selection, run every subject, print the comparison."""
    if ctx.invoked_subcommand is not None:
        return
    if not grader:
        raise typer.BadParameter("give at least one --grader")
    settings = load_settings_or_fail(debug, database_url=database_url, config=config)
    with database(settings.database_url, debug) as engine:
        run_ids = _create(engine, project, metadata or [], grader, model or [], stored, inputs, max_tokens, limit, name)
        asyncio.run(_execute(settings, engine, run_ids))
        _print(_comparison(engine, project, run_ids))


def _create(
    engine: Engine,
    project: str,
    metadata: list[str],
    graders: list[str],
    models: list[str],
    stored: bool,
    inputs: str,
    max_tokens: int,
    limit: int | None,
    name: str | None,
) -> list[str]:
    from stillroom.evals import evaluations
    from stillroom.store.projects import direct_writes

    writes = direct_writes(engine)
    pairs = parse_pairs(metadata)
    criteria = [parse_grader(spec, n) for n, spec in enumerate(graders)]
    body = {
        "name": name or f"eval {' '.join(metadata) or 'all'}",
        "data_source_config": {"type": "logs", "metadata": pairs},
        "testing_criteria": criteria,
    }
    ev = evaluations.create_eval(body, project, writes)
    source = {"type": "stored_completions", "metadata": pairs, "limit": limit}
    if inputs == "full":
        messages: dict[str, Any] = {"type": "item_reference", "item_reference": "item.input"}
    elif inputs == "last-user":
        messages = {"type": "template", "template": [{"role": "user", "content": "{{item.user_text}}"}]}
    else:
        raise typer.BadParameter("--inputs is 'full' or 'last-user'")
    runs = []
    if stored:
        runs.append(({"type": "completions", "source": source}, "stored answers"))
    for m in models:
        sampled = {
            "type": "completions",
            "source": source,
            "model": m,
            "input_messages": messages,
            "sampling_params": {"temperature": 0, "seed": 42, "max_completion_tokens": max_tokens},
        }
        runs.append((sampled, m))
    ids = []
    for data_source, label in runs:
        run = evaluations.create_run(
            engine,
            project,
            ev["id"],
            {"name": label, "data_source": data_source},
            writes,
            is_model=lambda _: True,
            report_base="http://127.0.0.1:8080",
        )
        ids.append(str(run["id"]))
    return ids


async def _execute(settings: Any, engine: Engine, run_ids: list[str]) -> None:
    from stillroom.evals.worker import open_run_worker
    from stillroom.store import evals as store

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()) as progress:
        async with open_run_worker(settings, engine) as worker:
            for run_id in run_ids:
                run = store.get_run(engine, None, None, run_id)
                assert run is not None
                task = progress.add_task(run.name, total=None)
                execution = asyncio.ensure_future(worker.run_once(only=[run_id]))
                while True:
                    await asyncio.wait([execution], timeout=0.5)
                    current = store.get_run(engine, None, None, run_id)
                    if current is not None:
                        progress.update(task, completed=current.result_counts["total"])
                    if current is None or current.status in _FINISHED:
                        break
                    if execution.done():  # another worker (a running serve's) holds it: wait, or take it over
                        await execution
                        await asyncio.sleep(0.5)
                        execution = asyncio.ensure_future(worker.run_once(only=[run_id]))
                await execution
                final = store.get_run(engine, None, None, run_id)
                if final is not None:
                    progress.update(task, total=final.result_counts["total"], completed=final.result_counts["total"])


def _comparison(engine: Engine, project: str, run_ids: list[str]) -> tuple[list[Any], Comparison]:
    from stillroom.evals.comparison import Subject, compare
    from stillroom.store import evals as store

    runs = [r for r in (store.get_run(engine, project, None, i) for i in run_ids) if r is not None]
    subjects = [
        Subject(r.name, {o.datasource_item_id: o.status == "pass" for o in store.all_output_items(engine, r.id)})
        for r in runs
    ]
    return runs, compare(subjects)


def _print(found: tuple[list[Any], Comparison]) -> None:
    runs, comparison = found
    console = Console()
    table = Table(title=f"{len(comparison.items)} paired items")
    for column in ("subject", "run", "passed", "pass rate [95% CI]", "vs first [95% CI]", "McNemar p", "significant"):
        table.add_column(column)
    tests = {t.subject: t for t in comparison.tests}
    for run, summary in zip(runs, comparison.subjects, strict=True):
        test = tests.get(summary.name) if summary is not comparison.subjects[0] else None
        row = [
            summary.name,
            run.id,
            f"{summary.passed}/{summary.n}",
            f"{100 * summary.pass_rate:.1f}% [{100 * summary.low:.1f}, {100 * summary.high:.1f}]",
        ]
        if test is None:
            row += ["(baseline)", "", ""]
        else:
            row += [
                f"{100 * test.difference:+.1f} [{100 * test.low:+.1f}, {100 * test.high:+.1f}]",
                f"{test.p_value:.3g}",
                "yes" if test.significant else "no",
            ]
        table.add_row(*row)
    console.print(table)


@eval_app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="A run; its eval's finished runs are compared, oldest first")],
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a pass-rate chart (PNG) here")] = None,
    project: Project = "default",
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """The comparison of a run with the other finished runs of its eval (and a plot)."""
    from stillroom.errors import NotFoundError
    from stillroom.evals.comparison import plot_comparison
    from stillroom.store import evals as store

    with database(database_url, debug) as engine:
        run = store.get_run(engine, project, None, run_id)
        if run is None:
            raise NotFoundError(f"No eval run {run_id} in project {project}.")
        runs, _ = store.list_runs(engine, project, run.eval_id, status=None, after=None, limit=100, descending=False)
        ids = [r.id for r in runs if r.status in ("completed", "canceled")]
        found = _comparison(engine, project, ids)
        _print(found)
        if plot is not None:
            ev = store.get_eval(engine, project, run.eval_id)
            plot_comparison(found[1], plot, (ev.name if ev else "") or run.eval_id)
            Console().print(f"plot: {plot}")
