"""Python graders in a separate, limited process: one process per graded item.

The child (`sandbox_child.py`, run with `python -I`) gets the source, sample and item on stdin, enters an
empty network namespace where the kernel allows it, limits its address space and CPU time, and refuses
sockets, subprocesses and ctypes through an audit hook. The parent enforces a wall-clock limit and kills
the whole process group past it. Whatever goes wrong (timeout, crash, exception, memory, a non-number)
comes back as `SandboxResult.error` for that one item; nothing is raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.errors import BadRequestError

_CHILD = Path(__file__).with_name("sandbox_child.py")
_STDERR_TAIL = 600


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SandboxResult:
    score: float | None
    error: str | None
    stderr: str = ""


def check_python_source(source: str) -> None:
    """Refuse source that does not compile or defines no `grade` (checked without running it)."""
    import ast

    try:
        tree = ast.parse(source, "<grader>")
    except SyntaxError as exc:
        raise BadRequestError(f"Invalid python grader source: {exc.msg} (line {exc.lineno}).", param="source") from None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    if "grade" not in defined:
        raise BadRequestError("A python grader's source must define grade(sample, item).", param="source")


def run_python_grader(
    source: str, sample: dict[str, Any], item: dict[str, Any], limits: SandboxLimits | None = None
) -> SandboxResult:
    limits = limits or SandboxLimits()
    request = json.dumps(
        {
            "source": source,
            "sample": sample,
            "item": item,
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": limits.cpu_seconds,
        }
    ).encode()
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    process = subprocess.Popen(
        [sys.executable, "-I", str(_CHILD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
        start_new_session=True,
    )
    try:
        out, err = process.communicate(request, timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.communicate()
        return SandboxResult(None, f"the grader timed out after {limits.wall_seconds:g} s")
    finally:
        _kill_group(process)  # nothing it started outlives it
    stderr = err.decode(errors="replace")[-_STDERR_TAIL:]
    return _interpret(process.returncode, out, stderr, limits)


def _interpret(returncode: int, out: bytes, stderr: str, limits: SandboxLimits) -> SandboxResult:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        if -returncode in (signal.SIGXCPU, signal.SIGKILL):
            return SandboxResult(None, f"the grader was stopped by {name} (CPU limit {limits.cpu_seconds} s)", stderr)
        return SandboxResult(None, f"the grader crashed ({name})", stderr)
    try:
        outcome = json.loads(out)
    except ValueError:
        if "MemoryError" in stderr:
            return SandboxResult(None, "the grader exceeded its memory limit", stderr)
        return SandboxResult(None, f"the grader process exited with {returncode} and no result", stderr)
    if "error" in outcome:
        message = str(outcome["error"])
        if outcome.get("kind") == "memory":
            message += f" ({limits.memory_bytes // (1024 * 1024)} MiB)"
        return SandboxResult(None, message, stderr)
    return SandboxResult(float(outcome["score"]), None, stderr)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
