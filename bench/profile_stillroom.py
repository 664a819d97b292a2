"""Diagnose Stillroom's per-request cost at a fixed rate (a helper for bench/overhead.py; changes nothing in src/).

Starts the fake upstream (core 1) and Stillroom (core 0) as the overhead benchmark does, sends an open-loop
load with `store: true` or `false`, and reports latency, Stillroom's CPU per request, the group-commit batch
size (from /health) and how long Stillroom's threads waited for the CPU. Optionally:

* `--pyspy PATH/TO/py-spy`: records Stillroom's threads meanwhile (raw folded stacks, summarised);
* `--switch-interval S`: starts Stillroom with `sys.setswitchinterval(S)` (default 5 ms), to test whether the
  event loop waits on the GIL held by the commit thread;
* `--env K=V`: Stillroom settings (e.g. STILLROOM_SQLITE_SYNCHRONOUS=OFF, STILLROOM_COMMIT_BATCH_SIZE=1).

    .venv/bin/python -m bench.profile_stillroom --rate 1000 --seconds 10 [--nostore] [--pyspy /tmp/x/py-spy]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.overhead import (
    CLIENT_CPU,
    GATEWAY_CPU,
    PY,
    ROOT,
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


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return json.loads(r.read())["store"]  # type: ignore[no-any-return]


def summarise(raw: Path, top: int = 25) -> str:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        threads[frames[0][:50]] += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"samples {total}; by thread root: {threads.most_common(4)}", "self:"]
    out += [f"  {n / total * 100:5.1f}% {f[:150]}" for f, n in self_c.most_common(top)]
    out.append("inclusive (stillroom, sqlite, aiohttp, orjson, asyncio):")
    keys = ("stillroom", "sqlite", "aiohttp", "asyncio", "orjson", "hashlib", "threading", "queue", "uvicorn")
    shown = [(f, n) for f, n in incl.most_common() if any(k in f for k in keys)][:top]
    out += [f"  {n / total * 100:5.1f}% {f[:150]}" for f, n in shown]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--nostore", action="store_true")
    parser.add_argument("--pyspy", help="path to a py-spy binary")
    parser.add_argument("--pyspy-args", default="--threads --nonblocking -r 500", help="extra py-spy record args")
    parser.add_argument("--switch-interval", type=float)
    parser.add_argument("--wal-autocheckpoint", type=int, help="SQLite wal_autocheckpoint pages (0: never)")
    parser.add_argument("--env", action="append", default=[], help="K=V for Stillroom")
    parser.add_argument("--nice", type=int, default=-20 if os.geteuid() == 0 else 0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    own_group_nice = _autogroup_nice()
    if args.nice:
        prioritise(os.getpid(), args.nice)
    if can_pin():
        os.sched_setaffinity(0, {CLIENT_CPU})
    gw, cl = (GATEWAY_CPU, CLIENT_CPU) if can_pin() else (None, None)
    work = Path(tempfile.mkdtemp(prefix="stillroom-profile-"))
    up_port, sr_port = free_port(), free_port()
    (work / "s.toml").write_text(
        f'[[models]]\nname = "fake"\nprovider = "openai"\nbase_url = "http://127.0.0.1:{up_port}/v1"\n'
    )
    serve = [
        "serve",
        "--port",
        str(sr_port),
        "--config",
        str(work / "s.toml"),
        "--database-url",
        f"sqlite:///{work}/s.db",
    ]
    prelude = []
    if args.switch_interval is not None:
        prelude.append(f"import sys; sys.setswitchinterval({args.switch_interval})")
    if args.wal_autocheckpoint is not None:  # a class-level listener: runs after db.py's own pragmas
        prelude.append(
            "from sqlalchemy import event; from sqlalchemy.engine import Engine\n"
            "@event.listens_for(Engine, 'connect')\n"
            "def _wal(c, _r):\n"
            f"    if 'sqlite' in type(c).__module__: c.execute('PRAGMA wal_autocheckpoint={args.wal_autocheckpoint}')"
        )
    if prelude:
        code = "\n".join(
            [*prelude, "import sys; sys.argv = ['stillroom', *sys.argv[1:]]", "from stillroom.cli import app; app()"]
        )
        sr_cmd = [str(PY), "-c", code, *serve]
    else:
        sr_cmd = [str(ROOT / ".venv" / "bin" / "stillroom"), *serve]
    env = dict(kv.split("=", 1) for kv in args.env)
    servers = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
        sr = start("stillroom", sr_cmd, port=sr_port, cpu=gw, workdir=work, env=env)
        servers.append(sr)
        url = f"http://127.0.0.1:{sr_port}/v1/chat/completions"
        body = request_body(not args.nostore)
        wait_ready(sr, url, body, 60)

        async def go(seconds: float) -> Any:
            gen = LoadGen(url, body, marker=STORED_MARKER)
            try:
                await gen.open_loop(args.rate, 2.0)
                return await gen.open_loop(args.rate, seconds)
            finally:
                await gen.close()

        for _ in range(args.repeat):
            h0 = health(sr_port)
            cpu0, wait0, t0 = sr.cpu_seconds(), sr.run_delay_seconds(), time.monotonic()
            spy = None
            if args.pyspy:
                raw = work / "stillroom.raw"
                spy = subprocess.Popen(
                    [
                        args.pyspy,
                        "record",
                        "-p",
                        str(sr.pid),
                        "-d",
                        str(int(args.seconds) + 2),
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                        *args.pyspy_args.split(),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            result = _run_async(go(args.seconds))
            cpu1, wait1, t1 = sr.cpu_seconds(), sr.run_delay_seconds(), time.monotonic()
            h1 = health(sr_port)
            batches = h1["batches"] - h0["batches"]
            committed = h1["committed"] - h0["committed"]
            print(
                json.dumps(
                    {
                        "rate": args.rate,
                        "store": not args.nostore,
                        "switch_interval": args.switch_interval,
                        "wal_autocheckpoint": args.wal_autocheckpoint,
                        "env": env,
                        "sustained": result.sustained,
                        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
                        "service_ms": {k: round(v, 3) for k, v in result.service_ms.items()},
                        "cpu_ms_per_request": round((cpu1 - cpu0) / max(1, result.ok) * 1000, 3),
                        "stillroom_cores": round((cpu1 - cpu0) / (t1 - t0), 3),
                        "run_delay_ms_per_s": round((wait1 - wait0) / (t1 - t0) * 1000, 1),
                        "commits": batches,
                        "mean_batch": round(committed / batches, 2) if batches else None,
                        "queued_max": result.queued_max,
                    }
                )
            )
            if spy is not None:
                spy.wait(60)
                print(summarise(work / "stillroom.raw"))
    finally:
        for s in reversed(servers):
            s.stop()
        if args.nice and own_group_nice is not None:
            prioritise(os.getpid(), own_group_nice)  # our session's group is the calling shell's too


if __name__ == "__main__":
    main()
