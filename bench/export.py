"""Export throughput and memory: 1,000,000 stored completions as fine-tuning JSONL, via iter_training_rows and
via `stillroom export`, on both backends, reusing the databases bench/store_scale.py built.

    .venv/bin/python -m bench.export --backend both
    .venv/bin/python -m bench.export --backend sqlite --skip-tracemalloc

Each measurement runs in a fresh process, so its peak RSS (getrusage ru_maxrss, and psutil sampled every
20 ms) is its own. tracemalloc (Python allocations only) runs in a separate pass, because it slows the export.
Results: bench/results/export.json, docs/img/store_export.png.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench._common import IMAGES, RESULTS, WORK, busy_processes, environment, print_table, url_for, write_json

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = {"sqlite": "store_scale", "postgres": "stillroom_bench"}
RESULT_FILE = "export.json"


def worker(url: str, out: Path, use_tracemalloc: bool, metadata: dict[str, str]) -> None:
    """Runs in its own process: export everything to `out` and print one JSON line of figures."""
    from stillroom.export import iter_training_rows
    from stillroom.store.db import make_engine

    me = psutil.Process()
    engine = make_engine(url)
    with engine.connect():
        pass
    baseline_rss = me.memory_info().rss
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
    state = {"rows": 0, "peak": baseline_rss, "stop": False}
    series: list[tuple[float, int, int]] = []
    start = time.perf_counter()

    def sample() -> None:
        last = 0.0
        while not state["stop"]:
            rss = me.memory_info().rss
            state["peak"] = max(state["peak"], rss)
            now = time.perf_counter() - start
            if now - last >= 1.0:
                series.append((round(now, 1), state["rows"], rss))
                last = now
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    written = 0
    with out.open("wb") as fh:
        for row in iter_training_rows(engine, "default", metadata=metadata, model=None):
            line = orjson.dumps(row) + b"\n"
            fh.write(line)
            written += len(line)
            state["rows"] += 1
    elapsed = time.perf_counter() - start
    state["stop"] = True
    sampler.join()
    figures: dict[str, Any] = {
        "rows": state["rows"],
        "seconds": round(elapsed, 2),
        "rows_per_s": round(state["rows"] / elapsed),
        "bytes_written": written,
        "rss_baseline_bytes": baseline_rss,
        "rss_peak_sampled_bytes": state["peak"],
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_series": series,
    }
    if use_tracemalloc:
        import tracemalloc

        current, peak = tracemalloc.get_traced_memory()
        figures["tracemalloc_peak_bytes"] = peak
        figures["tracemalloc_current_bytes"] = current
        tracemalloc.stop()
    engine.dispose()
    print("RESULT " + orjson.dumps(figures).decode(), flush=True)


def _run_worker(url: str, out: Path, use_tracemalloc: bool, metadata: dict[str, str]) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.export", "--worker", "--url", url, "--out", str(out)]
    if use_tracemalloc:
        args.append("--tracemalloc")
    for k, v in metadata.items():
        args += ["-m", f"{k}={v}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-4000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = orjson.loads(line[7:])
    return result


def _run_cli(url: str, out: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """`stillroom export` as a user runs it; peak RSS from wait4's rusage of that very process."""
    args = [str(ROOT / ".venv" / "bin" / "stillroom"), "export", "-o", str(out), "--database-url", url]
    for k, v in metadata.items():
        args += ["-m", f"{k}={v}"]
    start = time.perf_counter()
    errors = out.with_suffix(".stderr")
    with errors.open("wb") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    watched = psutil.Process(proc.pid)
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it ourselves, to get its own rusage
        if pid:
            break
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"stillroom export failed: {errors.read_text()[-2000:]}")
    errors.unlink(missing_ok=True)
    rows = 0
    with out.open("rb") as fh:
        for _ in fh:
            rows += 1
    return {
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed),
        "bytes_written": out.stat().st_size,
        "rss_peak_sampled_bytes": peak,
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,
        "note": "wall time includes interpreter start and imports",
    }


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    url = url_for(backend, DB_NAME[backend])
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"export-{backend}.jsonl"
    result: dict[str, Any] = {"database_url": url, "busy_before": busy_processes()}
    print(f"[{backend}] iter_training_rows -> JSONL", flush=True)
    result["iter_training_rows"] = _run_worker(url, out, False, {})
    _show(backend, "iter_training_rows", result["iter_training_rows"])
    print(f"[{backend}] stillroom export", flush=True)
    result["cli"] = _run_cli(url, out, {})
    _show(backend, "stillroom export", result["cli"])
    result["cli_filtered_tag"] = _run_cli(url, out, {"tag": "t3"})
    _show(backend, "stillroom export -m tag=t3", result["cli_filtered_tag"])
    if not args.skip_tracemalloc:
        print(f"[{backend}] iter_training_rows under tracemalloc", flush=True)
        result["iter_training_rows_tracemalloc"] = _run_worker(url, out, True, {})
        _show(backend, "iter_training_rows (tracemalloc)", result["iter_training_rows_tracemalloc"])
    out.unlink(missing_ok=True)
    result["busy_after"] = busy_processes()
    return result


