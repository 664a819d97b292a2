"""A small, cheap HTTP/1.1 load generator for the gateway benchmarks.

Two modes, both over keep-alive connections and one pre-serialised request:

* open loop (`LoadGen.open_loop`): requests are *scheduled* at a fixed rate (a Linux timerfd fires at each
  slot, so the schedule is exact to the kernel's timer, not to the event loop's millisecond timers), sent
  on an idle connection of a pool, and each one's latency is taken from its scheduled send time. A
  request that finds no idle connection waits in a queue and that wait counts in its latency, so a server
  that stalls cannot hide the requests it delayed (no coordinated omission). The run reports whether the
  target kept up: the rate it actually completed, errors, and requests still unanswered after a drain.
* closed loop (`closed_loop_wrk`, or `LoadGen.closed_loop` where wrk is missing): C connections, each
  sending its next request as soon as the previous answer arrives; the completed requests per second is
  the saturation throughput.

Raw asyncio protocols on uvloop: a request costs the generator a few microseconds, so at the rates
benchmarked it uses a few percent of its core.

Command line (from the repository root):

    .venv/bin/python -m bench.loadgen open  --url http://127.0.0.1:8080/v1/chat/completions \\
        --body-file body.json --rate 500 --duration 10
    .venv/bin/python -m bench.loadgen closed --url ... --body-file body.json --connections 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

NS = 1_000_000_000


# --- requests and responses --------------------------------------------------------------------------------


def build_request(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    """(host, port, the whole HTTP/1.1 POST as bytes) for `url`."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def percentiles_ms(latencies_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds (nearest-rank percentiles)."""
    if not latencies_ns:
        return {}
    ordered = sorted(latencies_ns)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))] / 1e6

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": ordered[-1] / 1e6,
        "mean": sum(ordered) / n / 1e6,
    }


class _Client(asyncio.Protocol):
    """One keep-alive connection: writes requests, parses responses (content-length or chunked)."""

    def __init__(self, on_response: Callable[[_Client, int, bytes, bytes], None], on_lost: Callable[[_Client], None]):
        self._on_response = on_response
        self._on_lost = on_lost
        self._buf = bytearray()
        self._head: bytes | None = None
        self._length = -1  # body bytes still expected; -2: chunked
        self._chunks = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.scheduled_ns = 0  # of the request in flight
        self.sent_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed"))
        self._on_lost(self)

    def send(self, request: bytes, scheduled_ns: int) -> None:
        assert self.transport is not None
        self.scheduled_ns = scheduled_ns
        self.sent_ns = time.monotonic_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self._head = head
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    self._length = int(head[i + 17 : j if j >= 0 else len(head)])
                elif b"transfer-encoding: chunked" in head:
                    self._length = -2
                    self._chunks = bytearray()
                else:
                    self._length = 0
            if self._length >= 0:
                if len(buf) < self._length:
                    return
                body = bytes(buf[: self._length])
                del buf[: self._length]
            else:  # chunked
                body_or_none = self._read_chunks(buf)
                if body_or_none is None:
                    return
                body = body_or_none
            head, self._head = self._head, None
            self._on_response(self, int(head[9:12]), head, body)

    def _read_chunks(self, buf: bytearray) -> bytes | None:
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return None
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # no trailers expected: "0\r\n\r\n"
                if end < 0:
                    return None
                del buf[: end + 4]
                return bytes(self._chunks)
            if len(buf) < eol + 2 + size + 2:
                return None
            self._chunks += buf[eol + 2 : eol + 2 + size]
            del buf[: eol + 2 + size + 2]


# --- an exact periodic timer -------------------------------------------------------------------------------


