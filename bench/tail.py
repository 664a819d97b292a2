"""The latency tail of a stored call at a fixed rate, side by side with the bare upstream, in one run.

The overhead benchmark's 1000 req/s row (store:true on SQLite against the fake upstream, tests/fake_upstream.py),
with p90 and p99.9 as well as p50/p99, and with interleaved rounds so that both targets see the same machine:
each round measures the upstream directly, then each Stillroom variant, for `--seconds` each. A variant is
Stillroom from another src/ (`--src LABEL=PATH`, e.g. the code before a change) or with extra environment
(`--env LABEL=K=V,...`). Added latency = the variant's percentile minus the direct one of the same round; the
table reports the median over rounds.

    .venv/bin/python -m bench.tail --rate 1000 --seconds 10 --rounds 3 --src before=/tmp/old/src

Pins Stillroom to core 0 and the upstream and the load generator to core 1, as bench/overhead.py does; writes
bench/results/tail.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._common import RESULTS, environment
from bench.loadgen import LoadGen
from bench.overhead import (
    CLIENT_CPU,
    GATEWAY_CPU,
    PY,
    STORED_MARKER,
    _autogroup_nice,
    _run_async,
    can_pin,
    free_port,
    prioritise,
    request_body,
    start,
    wait_ready,
)

PERCENTILES = ("p50", "p90", "p99", "p999")


def _measure(url: str, body: bytes, rate: float, seconds: float, marker: bytes) -> dict[str, Any]:
    async def go() -> Any:
        gen = LoadGen(url, body, marker=marker)
        try:
            await gen.open_loop(rate, 2.0)  # warm-up
            return await gen.open_loop(rate, seconds)
        finally:
            await gen.close()

    result = _run_async(go())
    return {
        "sustained": result.sustained,
        "ok": result.ok,
        "marker_hits": result.marker_hits,
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", action="append", default=[], help="LABEL=PATH: Stillroom from PATH (a src/)")
    parser.add_argument("--env", action="append", default=[], help="LABEL=K=V[,K=V]: this checkout, extra env")
    parser.add_argument("--nice", type=int, default=-20 if os.geteuid() == 0 else 0)
    parser.add_argument("--output", type=Path, default=RESULTS / "tail.json")
    args = parser.parse_args()
    own_group_nice = _autogroup_nice()
    if args.nice:
        prioritise(os.getpid(), args.nice)
    if can_pin():
        os.sched_setaffinity(0, {CLIENT_CPU})
    gw, cl = (GATEWAY_CPU, CLIENT_CPU) if can_pin() else (None, None)
    variants: dict[str, dict[str, str]] = {"this checkout": {}}
    for spec in args.src:
        label, path = spec.split("=", 1)
        variants[label] = {"PYTHONPATH": path}
    for spec in args.env:
        label, pairs = spec.split("=", 1)
        variants[label] = dict(kv.split("=", 1) for kv in pairs.split(","))
    work = Path(tempfile.mkdtemp(prefix="stillroom-tail-"))
    up_port = free_port()
    (work / "s.toml").write_text(
        f'[[models]]\nname = "fake"\nprovider = "openai"\nbase_url = "http://127.0.0.1:{up_port}/v1"\n'
    )
    body = request_body(True)
    servers = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rounds: list[dict[str, Any]] = []
    try:
        up = start(
            "upstream",
            [str(PY), "-m", "tests.fake_upstream", "--port", str(up_port)],
            port=up_port,
            cpu=cl,
            workdir=work,
            env={},
        )
        servers.append(up)
        gateways = {}
        for i, (label, env) in enumerate(variants.items()):
            port = free_port()
            cmd = [str(PY), "-m", "stillroom", "serve", "--port", str(port), "--config", str(work / "s.toml")]
            cmd += ["--database-url", f"sqlite:///{work}/v{i}.db"]
            server = start(f"stillroom-{i}", cmd, port=port, cpu=gw, workdir=work, env=dict(env))
            servers.append(server)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            wait_ready(server, url, body, 60)
            server.pause()
            gateways[label] = (server, url)
        direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        for n in range(args.rounds):
            row: dict[str, Any] = {"direct": _measure(direct_url, body, args.rate, args.seconds, b"")}
            for label, (server, url) in gateways.items():
                server.resume()
                row[label] = _measure(url, body, args.rate, args.seconds, STORED_MARKER)
                server.pause()
            rounds.append(row)
            print(f"round {n + 1}: " + json.dumps({k: v["latency_ms"] for k, v in row.items()}), flush=True)
    finally:
        for s in reversed(servers):
            s.resume()
            s.stop()
        if args.nice and own_group_nice is not None:
            prioritise(os.getpid(), own_group_nice)
    summary: dict[str, Any] = {}
    for label in ["direct", *variants]:
        summary[label] = {
            p: round(statistics.median(r[label]["latency_ms"][p] for r in rounds), 3) for p in PERCENTILES
        }
        if label != "direct":
            summary[label]["added"] = {
                p: round(statistics.median(r[label]["latency_ms"][p] - r["direct"]["latency_ms"][p] for r in rounds), 3)
                for p in PERCENTILES
            }
            summary[label]["all_stored"] = all(r[label]["marker_hits"] == r[label]["ok"] for r in rounds)
            summary[label]["sustained"] = all(r[label]["sustained"] for r in rounds)
    result = {
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": rounds,
        "summary": summary,
        "variants": variants,
        "environment": environment(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'target':28} "
        + " ".join(f"{p:>7}" for p in PERCENTILES)
        + "   added: "
        + " ".join(f"{p:>7}" for p in PERCENTILES)
    )
    for label, s in summary.items():
        added = s.get("added", {})
        print(
            f"{label:28} "
            + " ".join(f"{s[p]:7.3f}" for p in PERCENTILES)
            + "          "
            + " ".join(f"{added[p]:7.3f}" if added else "      -" for p in PERCENTILES)
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
