"""Imports flow one way: api/web/cli -> domain -> store/providers/wire. The domain never sees the web framework."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "stillroom"
WEB = ("fastapi", "starlette", "stillroom.api", "stillroom.app", "stillroom.cli", "uvicorn")
DOMAIN_AND_BELOW = [
    p
    for p in PACKAGE.rglob("*.py")
    if not p.is_relative_to(PACKAGE / "api")
    and not p.is_relative_to(PACKAGE / "web")
    and p.name not in ("app.py", "cli.py", "__main__.py")
    and not p.name.startswith("cli_")  # cli_admin.py, cli_jobs.py, cli_evals.py: parts of the CLI
]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", DOMAIN_AND_BELOW, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_domain_and_lower_layers_never_import_the_web_layer(path: Path) -> None:
    bad = {name for name in _imports(path) if name.startswith(WEB)}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "store").rglob("*.py")) + sorted((PACKAGE / "wire").rglob("*.py")))
def test_store_and_wire_never_import_the_domain(path: Path) -> None:
    domain = ("stillroom.gateway", "stillroom.stored", "stillroom.export", "stillroom.services", "stillroom.providers")
    assert not {name for name in _imports(path) if name.startswith(domain)}


def test_only_store_imports_sqlalchemy() -> None:
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if not p.is_relative_to(PACKAGE / "store") and any(n.startswith("sqlalchemy") for n in _imports(p))
    ]
    assert offenders == []
