"""Real `stillroom serve` processes, and the named fake upstream, for tests and benchmarks: started,
health-checked, stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def start_server(
    tmp: Path,
    database_url: str,
    *,
    config: str | None = None,
    api_key: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "server",
    extra_args: tuple[str, ...] = (),
) -> LiveServer:
    """Start `python -m stillroom serve` on a free port and wait until /health answers."""
    port = free_port()
    args = [sys.executable, "-m", "stillroom", "serve", "--port", str(port), "--database-url", database_url]
    args += extra_args
    if config is not None:
        config_path = tmp / f"{name}.toml"
        config_path.write_text(config)
        args += ["--config", str(config_path)]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    if api_key is not None:
        child_env["STILLROOM_API_KEY"] = api_key
    child_env.update(env or {})
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=tmp)
    server = LiveServer(f"http://127.0.0.1:{port}", database_url, process, log_path, api_key, env or {})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"{name} did not start:\n{server.log()}")


def start_worker(
    tmp: Path, database_url: str, *, config: str, env: dict[str, str] | None = None, name: str = "worker"
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `python -m stillroom worker` (no readiness signal: it claims jobs once it is up); returns the
    process and its log file."""
    config_path = tmp / f"{name}.toml"
    config_path.write_text(config)
    args = [sys.executable, "-m", "stillroom", "worker", "--database-url", database_url, "--config", str(config_path)]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")} | (env or {})
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=tmp)
    return process, log_path


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class FakeUpstream:
    url: str  # the base URL a model's `base_url` names: http://127.0.0.1:P/v1
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_fake_upstream(log_path: Path) -> FakeUpstream:
    """`python -m tests.fake_upstream` on a free port, returned once it accepts connections."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake upstream exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return FakeUpstream(f"http://127.0.0.1:{port}/v1", process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("fake upstream did not start")


def fake_models_config(upstream_url: str, models: dict[str, tuple[str, float | None]]) -> str:
    """A TOML model list: gateway name -> (fake upstream model name, timeout or None for the default)."""
    entries = []
    for name, (upstream_model, timeout) in models.items():
        entry = (
            f'[[models]]\nname = "{name}"\nprovider = "openai"\nbase_url = "{upstream_url}"\n'
            f'upstream_model = "{upstream_model}"\n'
        )
        if timeout is not None:
            entry += f"timeout = {timeout}\n"
        entries.append(entry)
    return "\n".join(entries)