class _TimerFD:
    """A CLOCK_MONOTONIC timerfd firing every `period_ns` from `start_ns` (absolute). Linux only."""

    CLOCK_MONOTONIC = 1
    TFD_NONBLOCK = 0o4000
    TFD_CLOEXEC = 0o2000000
    TFD_TIMER_ABSTIME = 1

    class _Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def __init__(self, start_ns: int, period_ns: int) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.timerfd_create(self.CLOCK_MONOTONIC, self.TFD_NONBLOCK | self.TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", self._Timespec), ("it_value", self._Timespec)]

        spec = Itimerspec(
            self._Timespec(period_ns // NS, period_ns % NS), self._Timespec(start_ns // NS, start_ns % NS)
        )
        if libc.timerfd_settime(self.fd, self.TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def expirations(self) -> int:
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.fd)


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class OpenLoopResult:
    rate: float  # offered, requests/s
    duration_s: float
    scheduled: int
    completed: int
    ok: int  # 2xx
    errors: int  # non-2xx answers and broken connections
    unanswered: int  # still in flight or queued when the drain gave up
    achieved_rps: float  # answers received within the sending window, per second
    sustained: bool
    latency_ms: dict[str, float]  # from each request's scheduled send time
    service_ms: dict[str, float]  # from the moment it was written to its connection
    queued_max: int  # most requests that waited for a free connection at once
    marker_hits: int  # 2xx answers whose headers held the marker (e.g. x-stillroom-stored: true)
    sample_body: str = ""
    timer: str = "timerfd"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClosedLoopResult:
    connections: int
    duration_s: float
    completed: int
    ok: int
    errors: int
    rps: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    tool: str = "wrk"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the generator -----------------------------------------------------------------------------------------


class LoadGen:
    """A pool of keep-alive connections to one URL, reused across runs (call inside a running loop)."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str] | None = None, *, marker: bytes = b"") -> None:
        self.host, self.port, self.request = build_request(url, body, headers)
        self.marker = marker.lower()
        self._conns: list[_Client] = []
        self._idle: list[_Client] = []
        self._handler: Callable[[_Client, int, bytes, bytes], None] = lambda *_: None
        self._lost_handler: Callable[[_Client], None] = lambda _c: None

    async def connect(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        while len(self._conns) < n:
            _, proto = await loop.create_connection(lambda: _Client(self._dispatch, self._lost), self.host, self.port)
            await proto.connected
            self._conns.append(proto)

    def _dispatch(self, conn: _Client, status: int, head: bytes, body: bytes) -> None:
        self._handler(conn, status, head, body)

    def _lost(self, conn: _Client) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        self._lost_handler(conn)

    async def close(self) -> None:
        for conn in self._conns:
            if conn.transport is not None:
                conn.transport.close()
        self._conns.clear()
        await asyncio.sleep(0)

    async def open_loop(
        self, rate: float, duration: float, *, connections: int = 64, drain: float = 5.0, sustain_ratio: float = 0.97
    ) -> OpenLoopResult:
        """Send `rate` requests/s for `duration` seconds; latency counted from each scheduled send time."""
        await self.connect(connections)
        loop = asyncio.get_running_loop()
        period_ns = max(1, round(NS / rate))
        total = int(duration * NS // period_ns)
        start_ns = time.monotonic_ns() + 20_000_000  # 20 ms to set up
        end_ns = start_ns + total * period_ns
        idle = list(self._conns)
        waiting: deque[int] = deque()
        latencies: list[int] = []
        service: list[int] = []
        state = {"issued": 0, "completed": 0, "ok": 0, "errors": 0, "in_window": 0, "queued_max": 0, "hits": 0}
        sample: list[bytes] = []
        done = loop.create_future()
        request = self.request
        marker = self.marker

        def maybe_done() -> None:
            if state["issued"] >= total and state["completed"] >= total and not done.done():
                done.set_result(None)

        def issue(scheduled: int) -> None:
            if idle:
                idle.pop().send(request, scheduled)
            else:
                waiting.append(scheduled)
                if len(waiting) > state["queued_max"]:
                    state["queued_max"] = len(waiting)

        def on_response(conn: _Client, status: int, head: bytes, body: bytes) -> None:
            now = time.monotonic_ns()
            latencies.append(now - conn.scheduled_ns)
            service.append(now - conn.sent_ns)
            state["completed"] += 1
            if now <= end_ns:
                state["in_window"] += 1
            if 200 <= status < 300:
                state["ok"] += 1
                if marker and marker in head:
                    state["hits"] += 1
                if not sample:
                    sample.append(body)
            else:
                state["errors"] += 1
                if len(sample) < 2:
                    sample.append(body)
            if waiting:
                conn.send(request, waiting.popleft())
            else:
                idle.append(conn)
            maybe_done()

        def on_lost(conn: _Client) -> None:
            if conn in idle:
                idle.remove(conn)
            elif conn.scheduled_ns:
                state["completed"] += 1
                state["errors"] += 1
                maybe_done()

        self._handler, self._lost_handler = on_response, on_lost
        timer_kind = "timerfd"
        try:
            timer = _TimerFD(start_ns, period_ns)
        except (OSError, AttributeError):
            timer = None
            timer_kind = "call_at"

        if timer is not None:

            def on_tick() -> None:
                for _ in range(timer.expirations()):
                    if state["issued"] >= total:
                        break
                    issue(start_ns + state["issued"] * period_ns)  # the k-th expiry is slot k-1
                    state["issued"] += 1
                if state["issued"] >= total:
                    loop.remove_reader(timer.fd)
                    maybe_done()

            loop.add_reader(timer.fd, on_tick)
        else:  # millisecond ticks: sends whatever is due at each
            tick_ns = 1_000_000

            def on_tick() -> None:
                now = time.monotonic_ns()
                while state["issued"] < total and start_ns + state["issued"] * period_ns <= now:
                    issue(start_ns + state["issued"] * period_ns)
                    state["issued"] += 1
                if state["issued"] < total:
                    loop.call_at(loop.time() + tick_ns / NS, on_tick)
                else:
                    maybe_done()

            loop.call_at(loop.time() + (start_ns - time.monotonic_ns()) / NS, on_tick)

        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=duration + 0.02 + drain)
        except TimeoutError:
            pass
        finally:
            if timer is not None:
                loop.remove_reader(timer.fd)
                timer.close()
        unanswered = total - state["completed"]
        if unanswered:  # drop the connections that still have requests in flight: their answers are not wanted
            busy = [c for c in self._conns if c not in idle]
            for conn in busy:
                self._conns.remove(conn)
                if conn.transport is not None:
                    conn.transport.abort()
        self._handler, self._lost_handler = (lambda *_: None), (lambda _c: None)
        window_s = total * period_ns / NS
        achieved = state["in_window"] / window_s if window_s else 0.0
        sustained = state["errors"] == 0 and unanswered == 0 and achieved >= sustain_ratio * rate
        notes = []
        if achieved < sustain_ratio * rate:
            notes.append(f"completed {achieved:.0f}/s of {rate:.0f}/s offered")
        if state["errors"]:
            notes.append(f"{state['errors']} errors")
        if unanswered:
            notes.append(f"{unanswered} unanswered after a {drain:.0f}s drain")
        return OpenLoopResult(
            rate=rate,
            duration_s=window_s,
            scheduled=total,
            completed=state["completed"],
            ok=state["ok"],
            errors=state["errors"],
            unanswered=unanswered,
            achieved_rps=achieved,
            sustained=sustained,
            latency_ms=percentiles_ms(latencies),
            service_ms=percentiles_ms(service),
            queued_max=state["queued_max"],
            marker_hits=state["hits"],
            sample_body=b"".join(sample[:1]).decode("utf-8", "replace")[:2000],
            timer=timer_kind,
            note="; ".join(notes),
        )

    async def closed_loop(self, connections: int, duration: float) -> ClosedLoopResult:
        """Pure-Python saturation run (wrk is cheaper; use `closed_loop_wrk` where it is installed)."""
        await self.connect(connections)
        latencies: list[int] = []
        state = {"ok": 0, "errors": 0, "stop": False}
        request = self.request
        conns = list(self._conns)[:connections]

        def on_response(conn: _Client, status: int, head: bytes, body: bytes) -> None:
            now = time.monotonic_ns()
            latencies.append(now - conn.sent_ns)
            state["ok" if 200 <= status < 300 else "errors"] += 1
            if not state["stop"]:
                conn.send(request, now)

        self._handler = on_response
        t0 = time.monotonic_ns()
        for conn in conns:
            conn.send(request, t0)
        await asyncio.sleep(duration)
        state["stop"] = True
        elapsed = (time.monotonic_ns() - t0) / NS
        completed = state["ok"] + state["errors"]
        await asyncio.sleep(0.2)  # let the last answers land on their connections
        self._handler = lambda *_: None
        return ClosedLoopResult(
            connections=connections,
            duration_s=elapsed,
            completed=completed,
            ok=state["ok"],
            errors=state["errors"],
            rps=state["ok"] / elapsed,
            latency_ms=percentiles_ms(latencies),
            tool="python",
        )


# --- wrk for saturation ------------------------------------------------------------------------------------

_WRK_LUA = """
local f = assert(io.open(%(body)q, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"connect\\":%%d,\\"read\\":%%d,\\"write\\":%%d," ..
    "\\"status\\":%%d,\\"timeout\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d,\\"mean_us\\":%%f}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def closed_loop_wrk(
    url: str,
    body: bytes,
    *,
    connections: int,
    duration: int,
    headers: dict[str, str] | None = None,
    cpus: str | None = None,
    threads: int = 1,
) -> ClosedLoopResult:
    """Saturation throughput with wrk (C, HTTP/1.1 keep-alive, one request body set once in Lua)."""
    wrk = wrk_path()
    if wrk is None:
        raise FileNotFoundError("wrk is not installed")
    with tempfile.TemporaryDirectory(prefix="loadgen-wrk-") as tmp:
        body_path = Path(tmp) / "body.json"
        body_path.write_bytes(body)
        extra = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items())
        script = Path(tmp) / "post.lua"
        script.write_text(_lua(str(body_path), extra))
        cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url]
        if cpus is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", cpus, *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    data = json.loads(line[len("WRK_JSON ") :])
    errors = data["status"] + data["connect"] + data["read"] + data["write"] + data["timeout"]
    elapsed = data["duration_us"] / 1e6
    ok = max(0, data["requests"] - data["status"])
    return ClosedLoopResult(
        connections=connections,
        duration_s=elapsed,
        completed=data["requests"],
        ok=ok,
        errors=errors,
        rps=ok / elapsed if elapsed else 0.0,
        latency_ms={"p50": data["p50_us"] / 1000, "p99": data["p99_us"] / 1000, "mean": data["mean_us"] / 1000},
        tool="wrk",
    )


def _lua(body_path: str, extra_headers: str) -> str:
    return _WRK_LUA.replace("%(body)q", json.dumps(body_path)).replace("%(headers)s", extra_headers).replace("%%", "%")


# --- command line ------------------------------------------------------------------------------------------


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["open", "closed"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[], help="name: value (repeatable)")
    parser.add_argument("--rate", type=float, default=100.0, help="open: requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--python", action="store_true", help="closed: use the Python closed loop, not wrk")
    args = parser.parse_args()
    body = args.body_file.read_bytes()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    if args.mode == "closed" and not args.python and wrk_path():
        result: Any = closed_loop_wrk(
            args.url, body, connections=args.connections, duration=max(1, round(args.duration)), headers=headers
        )
    else:
        _install_uvloop()

        async def run() -> Any:
            gen = LoadGen(args.url, body, headers)
            try:
                if args.mode == "open":
                    return await gen.open_loop(args.rate, args.duration, connections=args.connections)
                return await gen.closed_loop(args.connections, args.duration)
            finally:
                await gen.close()

        result = asyncio.run(run())
    print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    main()
