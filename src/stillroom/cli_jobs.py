"""`stillroom worker`, `stillroom distill` and `stillroom jobs ...`: fine-tuning from the command line, on the
database directly (like `export`). A job runs in whichever worker claims it: the one `stillroom serve` starts,
or any `stillroom worker` sharing the database."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stillroom.cli_edge import (
    ConfigFile,
    DatabaseUrl,
    Debug,
    database,
    failing_in_one_line,
    format_time,
    load_settings_or_fail,
    parse_pairs,
)
from stillroom.config import Settings
from stillroom.errors import StillroomError

if TYPE_CHECKING:
    from stillroom.store.db import Engine

jobs_app = typer.Typer(help="Fine-tuning jobs: list, show, events, cancel.", no_args_is_help=True)

Project = Annotated[str, typer.Option(help="Project the jobs belong to")]
_TERMINAL = ("succeeded", "failed", "cancelled")


# --- the worker ---


def worker(
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
    parent_pid: Annotated[int | None, typer.Option("--parent-pid", hidden=True)] = None,
    debug: Debug = False,
) -> None:
    """Run fine-tuning jobs and eval runs from the database until stopped (SIGTERM or Ctrl-C re-queue the
    running job)."""
    _silence_library_progress_bars()
    from stillroom.cli import _configure_logging
    from stillroom.evals.worker import start_eval_worker
    from stillroom.store.blobs import LocalFileStorage
    from stillroom.training.runner import LocalTrainer
    from stillroom.training.upstream import UpstreamRunner
    from stillroom.training.worker import Worker

    settings = load_settings_or_fail(debug, database_url=database_url, config=config)
    _configure_logging(settings.log_level)
    with failing_in_one_line(debug):
        models = {m.name: m for m in settings.load_models()}
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if parent_pid is not None:  # started by `serve`: end with it, however it ends
        os.nice(10)  # and training yields the CPU to the gateway whenever it wants it (bench/train_interference.py)
        threading.Thread(target=_watch_parent, args=(parent_pid, stop), daemon=True).start()
    with database(settings.database_url, debug) as engine:
        evals_thread = start_eval_worker(settings, engine, stop)  # eval runs: a second kind of work
        runner = Worker(
            engine,
            LocalFileStorage(settings.files_dir),
            models,
            LocalTrainer(
                max_steps=settings.training_max_steps,
                processes=settings.training_processes,
                launch_args=shlex.split(settings.training_launch_args),
            ),
            work_dir=settings.files_dir / ".training",
            lease_seconds=settings.job_lease_seconds,
            stopping=stop,
            upstream_runner=UpstreamRunner(poll_seconds=settings.upstream_poll_seconds),
        )
        runner.run_forever(stop)
        evals_thread.join(30)


def _silence_library_progress_bars() -> None:
    """In this (the worker's) process only: the libraries' progress bars (transformers' "Converting and
    de-quantizing GGUF tensors", hub downloads) would go to stderr; a job's progress goes out as its events.
    tqdm reads TQDM_DISABLE when it is imported, which is later than this (the runner imports the trainer)."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            stop.set()


def start_worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    """`stillroom worker` in a process of its own, for `serve`: training never shares the gateway's cores'
    scheduler slot or its GIL, and torch is never imported into the server."""
    env = {
        **os.environ,
        "STILLROOM_DATABASE_URL": settings.database_url,
        "STILLROOM_FILES_DIR": str(settings.files_dir),
    }
    if settings.config is not None:
        env["STILLROOM_CONFIG"] = str(settings.config)
    args = [sys.executable, "-m", "stillroom", "worker", "--parent-pid", str(os.getpid())]
    return subprocess.Popen(args, env=env)


def stop_worker_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- distill ---


def distill(
    base: Annotated[str, typer.Option("--base", help="Model to fine-tune (a local model of the config)")],
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="key=value filter, repeatable")] = None,
    model: Annotated[str | None, typer.Option(help="Only completions asked of this model")] = None,
    suffix: Annotated[str | None, typer.Option(help="Name part of the fine-tuned model")] = None,
    validation: Annotated[float, typer.Option(help="Fraction held out as the validation file (0..0.5)")] = 0.0,
    strip_system: Annotated[bool, typer.Option(help="Drop system prompts (prompt distillation)")] = False,
    last_turn: Annotated[
        bool, typer.Option(help="Keep only the last user turn and the answer (drop few-shot example turns)")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Most examples in the dataset")] = None,
    n_epochs: Annotated[int | None, typer.Option(help="Epochs (default: auto)")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends")] = True,
    project: Project = "default",
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
    debug: Debug = False,
) -> None:
    """Build a dataset from stored completions, start a fine-tuning job on it, and follow its progress."""
    from stillroom.distill.dataset import DatasetOptions, build_dataset
    from stillroom.distill.export import Selection
    from stillroom.store.blobs import LocalFileStorage
    from stillroom.store.projects import direct_writes
    from stillroom.stored import StoredFilter
    from stillroom.training import jobs

    settings = load_settings_or_fail(debug, database_url=database_url, config=config)
    console = Console()
    with database(settings.database_url, debug) as engine:
        pairs = parse_pairs(metadata)
        bases = [m.name for m in settings.load_models() if m.provider == "local"]
        options = DatasetOptions(
            validation_fraction=validation,
            system_prompt="strip" if strip_system else "keep",
            last_turn=last_turn,
            limit=limit,
        )
        writes = direct_writes(engine)
        dataset = build_dataset(
            engine,
            writes,
            LocalFileStorage(settings.files_dir),
            project,
            Selection(StoredFilter(metadata=pairs, model=model)),
            options,
            max_bytes=settings.max_file_bytes,
        )
        console.print(
            f"dataset: {dataset.training_examples} training, {dataset.validation_examples} validation examples "
            f"({dataset.training.id}); dropped {dict(dataset.dropped) or 'none'}"
        )
        body: dict[str, Any] = {"model": base, "training_file": dataset.training.id, "suffix": suffix}
        if dataset.validation is not None:
            body["validation_file"] = dataset.validation.id
        if n_epochs is not None:
            body["method"] = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n_epochs}}}
        job = jobs.create_job(engine, writes, project, body, bases)
        console.print(f"job {job['id']} created")
        if wait:
            final = follow_job(engine, project, job["id"], console)
            if final["status"] != "succeeded":
                raise StillroomError(f"job {job['id']} {final['status']}: {(final['error'] or {}).get('message')}")
            console.print(f"fine-tuned model: [bold]{final['fine_tuned_model']}[/bold]")


