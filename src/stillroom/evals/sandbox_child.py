"""Runs one python grader inside the sandbox process (started by `sandbox.py`; never imported).

Reads `{"source", "sample", "item", "memory_bytes", "cpu_seconds"}` as JSON on stdin and writes
`{"score": float}` or `{"error": "..."}` as JSON to the original stdout; the grader's own prints go to
stderr. Before the grader's code runs it: drops into a fresh network namespace when the kernel allows
(so there is no interface to reach), sets address-space, CPU, file-size and open-file limits, and installs
an audit hook (which Python code cannot remove) refusing sockets, subprocesses, exec, fork and ctypes.
"""

import json
import os
import sys

_BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "_posixsubprocess")
_BLOCKED = {"os.system", "os.fork", "os.forkpty", "pty.spawn", "os.kill", "os.killpg", "urllib.Request"}


def _leave_network() -> str:
    """Enter an empty network namespace: as root directly, otherwise inside a new user namespace."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        clone_newnet, clone_newuser = 0x40000000, 0x10000000
        for flags in (clone_newnet, clone_newuser | clone_newnet):
            if libc.unshare(flags) == 0:
                return "namespace"
    except OSError:
        pass
    return "audit-hook"


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _audit(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if event in _BLOCKED or event.startswith(_BLOCKED_PREFIXES):
        raise PermissionError(f"{event} is not allowed in a python grader (no network, no processes)")


def main() -> None:
    result_fd = os.dup(1)
    os.dup2(2, 1)  # the grader's prints must not corrupt the result
    request = json.loads(sys.stdin.read())
    _leave_network()
    _limit(request["memory_bytes"], request["cpu_seconds"])
    sys.addaudithook(_audit)
    outcome: dict[str, object]
    try:
        namespace: dict[str, object] = {"__name__": "grader"}
        exec(compile(request["source"], "<grader>", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise TypeError("the source must define grade(sample, item)")
        score = grade(request["sample"], request["item"])
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise TypeError(f"grade() must return a number, not {type(score).__name__}")
        outcome = {"score": float(score)}
    except MemoryError:
        outcome = {"error": "the grader exceeded its memory limit", "kind": "memory"}
    except BaseException as exc:  # the edge of the sandbox: report whatever the grader raised
        outcome = {"error": f"{type(exc).__name__}: {exc}", "kind": "exception"}
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(outcome))


main()
