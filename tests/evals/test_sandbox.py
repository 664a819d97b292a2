"""Python graders run in a limited process: each way a grader can go wrong fails that item, with the reason."""

from __future__ import annotations

import socket

import pytest

from stillroom.evals.sandbox import SandboxLimits, run_python_grader

FAST = SandboxLimits(wall_seconds=5, cpu_seconds=2, memory_bytes=256 * 1024 * 1024)


def test_a_grader_returns_its_score_and_its_prints_do_not_corrupt_it() -> None:
    source = "def grade(sample, item):\n    print('thinking')\n    return len(sample['output_text']) / 10\n"
    result = run_python_grader(source, {"output_text": "abcde"}, {}, FAST)
    assert (result.score, result.error) == (0.5, None)
    assert "thinking" in result.stderr


def test_a_grader_that_loops_forever_is_stopped() -> None:
    result = run_python_grader("def grade(sample, item):\n    while True:\n        pass\n", {}, {}, FAST)
    assert result.score is None
    assert result.error is not None and ("CPU limit" in result.error or "timed out" in result.error)


def test_a_grader_that_sleeps_past_the_wall_clock_limit_is_killed() -> None:
    limits = SandboxLimits(wall_seconds=1, cpu_seconds=5)
    result = run_python_grader("import time\ndef grade(sample, item):\n    time.sleep(60)\n", {}, {}, limits)
    assert result.error == "the grader timed out after 1 s"


def test_a_grader_that_exhausts_memory_fails_with_the_limit() -> None:
    source = "def grade(sample, item):\n    hoard = []\n    while True:\n        hoard.append(bytearray(10**7))\n"
    result = run_python_grader(source, {}, {}, FAST)
    assert result.error is not None and "memory limit" in result.error and "256 MiB" in result.error


def test_a_grader_that_raises_reports_the_exception() -> None:
    result = run_python_grader("def grade(sample, item):\n    raise ValueError('bad sample')\n", {}, {}, FAST)
    assert result.error == "ValueError: bad sample"


def test_a_grader_that_opens_a_socket_fails() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        source = (
            "import socket\n"
            "def grade(sample, item):\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    return 1.0\n"
        )
        result = run_python_grader(source, {}, {}, FAST)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert result.score is None
    assert result.error is not None and "not allowed" in result.error


def test_raw_socket_module_is_refused_too() -> None:
    source = "import _socket\ndef grade(sample, item):\n    _socket.socket()\n    return 1.0\n"
    result = run_python_grader(source, {}, {}, FAST)
    assert result.error is not None and "not allowed" in result.error


@pytest.mark.parametrize(
    "body",
    [
        "import subprocess\n    subprocess.run(['true'])",
        "import os\n    os.system('true')",
        "import ctypes\n    ctypes.CDLL(None)",
    ],
)
def test_processes_and_ctypes_are_refused(body: str) -> None:
    result = run_python_grader(f"def grade(sample, item):\n    {body}\n    return 1.0\n", {}, {}, FAST)
    assert result.error is not None and "not allowed" in result.error


def test_a_crashing_grader_reports_the_signal() -> None:
    result = run_python_grader("import os\ndef grade(sample, item):\n    os.abort()\n", {}, {}, FAST)
    assert result.error == "the grader crashed (SIGABRT)"


def test_a_grader_must_return_a_number() -> None:
    result = run_python_grader("def grade(sample, item):\n    return 'yes'\n", {}, {}, FAST)
    assert result.error == "TypeError: grade() must return a number, not str"
