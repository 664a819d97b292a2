"""Shared pieces of the storage benchmarks: realistic synthetic completions, the two databases, timing helpers.

The generator models real traffic: a few system prompts shared by many chats (a handful very popular),
conversations of 1-6 turns where each turn re-sends the whole history, user messages of 8-120 words,
answers of 50-400 words, 1-4 metadata pairs per conversation drawn from keys of varied cardinality, and
three models with a skewed split. Turns of many conversations interleave, as they do on a busy server.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from stillroom.store.completions import CompletionRecord
from stillroom.wire.ids import new_completion_id, new_request_id

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
WORK = Path(os.environ.get("STILLROOM_BENCH_DIR", "/tmp/stillroom-bench"))
PG_ADMIN = os.environ.get("STILLROOM_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PROJECT = "default"

# Metadata keys and how many values each takes (the value is drawn uniformly).
METADATA_KEYS = {"tag": 10, "user": 1000, "experiment": 3, "app": 4}
MODELS = (("gpt-4o-mini", 0.6), ("gpt-4.1", 0.3), ("o4-mini", 0.1))
UPSTREAM_NAMES = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4.1": "gpt-4.1-2025-04-14", "o4-mini": "o4-mini"}
N_SYSTEM_PROMPTS = 24


def meta_value(key: str, i: int) -> str:
    width = len(str(METADATA_KEYS[key] - 1))
    return f"{key[0]}{i:0{width}d}"


@dataclass(slots=True)
class _Conversation:
    system: dict[str, Any]
    system_len: int
    turns: int
    model: str
    metadata: dict[str, str]
    stream: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    history_len: int = 0  # bytes of the history's canonical JSON, summed per message
    done: int = 0


class Generator:
    """Endless stream of CompletionRecords (deterministic for a seed, apart from ids and timestamps)."""

    def __init__(self, seed: int = 1, active: int = 2000, corpus_words: int = 3_000_000) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        letters = "abcdefghijklmnopqrstuvwxyz"
        vocabulary = sorted({"".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(8000)})
        weights = [1.0 / (rank + 10) for rank in range(len(vocabulary))]  # Zipf-like word frequencies
        self.corpus = rng.choices(vocabulary, weights=weights, k=corpus_words)
        self.systems = [self._message("system", rng.randint(60, 600)) for _ in range(N_SYSTEM_PROMPTS)]
        self.system_weights = [1.0 / (rank + 1) for rank in range(N_SYSTEM_PROMPTS)]
        self.models = [m for m, _ in MODELS]
        self.model_weights = [w for _, w in MODELS]
        self.active = [self._conversation() for _ in range(active)]
        self.naive_bytes = 0  # what the records would take with messages stored inline, per completion
        self.generated = 0

    def _text(self, words: int) -> str:
        start = self.rng.randrange(len(self.corpus) - words)
        return " ".join(self.corpus[start : start + words])

    def _message(self, role: str, words: int) -> tuple[dict[str, Any], int]:
        message = {"role": role, "content": self._text(words)}
        return message, len(orjson.dumps(message, option=orjson.OPT_SORT_KEYS))

    def _conversation(self) -> _Conversation:
        rng = self.rng
        system, system_len = rng.choices(self.systems, weights=self.system_weights)[0]
        keys = rng.sample(list(METADATA_KEYS), rng.randint(1, len(METADATA_KEYS)))
        metadata = {k: meta_value(k, rng.randrange(METADATA_KEYS[k])) for k in keys}
        model = rng.choices(self.models, weights=self.model_weights)[0]
        return _Conversation(system, system_len, rng.randint(1, 6), model, metadata, rng.random() < 0.3)

    def record(self) -> CompletionRecord:
        rng = self.rng
        slot = rng.randrange(len(self.active))
        conv = self.active[slot]
        user, user_len = self._message("user", rng.randint(8, 120))
        messages = [conv.system, *conv.history, user]
        answer = self._text(rng.randint(50, 400))
        completion_id = new_completion_id()
        created = int(time.time())
        prompt_tokens = (conv.system_len + conv.history_len + user_len) // 4
        completion_tokens = len(answer) // 4
        response = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": UPSTREAM_NAMES[conv.model],
            "system_fingerprint": "fp_b376dfbbd5",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        }
        request: dict[str, Any] = {"model": conv.model, "store": True, "temperature": 0.7}
        if conv.stream:
            request["stream"] = True
            request["stream_options"] = {"include_usage": True}
        incomplete = conv.stream and rng.random() < 0.01
        record = CompletionRecord(
            id=completion_id,
            project_id=PROJECT,
            model=conv.model,
            provider="openai",
            request=request,
            response=response,
            messages=messages,
            metadata=conv.metadata,
            request_id=new_request_id(),
            stream=conv.stream,
            incomplete=incomplete,
            latency_ms=rng.uniform(300, 9000),
        )
        # Without content addressing, a row would hold request, response, metadata and the messages inline.
        self.naive_bytes += (
            len(orjson.dumps(request))
            + len(orjson.dumps(response))
            + len(orjson.dumps(conv.metadata))
            + conv.system_len
            + conv.history_len
            + user_len
            + len(messages)
            + 1
        )
        self.generated += 1
        conv.done += 1
        assistant = {"role": "assistant", "content": answer}
        assistant_len = len(orjson.dumps(assistant, option=orjson.OPT_SORT_KEYS))
        conv.history.extend((user, assistant))
        conv.history_len += user_len + assistant_len
        if conv.done >= conv.turns:
            self.active[slot] = self._conversation()
        return record

    def records(self, n: int) -> list[CompletionRecord]:
        return [self.record() for _ in range(n)]

    def request_bodies(self, n: int) -> Iterator[tuple[list[dict[str, Any]], dict[str, str]]]:
        """(messages, metadata) pairs for HTTP clients, following the same conversation model."""
        for _ in range(n):
            record = self.record()
            yield record.messages, record.metadata


# --- databases -------------------------------------------------------------------------------------------


def sqlite_url(name: str) -> str:
    return f"sqlite:///{WORK / name}.db"


def pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def url_for(backend: str, name: str) -> str:
    return sqlite_url(name) if backend == "sqlite" else pg_url(name)


def create_database(backend: str, name: str, *, fresh: bool) -> str:
    """The URL of a benchmark database; `fresh` drops what was there."""
    WORK.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        path = WORK / f"{name}.db"
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return sqlite_url(name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url(name)


def drop_database(backend: str, name: str) -> None:
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{WORK / name}.db{suffix}").unlink(missing_ok=True)
        return
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return tuple(row)


def database_bytes(backend: str, name: str) -> dict[str, int]:
    if backend == "sqlite":
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{WORK / name}.db{suffix}")
            sizes["file" + suffix] = path.stat().st_size if path.exists() else 0
        sizes["total"] = sum(sizes.values())
        return sizes
    with psycopg.connect(pg_url(name)) as conn:
        sizes = {"database": int(_one(conn, "SELECT pg_database_size(current_database())")[0])}
        for table in ("completions", "completion_metadata", "message_contents"):
            row = _one(
                conn,
                "SELECT pg_total_relation_size(%s), pg_relation_size(%s), pg_indexes_size(%s)",
                (table, table, table),
            )
            sizes[f"{table}.total"], sizes[f"{table}.heap"], sizes[f"{table}.indexes"] = map(int, row)
        sizes["total"] = sizes["database"]
        return sizes


# --- timing ----------------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def environment() -> dict[str, Any]:
    """What the figures were measured on (and what else was running)."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import sqlite3

        import sqlalchemy

        info["sqlite"] = sqlite3.sqlite_version
        info["sqlalchemy"] = sqlalchemy.__version__
        info["psycopg"] = psycopg.__version__
        with psycopg.connect(PG_ADMIN) as conn:
            info["postgresql"] = _one(conn, "SHOW server_version")[0]
            for setting in ("shared_buffers", "work_mem", "synchronous_commit", "random_page_cost"):
                info[f"pg_{setting}"] = _one(conn, f"SHOW {setting}")[0]
    except Exception as exc:  # informational only
        info["error"] = str(exc)
    try:
        info["git_head"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        info["git_dirty"] = subprocess.run(
            ["git", "status", "--short", "src"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split("\n")[:-1]
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        info["memory_gib"] = round(total / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def busy_processes(min_percent: float = 20.0) -> list[str]:
    """Other processes using CPU right now (this machine may be shared), sampled over half a second."""
    import psutil

    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
    time.sleep(0.5)
    busy = []
    for proc in procs:
        try:
            percent = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if percent >= min_percent and proc.pid != os.getpid():
            cmd = " ".join(proc.info.get("cmdline") or [proc.info.get("name") or "?"])
            busy.append(f"{percent:.0f}% {cmd[:120]}")
    return busy


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
