"""`stillroom serve` as a new user meets it: each common mistake ends in one `error:` line and exit status 1
(not a traceback), found before anything slow; a good start says what it serves and from which database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import free_port, start_server

UNREACHABLE = '[[models]]\nname = "remote"\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'


def serve(tmp_path: Path, *args: str, config: str | None = UNREACHABLE, env: dict[str, str] | None = None) -> str:
    """Run `stillroom serve` expecting it to refuse to start; its stderr."""
    command = [sys.executable, "-m", "stillroom", "serve", *args]
    if "--port" not in args:
        command += ["--port", str(free_port())]
    if "--database-url" not in args:
        command += ["--database-url", f"sqlite:///{tmp_path / 'stillroom.db'}"]
    if config is not None:
        (tmp_path / "models.toml").write_text(config)
        command += ["--config", str(tmp_path / "models.toml")]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")} | (env or {})
    # the timeout only guards against a server that starts after all; no test waits for it
    done = subprocess.run(command, capture_output=True, text=True, env=child_env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stderr)
    return done.stderr


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def test_a_missing_local_model_file_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(
        serve(tmp_path, config='[[models]]\nname = "tiny"\nprovider = "local"\npath = "no/such.gguf"\n')
    )
    assert "model 'tiny'" in line and "no/such.gguf" in line


def test_an_unwritable_sqlite_path_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    url = f"sqlite:///{tmp_path / 'a-file' / 'stillroom.db'}"
    line = one_error_line(serve(tmp_path, "--database-url", url))
    assert f"cannot use the database {url}" in line


def test_a_postgresql_database_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/stillroom_no_such_database"
    line = one_error_line(serve(tmp_path, "--database-url", url))
    assert f"cannot use the database {url}" in line and "does not exist" in line


@pytest.mark.parametrize(
    "command",
    [
        ["usage"],  # cli.py
        ["projects", "list"],  # cli_admin.py
        ["jobs", "list"],  # cli_jobs.py
        ["eval", "show", "evalrun_none"],  # cli_evals.py
    ],
    ids=lambda command: " ".join(command),
)
def test_every_cli_module_fails_in_one_line_on_a_missing_postgresql_database(
    tmp_path: Path, command: list[str]
) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/stillroom_no_such_database"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    done = subprocess.run(
        [sys.executable, "-m", "stillroom", *command, "--database-url", url],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    line = one_error_line(done.stderr)
    assert f"cannot use the database {url}" in line and "does not exist" in line
    assert done.stdout == ""


def test_a_port_in_use_is_found_before_the_database_is_opened(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the database does not exist either: the port must be the error reported, so it was checked first
        args = [
            "--port",
            str(port),
            "--database-url",
            "postgresql://postgres@127.0.0.1:5432/stillroom_no_such_database",
        ]
        line = one_error_line(serve(tmp_path, *args))
    assert line == f"error: port {port} on 127.0.0.1 is already in use; choose another with --port"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('[[models]]\nname = "a"\nprovider = "local"\ncolour = "red"\n', "models[0] ('a'): unknown key 'colour'"),
        (
            '[[models]]\nname = "g"\nprovider = "gemini"\n',
            "models[0] ('g'): unknown provider 'gemini' (expected 'openai', 'azure' or 'local')",
        ),
        ('[[models]]\nname = "o"\nprovider = "openai"\n', "models[0] ('o'): provider 'openai' needs base_url"),
        ('[[model]]\nname = "typo"\nprovider = "local"\n', "unknown key 'model'"),
        ("# nothing yet\n", "no [[models]] entries"),
        ('[[models]]\nname = "n"\nprovider = "local"\nn_ctx = "big"\n', "models[0] ('n'): n_ctx: input should be"),
    ],
)
def test_a_bad_model_list_is_one_line_naming_the_entry(tmp_path: Path, config: str, expected: str) -> None:
    line = one_error_line(serve(tmp_path, config=config))
    assert line.startswith(f"error: invalid config {tmp_path / 'models.toml'}: ")
    assert expected in line


def test_a_missing_upstream_key_variable_stops_serve_naming_it(tmp_path: Path) -> None:
    config = UNREACHABLE + 'api_key_env = "TEST_NO_SUCH_UPSTREAM_KEY"\n'
    line = one_error_line(serve(tmp_path, config=config))
    assert "model 'remote'" in line and "TEST_NO_SUCH_UPSTREAM_KEY" in line


def test_a_bad_setting_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    line = one_error_line(serve(tmp_path, env={"STILLROOM_MAX_BODY_BYTES": "lots"}))
    assert line.startswith("error: invalid setting STILLROOM_MAX_BODY_BYTES: ") and "'lots'" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    stderr = serve(tmp_path, "--debug", config="")
    assert "Traceback" in stderr and "ConfigError" in stderr


@pytest.fixture(scope="module")
def started(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server on PostgreSQL through a URL with a password (trust authentication ignores it); its log."""
    url = postgres_url.replace("postgres@", "postgres:hunter2-not-for-logs@")
    env = {"STILLROOM_API_KEYS": "a typo"}
    live = start_server(tmp_path_factory.mktemp("started"), url, config=UNREACHABLE, env=env, name="started")
    try:
        yield url, live.log()
    finally:
        live.stop()


def test_the_start_up_log_names_models_and_database_without_its_password(started: tuple[str, str]) -> None:
    url, log = started
    line = next(line for line in log.splitlines() if "stillroom: serving " in line)
    assert "remote (openai at http://127.0.0.1:9/v1) on http://127.0.0.1:" in line
    assert url.replace("hunter2-not-for-logs", "***") in line
    assert "hunter2" not in log
    assert "alembic" not in log  # its INFO lines (plugins, each migration) are silenced on the CLI


def test_an_unknown_setting_variable_is_warned_about(started: tuple[str, str]) -> None:
    assert "ignoring STILLROOM_API_KEYS: there is no such setting" in started[1]
