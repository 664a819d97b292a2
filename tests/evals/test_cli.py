"""`stillroom eval` and `stillroom eval show --plot` on a SQLite database of stored answers."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from typer.testing import CliRunner

from stillroom.cli import app
from stillroom.cli_evals import _create, _execute
from stillroom.config import Settings
from stillroom.store import evals as store
from stillroom.store.db import make_engine
from stillroom.store.migrate import upgrade_database
from tests.evals.test_runs import store_answer


def test_eval_grades_stored_answers_and_show_plots(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    upgrade_database(engine)
    for answer in ("Dear customer, done.", "Dear customer, shipped.", "Hi there"):
        store_answer(engine, "default", "q", answer, {"task": "cli"})
    engine.dispose()
    runner = CliRunner()
    env = {"COLUMNS": "200", "STILLROOM_FILES_DIR": str(tmp_path / "files")}
    result = runner.invoke(app, ["eval", "-m", "task=cli", "-g", "like:Dear customer", "--database-url", url], env=env)
    assert result.exit_code == 0, result.output
    assert "2/3" in result.output and "66.7%" in result.output
    run_id = re.search(r"evalrun_[0-9a-f]{32}", result.output)
    assert run_id is not None
    plot = tmp_path / "out.png"
    shown = runner.invoke(app, ["eval", "show", run_id.group(0), "--plot", str(plot), "--database-url", url], env=env)
    assert shown.exit_code == 0, shown.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_refuses_an_unknown_grader_shorthand(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "-g", "glob:x", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code != 0 and "OP:REFERENCE" in result.output


def test_eval_waits_for_a_run_another_worker_holds_and_takes_it_over_when_its_lease_ends(tmp_path: Path) -> None:
    """A `serve` sharing the database may claim the CLI's run first: the CLI must not print before it ends."""
    url = f"sqlite:///{tmp_path / 'held.db'}"
    engine = make_engine(url)
    upgrade_database(engine)
    for answer in ("Dear customer, done.", "Hi there"):
        store_answer(engine, "default", "q", answer, {"task": "held"})
    (run_id,) = _create(engine, "default", ["task=held"], ["like:Dear customer"], [], True, "full", 16, None, None)
    assert store.claim_run(engine, "a-serve-elsewhere", lease_seconds=1.0, now=time.time(), only=[run_id])
    asyncio.run(_execute(Settings(database_url=url, files_dir=tmp_path / "files"), engine, [run_id]))
    run = store.get_run(engine, "default", None, run_id)
    assert run is not None and run.status == "completed"
    assert run.result_counts == {"total": 2, "errored": 0, "failed": 1, "passed": 1}
    engine.dispose()