def follow_job(engine: Engine, project: str, job_id: str, console: Console, poll: float = 1.0) -> dict[str, Any]:
    """A progress bar with the live loss, until the job ends; returns the final job."""
    from stillroom.training import jobs

    seen: set[str] = set()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("validating_files", total=None, loss="-")
        while True:
            job = jobs.retrieve_job(engine, project, job_id)
            events = jobs.list_events(engine, project, job_id, after=None, limit="100")["data"]
            for event in reversed(events):
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                data = event.get("data") or {}
                if event["type"] == "metrics" and data.get("step") is not None:
                    loss = data.get("train_loss")
                    bar.update(
                        task,
                        completed=data["step"],
                        total=data.get("total_steps"),
                        loss=f"{loss:.4f}" if isinstance(loss, float) else "-",
                    )
                else:
                    bar.console.print(f"[dim]{format_time(event['created_at'])}[/dim] {event['message']}")
            bar.update(task, description=job["status"])
            if job["status"] in _TERMINAL:
                return job
            time.sleep(poll)


# --- jobs ---


@jobs_app.command("list")
def list_jobs(project: Project = "default", database_url: DatabaseUrl = None, debug: Debug = False) -> None:
    """Fine-tuning jobs, newest first."""
    from stillroom.training import jobs

    with database(database_url, debug) as engine:
        page = jobs.list_jobs(engine, project, metadata={}, after=None, limit="100")
    table = Table("id", "status", "model", "fine-tuned model", "created")
    for job in page["data"]:
        table.add_row(
            job["id"], job["status"], job["model"], job["fine_tuned_model"] or "-", format_time(job["created_at"])
        )
    Console().print(table)


@jobs_app.command("show")
def show_job(
    job_id: str,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Draw the loss curve into this PNG", dir_okay=False)
    ] = None,
    project: Project = "default",
    database_url: DatabaseUrl = None,
    debug: Debug = False,
) -> None:
    """One job: status, hyperparameters, result files, error; `--plot` draws its loss curve."""
    from stillroom.training import jobs

    with database(database_url, debug) as engine:
        job = jobs.retrieve_job(engine, project, job_id)
        metrics = _metrics(engine, project, job_id) if plot is not None else []
    table = Table("field", "value", show_header=False)
    for key in (
        "id",
        "status",
        "model",
        "fine_tuned_model",
        "training_file",
        "validation_file",
        "seed",
        "hyperparameters",
        "trained_tokens",
        "result_files",
        "error",
        "metadata",
    ):
        table.add_row(key, str(job[key]) if job[key] is not None else "-")
    table.add_row("created", format_time(job["created_at"]))
    table.add_row("finished", format_time(job["finished_at"]))
    Console().print(table)
    if plot is not None:
        _plot(metrics, plot, job_id)
        Console().print(f"loss curve: {plot}")


def _metrics(engine: Engine, project: str, job_id: str) -> list[dict[str, Any]]:
    points = [e["data"] for e in _all_events(engine, project, job_id) if e["type"] == "metrics" and e.get("data")]
    return sorted(points, key=lambda d: d.get("step", 0))


def _all_events(engine: Engine, project: str, job_id: str) -> list[dict[str, Any]]:
    """Every event of a job, newest first (as the API pages them)."""
    from stillroom.training import jobs

    events: list[dict[str, Any]] = []
    after = None
    while True:
        page = jobs.list_events(engine, project, job_id, after=after, limit="100")
        events += page["data"]
        if not page["has_more"]:
            return events
        after = page["data"][-1]["id"]


def _plot(metrics: list[dict[str, Any]], target: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    steps = [m["step"] for m in metrics if m.get("train_loss") is not None]
    axes.plot(steps, [m["train_loss"] for m in metrics if m.get("train_loss") is not None], label="training loss")
    valid = [(m["step"], m["valid_loss"]) for m in metrics if m.get("valid_loss") is not None]
    if valid:
        axes.plot(*zip(*valid, strict=True), "o-", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=120)
    plt.close(figure)


@jobs_app.command("events")
def job_events(
    job_id: str, project: Project = "default", database_url: DatabaseUrl = None, debug: Debug = False
) -> None:
    """A job's events, oldest first."""
    with database(database_url, debug) as engine:
        events = _all_events(engine, project, job_id)
    for event in reversed(events):
        typer.echo(f"{format_time(event['created_at'])} {event['level']:5} {event['message']}")


@jobs_app.command("cancel")
def cancel_job(
    job_id: str, project: Project = "default", database_url: DatabaseUrl = None, debug: Debug = False
) -> None:
    """Cancel a job; its worker stops training within seconds."""
    from stillroom.store.projects import direct_writes
    from stillroom.training import jobs

    with database(database_url, debug) as engine:
        job = jobs.cancel_job(engine, direct_writes(engine), project, job_id)
    typer.echo(f"{job['id']} {job['status']}")
