"""Does training slow the gateway down? store:true chat-completion latency of one `stillroom serve` (with its
worker process) against the named fake upstream (tests/fake_upstream.py, answers at once), while the worker is
idle and while it trains a LoRA on the bundled SmolLM2-135M (the users' path), in alternating rounds.

Each round offers the same open-loop rate for the same time; a training round first starts a fine-tuning job
(enough epochs to outlast the round) and waits for its first training step, then measures, then cancels the
job and waits for the worker to stop. Latency is counted from each request's scheduled send time.

    .venv/bin/python -m bench.train_interference [--rate 50] [--seconds 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from bench.loadgen import LoadGen
from tests.live import LiveServer, fake_models_config, start_fake_upstream, start_server

BASE = "smollm2-135m-instruct"
BODY = {
    "model": "fake",
    "messages": [{"role": "user", "content": "Say hello."}],
    "store": True,
    "metadata": {"bench": "train_interference"},
}
RESULTS = Path(__file__).resolve().parent / "results"


def _training_file(path: Path, n: int = 40) -> Path:
    colours = ["red", "green", "blue", "amber", "violet", "teal", "olive", "coral"]
    lines = []
    for i in range(n):
        colour = colours[i % len(colours)]
        messages = [
            {"role": "user", "content": f"Which colour is item {i}? It is {colour}. Please answer in the usual way."},
            {"role": "assistant", "content": f"Answer: {colour.upper()}."},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not happen within {timeout} s")


def _steps(sdk: openai.OpenAI, job_id: str) -> list[dict[str, Any]]:
    events = sdk.fine_tuning.jobs.list_events(job_id, limit=100).data
    return [e.data for e in events if e.type == "metrics" and e.data]


async def _measure(url: str, rate: float, seconds: float) -> dict[str, Any]:
    gen = LoadGen(url + "/v1/chat/completions", json.dumps(BODY).encode(), marker=b"x-stillroom-stored: true")
    try:
        await gen.open_loop(rate, 2.0, connections=16)  # warm-up
        result = await gen.open_loop(rate, seconds, connections=16)
    finally:
        await gen.close()
    return result.to_dict()


def _training_round(
    server: LiveServer, sdk: openai.OpenAI, file_id: str, rate: float, seconds: float
) -> dict[str, Any]:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 25, "batch_size": 4}}}
    job = sdk.fine_tuning.jobs.create(model=BASE, training_file=file_id, method=method)  # type: ignore[arg-type]
    _wait(lambda: _steps(sdk, job.id), 600, "the first training step")
    before = len(_steps(sdk, job.id))
    measured = asyncio.run(_measure(server.url, rate, seconds))
    steps = _steps(sdk, job.id)
    sdk.fine_tuning.jobs.cancel(job.id)
    _wait(
        lambda: any(e.message.startswith("Training stopped") for e in sdk.fine_tuning.jobs.list_events(job.id).data),
        120,
        "training stopping",
    )
    tokens = [s["tokens_per_second"] for s in steps if s.get("tokens_per_second")]
    measured["training"] = {
        "job": job.id,
        "steps_during_round": len(steps) - before,
        "median_tokens_per_second": statistics.median(tokens) if tokens else None,
    }
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured round")
    parser.add_argument("--rounds", type=int, default=2, help="idle/training round pairs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stillroom-train-bench-") as name:
        tmp = Path(name)
        fake = start_fake_upstream(tmp / "fake.log")
        config = fake_models_config(fake.url, {"fake": ("fake", None)})
        config += f'\n[[models]]\nname = "{BASE}"\nprovider = "local"\n'
        server = start_server(tmp, f"sqlite:///{tmp / 'bench.db'}", config=config, name="gateway")
        rounds: list[dict[str, Any]] = []
        try:
            with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
                training = sdk.files.create(file=_training_file(tmp / "train.jsonl"), purpose="fine-tune")
                for i in range(args.rounds):
                    idle = asyncio.run(_measure(server.url, args.rate, args.seconds))
                    rounds.append({"round": i, "worker": "idle", **idle})
                    busy = _training_round(server, sdk, training.id, args.rate, args.seconds)
                    rounds.append({"round": i, "worker": "training", **busy})
                    for entry in rounds[-2:]:
                        lat = entry["latency_ms"]
                        print(
                            f"round {i} {entry['worker']:8}: p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, "
                            f"p99 {lat['p99']:.2f} ms, ok {entry['ok']}/{entry['scheduled']}",
                            flush=True,
                        )
        finally:
            server.stop()
            fake.stop()
    summary = {
        kind: {
            q: statistics.median(r["latency_ms"][q] for r in rounds if r["worker"] == kind)
            for q in ("p50", "p90", "p99")
        }
        for kind in ("idle", "training")
    }
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "rate": args.rate,
        "seconds": args.seconds,
        "summary_median_of_rounds_ms": summary,
        "rounds": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_interference.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
