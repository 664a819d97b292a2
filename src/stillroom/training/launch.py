"""Training on several processes through Hugging Face accelerate's launcher, for `training_processes` > 1.

    result = train_launched(cfg, processes=2, launch_args=(), on_event=..., should_stop=...)

runs, in the job's output folder,

    python -m accelerate.commands.accelerate_cli launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no --main_process_port 0 [launch_args] \
        -m stillroom.training.launch launch/spec.json

(the `accelerate launch` command itself; `--multi_gpu` is its name for torch.distributed's launcher, which starts
the processes; accelerate's `--cpu` would start a single one). Each process trains on its share of every batch
(`trainer.py`): DDP over NCCL on GPUs, over gloo where there is no CUDA, which is how the tests run it on CPUs.
Only the main process writes the run's files, and its events as JSON lines (`launch/events.jsonl`), which
this side forwards to `on_event` as they come, then `launch/result.json`. A cancel ends the launcher's process
group with SIGTERM (torch.distributed's launcher then ends the training processes, which it starts in process
groups of their own, and each writes its pid to `launch/rank-N.pid`), then SIGKILLs whatever of them is left
after `STOP_GRACE_SECONDS`. A training process also ends itself within a second once its launcher or the worker
is gone (a worker killed with SIGKILL), even while it waits on the others in a collective. The launcher's output
goes to `launch/launch.log`, whose tail a failure quotes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stillroom.errors import BadRequestError
from stillroom.training.trainer import Event, TrainConfig, TrainingCancelled, TrainResult

STOP_GRACE_SECONDS = 5.0
_PATHS = ("base_model", "training_file", "validation_file", "output_dir")
_RESULT_PATHS = ("adapter_dir", "metrics_csv", "gguf_path", "adapter_gguf_path")


class LaunchFailed(RuntimeError):
    """The launched training exited with an error; the message quotes the end of its log."""


def launch_command(spec: Path, processes: int, launch_args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        *("-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"),
        *("--num_processes", str(processes), "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"),
        *launch_args,
        *("-m", "stillroom.training.launch", str(spec)),
    ]


def train_launched(
    cfg: TrainConfig,
    *,
    processes: int,
    launch_args: Sequence[str] = (),
    on_event: Callable[[Event], None],
    should_stop: Callable[[], bool],
    poll_seconds: float = 0.2,
) -> TrainResult:
    """`train(cfg)` on `processes` processes started by `accelerate launch`; the main one's events and result."""
    folder = cfg.output_dir / "launch"
    shutil.rmtree(folder, ignore_errors=True)  # nothing of an earlier run's events, pids or result
    folder.mkdir(parents=True)
    spec = folder / "spec.json"
    config = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    spec.write_text(json.dumps({"config": config, "watch_pid": os.getpid()}))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // processes))}
    events = _EventTail(folder / "events.jsonl")
    step = 0
    with (folder / "launch.log").open("wb") as log:
        process = subprocess.Popen(
            launch_command(spec, processes, launch_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: the launcher and every process it starts
        )
        try:
            while True:
                for event in events.read():
                    step = int((event.get("data") or {}).get("step", step))
                    on_event(event)
                if process.poll() is not None:
                    break
                if should_stop():
                    stop_launched(process, folder)
                    raise TrainingCancelled(step)
                time.sleep(poll_seconds)
        finally:
            stop_launched(process, folder)
    for event in events.read():  # written just before the end
        on_event(event)
    if process.returncode != 0:
        _raise_failure(folder, process.returncode)
    return _result(json.loads((folder / "result.json").read_text()))


def stop_launched(process: subprocess.Popen[bytes], folder: Path) -> None:
    """SIGTERM to the launcher's process group; SIGKILL to it and to each training process's group left after
    the grace period. Returns once they are all gone."""
    groups = [process.pid]  # the launcher's (start_new_session), then each training process's
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while True:
        process.poll()
        ranks = [int(p.read_text()) for p in folder.glob("rank-*.pid") if p.read_text().strip()]
        alive = [g for g in groups + ranks if _group_alive(g)]
        if not alive:
            return
        if time.monotonic() > deadline:
            for group in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class _EventTail:
    """The complete lines appended to a JSON-lines file since the last read (the file may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> Iterator[Event]:
        if not self.path.exists():
            return
        with self.path.open("rb") as source:
            source.seek(self.offset)
            data = source.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            event = json.loads(line)
            if event.get("type") == "checkpoint" and event.get("path"):
                event["path"] = Path(event["path"])
            yield event


def _raise_failure(folder: Path, returncode: int) -> None:
    error = folder / "error.json"
    if error.exists():  # refused by the trainer (a file without assistant turns...): the in-process error
        refused = json.loads(error.read_text())
        raise BadRequestError(refused["message"], param=refused.get("param"))
    tail = (folder / "launch.log").read_text(errors="replace").strip().splitlines()[-15:]
    raise LaunchFailed(f"accelerate launch exited with status {returncode}: " + "\n".join(tail))


def _result(values: dict[str, Any]) -> TrainResult:
    for name in _RESULT_PATHS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    values["checkpoints"] = [Path(p) for p in values.get("checkpoints", [])]
    return TrainResult(**values)


# --- in each launched process ---


def _main(spec_path: Path) -> int:
    from stillroom.errors import StillroomError
    from stillroom.training.trainer import train

    spec = json.loads(spec_path.read_text())
    config: dict[str, Any] = {k: Path(v) if k in _PATHS and v is not None else v for k, v in spec["config"].items()}
    folder = spec_path.parent
    is_main = int(os.environ.get("RANK", "0")) == 0
    (folder / f"rank-{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
    watched, launcher = int(spec["watch_pid"]), os.getppid()
    threading.Thread(target=_watch, args=(watched, launcher), name="launch-watch", daemon=True).start()
    with (folder / "events.jsonl").open("w") if is_main else open(os.devnull, "w") as events:

        def write(event: Event) -> None:
            events.write(json.dumps(event, default=str) + "\n")
            events.flush()

        try:
            result = train(TrainConfig(**config), on_event=write, should_stop=lambda: False)
        except TrainingCancelled:
            return 3
        except StillroomError as exc:
            if is_main:
                (folder / "error.json").write_text(json.dumps({"message": exc.message, "param": exc.param}))
            return 2
    if is_main:
        kept = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        kept.pop("model"), kept.pop("tokenizer")
        (folder / "result.json.tmp").write_text(json.dumps(kept, default=str))
        (folder / "result.json.tmp").rename(folder / "result.json")
    _end_process_group()
    return 0


def _watch(watched: int, launcher: int) -> None:
    """Ends this process once the worker or the launcher is gone: nobody would read what it writes."""
    while os.getppid() == launcher and _alive(watched):
        time.sleep(1.0)
    os._exit(4)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a reused pid would be too: good enough)
        return True
    return True


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1])))
