"""Real `stillroom serve` processes for tests and benchmarks: started, health-checked, stopped."""

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
) -> LiveServer:
    """Start `python -m stillroom serve` on a free port and wait until /health answers."""
    port = free_port()
    args = [sys.executable, "-m", "stillroom", "serve", "--port", str(port), "--database-url", database_url]
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