def _show(backend: str, label: str, r: dict[str, Any]) -> None:
    extra = f"  tracemalloc peak {r['tracemalloc_peak_bytes'] / 2**20:.1f} MiB" if "tracemalloc_peak_bytes" in r else ""
    print(
        f"[{backend}] {label:34s} {r['rows']:>9,} rows  {r['seconds']:7.1f} s  {r['rows_per_s']:>7,} rows/s  "
        f"peak RSS {r['ru_maxrss_bytes'] / 2**20:.0f} MiB{extra}",
        flush=True,
    )


def plot(results: dict[str, Any]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"sqlite": "#4C72B0", "postgres": "#DD8452"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for backend, res in results["backends"].items():
        series = res.get("iter_training_rows", {}).get("rss_series") or []
        if series:
            ax.plot(
                [s[1] for s in series],
                [s[2] / 2**20 for s in series],
                color=colours[backend],
                label=f"{backend}: {res['iter_training_rows']['rows_per_s']:,} rows/s",
            )
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("rows exported")
    ax.set_ylabel("process RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Export of 1,000,000 completions via iter_training_rows: process RSS")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / "store_export.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: dict[str, Any]) -> None:
    rows = []
    for backend, res in results["backends"].items():
        for key, label in (
            ("iter_training_rows", "iter_training_rows"),
            ("cli", "stillroom export"),
            ("cli_filtered_tag", "stillroom export -m tag=t3"),
            ("iter_training_rows_tracemalloc", "iter_training_rows + tracemalloc"),
        ):
            r = res.get(key)
            if r:
                rows.append(
                    [
                        backend,
                        label,
                        r["rows"],
                        r["seconds"],
                        r["rows_per_s"],
                        round(r["ru_maxrss_bytes"] / 2**20),
                        round(r["rss_peak_sampled_bytes"] / 2**20),
                        round(r["tracemalloc_peak_bytes"] / 2**20, 1) if "tracemalloc_peak_bytes" in r else "-",
                    ]
                )
    print()
    print_table(["backend", "how", "rows", "s", "rows/s", "ru_maxrss MiB", "RSS peak MiB", "tracemalloc MiB"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--skip-tracemalloc", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-m", dest="metadata", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.url, Path(args.out), args.tracemalloc, dict(p.split("=", 1) for p in args.metadata))
        return
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    path = RESULTS / RESULT_FILE
    results: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    results.setdefault("backends", {})
    results["environment"] = environment()
    results["command"] = "python -m bench.export " + " ".join(sys.argv[1:] if argv is None else argv)
    for backend in backends:
        res = run_backend(backend, args)
        res["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        results["backends"][backend] = res
        write_json(RESULT_FILE, results)
    image = plot(results)
    if image:
        print(f"wrote {image}")
    report(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
