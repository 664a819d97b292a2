"""The documentation checks itself: every setting, model key and command is documented, and the README's test
command is the one CI runs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from stillroom.cli import app
from stillroom.config import ModelConfig, Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
README = (ROOT / "README.md").read_text()
CI_RUN = ROOT / ".ci" / "run"


def _commands(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every command and group under the Typer app, as `stillroom db upgrade`-style paths."""
    for name, sub in getattr(command, "commands", {}).items():
        yield f"{path} {name}", sub
        yield from _commands(sub, f"{path} {name}")


COMMANDS = dict(_commands(typer.main.get_command(app), "stillroom"))


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented_with_its_env_var_and_description(name: str) -> None:
    assert f"`STILLROOM_{name.upper()}`" in CONFIGURATION
    description = Settings.model_fields[name].description
    assert description, f"Settings.{name} has no description"
    assert description in CONFIGURATION


@pytest.mark.parametrize("name", sorted(ModelConfig.model_fields))
def test_every_model_key_is_documented_with_its_description(name: str) -> None:
    assert f"| `{name}` |" in CONFIGURATION
    description = ModelConfig.model_fields[name].description
    if description is not None:
        assert description in CONFIGURATION


def test_the_command_walk_finds_the_db_subgroup() -> None:
    assert {"stillroom serve", "stillroom db", "stillroom db upgrade", "stillroom usage", "stillroom version"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_and_option_is_documented(path: str) -> None:
    assert f"`{path}" in CONFIGURATION
    for param in COMMANDS[path].params:
        for option in [*param.opts, *param.secondary_opts]:
            assert f"`{option}`" in CONFIGURATION, f"{path} {option}"


def _ci_test_command() -> str:
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    commands = [line for line in lines if not line.startswith("#") and ".venv/bin/pytest" in line]
    assert len(commands) == 1, commands
    return commands[0]


def test_readme_shows_the_test_command_that_ci_runs() -> None:
    command = _ci_test_command()
    assert command.startswith("python3 -m venv .venv && ")
    fenced = re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
    assert command in [line.strip() for block in fenced for line in block.splitlines()]


def test_ci_run_is_an_executable_strict_bash_script() -> None:
    text = CI_RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(CI_RUN, os.X_OK)
    assert text.rstrip().splitlines()[-1].strip() == _ci_test_command(), "its status must be the script's status"
