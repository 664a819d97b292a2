"""End-to-end distillation through the product, as a user runs it: capture, Distill, fine-tune, serve, evaluate.

    .venv/bin/python -m bench.distill            # full run: 220 training prompts, 150 held out (<= 15 min, 2 cores)
    .venv/bin/python -m bench.distill --quick    # smoke run: 30 / 20 prompts, 1 epoch (2-5 min)

Everything comes from what the packages ship, and every step goes through one real `stillroom serve` (which
starts its own worker process) and the `openai` SDK. The task is context distillation of a reply format (the
kind of behaviour worked examples teach a 135M model; see shared/spec/distillation-notes.md):

1. capture: the teacher is the bundled SmolLM2 with a system prompt asking for `Answer: <a few words>.` plus
   two worked examples as user/assistant turns; it answers the training and the held-out questions with
   `store=True` and metadata `{"bench": <run tag>, "split": "train" | "held_out"}`;
2. dataset: `POST /v1/fine_tuning/datasets` (Distill) selects the `split=train` completions, strips the
   system prompt and keeps only the last exchange (`last_turn`: the two worked examples are dropped): the
   student learns {question -> teacher's answer} with no prompt at all;
3. fine-tuning: `fine_tuning.jobs.create` on `smollm2-135m-instruct` (seed 0, `--epochs` 2; auto picks 3,
   half as much training again), followed through `jobs.retrieve` and `jobs.list_events` (step, loss, ETA)
   until it succeeds; the worker trains the LoRA and registers the merged Q8_0 student as
   `ft:smollm2-135m-instruct:default:bench:<job>`, which the same gateway lists in `/v1/models` and answers;
4. grading: one eval (`evals.create`, a `logs` source on `split=held_out`, a `python` grader: one line,
   `Answer: ` then 1-8 words) and three `completions` runs on the same held-out items: the teacher's stored
   answers (no model), then base and student sampled on `{{item.user_text}}` alone (temperature 0, seed 1);
5. comparison: `GET /v1/evals/{id}/comparison` (Wilson 95% intervals; McNemar's exact test and a paired
   bootstrap against the first run), once with base first and once with teacher first, plus the table
   `stillroom eval show` prints; `gap closed` = (student - base) / (teacher - base);
6. speed: base and student each decode 128 tokens (end-of-text banned) through the gateway's chat completions,
   the order flipping each round, best of `--speed-rounds`, in this one run.

Results: bench/results/distill.json and .md, plot docs/img/distill.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
MODEL = "smollm2-135m-instruct"
TERMINAL = ("succeeded", "failed", "cancelled")

SYSTEM = (
    "You are a terse quiz assistant. Reply with exactly one line of the form 'Answer: <answer in a few words>.' "
    "Never explain, never add a second sentence, never greet."
)
EXAMPLES = [
    {"role": "user", "content": "What is the capital of Italy?"},
    {"role": "assistant", "content": "Answer: Rome."},
    {"role": "user", "content": "How many days are in a week?"},
    {"role": "assistant", "content": "Answer: Seven."},
]
GRADER = {
    "type": "python",
    "name": "answer-format",
    "source": (
        "import re\n\n\n"
        "def grade(sample, item):\n"
        "    text = (sample.get('output_text') or '').strip()\n"
        "    return 1.0 if re.match(r'^Answer: \\S+(?: \\S+){0,7}$', text) else 0.0\n"
    ),
}

_SUBJECTS = {
    "country": [
        "France",
        "Spain",
        "Japan",
        "Kenya",
        "Peru",
        "Canada",
        "Egypt",
        "Norway",
        "Chile",
        "India",
        "Brazil",
        "Greece",
        "Poland",
        "Ghana",
        "Nepal",
        "Cuba",
        "Iran",
        "Mali",
        "Laos",
        "Fiji",
    ],
    "animal": ["cat", "spider", "horse", "ant", "snake", "duck", "octopus", "crab", "bee", "whale", "owl", "frog"],
    "thing": ["banana", "the sky", "grass", "snow", "a ruby", "coal", "an orange", "milk", "a lemon", "blood"],
    "word": ["hot", "tall", "fast", "happy", "early", "heavy", "open", "loud", "young", "rich", "dark", "wet"],
    "job": ["baker", "pilot", "nurse", "farmer", "judge", "plumber", "teacher", "chef", "tailor", "miner"],
    "object": ["a hammer", "a kettle", "a compass", "a ladder", "a stapler", "a thermometer", "a broom", "a key"],
}
_TEMPLATES = [
    ("What is the capital of {country}?", "country"),
    ("Which continent is {country} in?", "country"),
    ("What language is mostly spoken in {country}?", "country"),
    ("How many legs does a {animal} have?", "animal"),
    ("Where does a {animal} usually live?", "animal"),
    ("What colour is {thing}?", "thing"),
    ("What is the opposite of '{word}'?", "word"),
    ("Give a synonym for '{word}'.", "word"),
    ("What does a {job} do?", "job"),
    ("Where does a {job} usually work?", "job"),
    ("What is {object} used for?", "object"),
]


def questions(n: int, seed: int) -> list[str]:
    """`n` distinct questions: every template x subject, then sums, in a seeded order."""
    pool = [t.format(**{kind: s}) for t, kind in _TEMPLATES for s in _SUBJECTS[kind]]
    rng = random.Random(seed)
    while len(pool) < n:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        pool.append(f"What is {a} plus {b}?")
        pool = list(dict.fromkeys(pool))
    rng.shuffle(pool)
    return pool[:n]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. capture ---


def capture(client: Any, items: list[str], metadata: dict[str, str], max_tokens: int) -> None:
    """The teacher (prompt + worked examples) answers each question; stored with `metadata`."""
    for n, question in enumerate(items, 1):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": SYSTEM}, *EXAMPLES, {"role": "user", "content": question}],
            temperature=0,
            seed=1,
            max_tokens=max_tokens,
            store=True,
            metadata=metadata,
        )
        if n % 50 == 0 or n == len(items):
            log(f"teacher: {n}/{len(items)} {metadata['split']} answers stored")


# --- 2. dataset ---


def make_dataset(client: Any, metadata: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Distill the stored training split (system prompt and worked-example turns dropped); returns the training
    file's id and the Distill answer's counts."""
    body = {"metadata": metadata, "system_prompt": "strip", "last_turn": True, "seed": 0}
    import httpx

    answer = httpx.post(f"{client.base_url}fine_tuning/datasets", json=body, timeout=120)  # a Stillroom route
    answer.raise_for_status()
    dataset = answer.json()
    file_id = dataset["training_file"]["id"]
    log(f"dataset: {dataset['counts']} -> {file_id} (system prompt and worked examples dropped)")
    return file_id, dataset["counts"]


# --- 3. fine-tuning ---


def fine_tune(client: Any, file_id: str, args: argparse.Namespace, tag: str) -> tuple[Any, list[Any]]:
    hyperparameters: dict[str, Any] = {}
    if args.epochs is not None:
        hyperparameters["n_epochs"] = args.epochs
    if args.lr_multiplier is not None:
        hyperparameters["learning_rate_multiplier"] = args.lr_multiplier
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=file_id,
        suffix="bench",
        seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        metadata={"bench": tag},
    )
    log(f"job {job.id} {job.status}")
    return follow_job(client, job.id)


def follow_job(client: Any, job_id: str) -> tuple[Any, list[Any]]:
    """Poll the job and its events (printed as they come) until it ends; every event, oldest first."""
    events: dict[str, Any] = {}
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        fresh = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data if e.id not in events]
        for event in reversed(fresh):
            events[event.id] = event
            data = event.data or {}
            if event.type == "metrics" and data.get("step", 0) % 5 not in (0, 1):
                continue
            eta = f" eta {data['eta_seconds']:.0f} s" if data.get("eta_seconds") is not None else ""
            log(f"job: {event.message}{eta}")
        if job.status in TERMINAL:
            break
        time.sleep(1.0)
    if job.status != "succeeded":
        raise RuntimeError(f"job {job_id} {job.status}: {job.error}")
    return job, _all_events(client, job_id)


def _all_events(client: Any, job_id: str) -> list[Any]:
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))  # pages on by itself
    return sorted(events, key=lambda e: (e.created_at, e.id))


def training_summary(job: Any, events: list[Any], seconds: float) -> dict[str, Any]:
    metrics = [e.data for e in events if e.type == "metrics" and e.data and e.data.get("train_loss") is not None]
    metrics.sort(key=lambda d: d["step"])
    later = metrics[1:]  # step 1 also pays for warming up
    stepping_s = sum(m["tokens"] / m["tokens_per_second"] for m in later if m.get("tokens_per_second"))
    return {
        "job": job.id,
        "fine_tuned_model": job.fine_tuned_model,
        "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
        "trained_tokens": job.trained_tokens,
        "steps": len(metrics),
        "job_seconds": (job.finished_at or 0) - job.created_at,  # queued -> succeeded, loading + GGUF included
        "followed_seconds": seconds,
        "stepping_seconds": sum(m["tokens"] / m["tokens_per_second"] for m in metrics if m.get("tokens_per_second")),
        "tokens_per_second": sum(m["tokens"] for m in later) / stepping_s if stepping_s else None,
        "first_loss": metrics[0]["train_loss"] if metrics else None,
        "final_loss": metrics[-1]["train_loss"] if metrics else None,
        "loss_curve": [(m["step"], m["train_loss"]) for m in metrics],
        "events": [f"{e.created_at} {e.level} {e.message}" for e in events if e.type != "metrics"],
    }


# --- 4, 5. grading and comparison ---


def grade(client: Any, held_out: dict[str, str], student: str, args: argparse.Namespace) -> dict[str, Any]:
    """One eval over the held-out stored completions; runs: teacher (stored answers), base, student."""
    ev = client.evals.create(
        name=f"distill bench {held_out['bench']}",
        data_source_config={"type": "logs", "metadata": held_out},
        testing_criteria=[GRADER],
    )
    source = {"type": "stored_completions", "metadata": held_out, "limit": args.held_out}
    sampled = {
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.user_text}}"}]},
        "sampling_params": {"temperature": 0, "seed": 1, "max_completion_tokens": args.max_tokens},
    }
    subjects = {"teacher": None, "base": MODEL, "student": student}
    runs = {}
    for name, model in subjects.items():
        data_source: dict[str, Any] = {"type": "completions", "source": source}
        if model is not None:
            data_source |= {"model": model, **sampled}
        runs[name] = client.evals.runs.create(ev.id, name=name, data_source=data_source).id
    for name, run_id in runs.items():
        _wait_for_run(client, ev.id, run_id, name)
    return {"eval_id": ev.id, "runs": runs}


def _wait_for_run(client: Any, eval_id: str, run_id: str, name: str) -> None:
    last = -1
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        done = run.result_counts.passed + run.result_counts.failed + run.result_counts.errored
        if done != last and (done % 50 == 0 or run.status not in ("queued", "in_progress")):
            log(f"eval run {name}: {run.status}, {done} graded, {run.result_counts.passed} passed")
            last = done
        if run.status not in ("queued", "in_progress"):
            break
        time.sleep(1.0)
    if run.status != "completed":
        raise RuntimeError(f"eval run {name} {run.status}: {run.error}")


def comparison(client: Any, eval_id: str, run_ids: list[str]) -> dict[str, Any]:
    """`GET /v1/evals/{id}/comparison` (a Stillroom route, so plain HTTP), the first run as baseline."""
    import httpx

    params = {"run_ids": run_ids}
    answer = httpx.get(f"{client.base_url}evals/{eval_id}/comparison", params=params, timeout=60)
    answer.raise_for_status()
    report: dict[str, Any] = answer.json()
    return report


def output_texts(client: Any, eval_id: str, run_id: str) -> dict[int, tuple[str, str]]:
    """datasource_item_id -> (question, graded answer)."""
    found = {}
    for item in client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100):
        output = item.sample.output or []
        found[item.datasource_item_id] = (
            str(item.datasource_item.get("user_text", "")),
            str(output[0].content if output else ""),
        )
    return found


def cli_table(database_url: str, run_id: str, work: Path) -> str:
    """What `stillroom eval show RUN` prints for this eval (the CLI's own comparison table)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")} | {"COLUMNS": "150"}
    shown = subprocess.run(
        [sys.executable, "-m", "stillroom", "eval", "show", run_id, "--database-url", database_url],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=True,
    )
    return "\n".join(line.rstrip() for line in shown.stdout.splitlines()) + "\n"


# --- 6. speed ---


def decode_speed(client: Any, models: dict[str, str], tokens: int, rounds: int) -> dict[str, Any]:
    """Best-of-`rounds` tokens/s of each model through the gateway (same prompt, end-of-text banned, one
    warm-up call each), the order flipping each round."""
    messages = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]

    def one(model: str) -> float:
        began = time.perf_counter()
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=tokens, temperature=0, seed=1, logit_bias={"0": -100, "2": -100}
        )
        return float(reply.usage.completion_tokens) / (time.perf_counter() - began)

    for model in models.values():
        one(model)
    seen: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(rounds):
        for name, model in list(models.items())[:: 1 if round_ % 2 == 0 else -1]:
            seen[name].append(one(model))
    best = {name: max(values) for name, values in seen.items()}
    return best | {"student_vs_base": best["student"] / best["base"], "rounds": seen, "tokens": tokens}


# --- the run ---


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 training / 20 held-out prompts, 1 epoch")
    parser.add_argument("--train", type=int, default=220, help="training prompts answered by the teacher")
    parser.add_argument("--held-out", type=int, default=150, help="held-out prompts graded for all three")
    parser.add_argument("--epochs", type=int, default=2, help="n_epochs of the job (0: auto, which picks 3 here)")
    parser.add_argument("--lr-multiplier", type=float, default=None, help="learning_rate_multiplier (default auto)")
    parser.add_argument("--max-tokens", type=int, default=24, help="max_tokens of every graded answer")
    parser.add_argument("--speed-rounds", type=int, default=5, help="rounds of the decode-speed comparison")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (database, files, student GGUF)")
    parser.add_argument("--out", type=Path, default=None, help="write results and plot here, not bench/results")
    args = parser.parse_args()
    if args.quick:
        args.train, args.held_out, args.epochs, args.speed_rounds = 30, 20, 1, 2
    args.epochs = args.epochs or None
    sys.path.insert(0, str(ROOT))
    results = run(args)
    write_results(results, args.out or RESULTS, (args.out or IMAGES) / "distill.png")
    keys = ("scores", "gap_closed", "tests", "tokens_per_second", "timings")
    brief = {k: v for k, v in results["training"].items() if k not in ("loss_curve", "events")}
    print(json.dumps({k: results[k] for k in keys} | {"training": brief}, indent=1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import openai

    from bench._common import busy_processes, environment
    from tests.live import start_server

    items = questions(args.train + args.held_out, seed=0)
    work = Path(tempfile.mkdtemp(prefix="stillroom-distill-"))
    tag = f"distill-{uuid.uuid4().hex[:8]}"
    train_split, held_split = {"bench": tag, "split": "train"}, {"bench": tag, "split": "held_out"}
    database_url = f"sqlite:///{work}/stillroom.db"
    meta: dict[str, Any] = {"work_dir": str(work), "tag": tag, "environment": environment()}
    meta["busy_before"] = busy_processes()
    marks = {"start": time.monotonic()}
    server = start_server(work, database_url, name="gateway")  # its worker process trains and runs the evals
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        log(f"stillroom serve at {server.url}, work dir {work}")
        capture(client, items[: args.train], train_split, args.max_tokens)
        capture(client, items[args.train :], held_split, args.max_tokens)
        marks["captured"] = time.monotonic()
        file_id, counts = make_dataset(client, train_split)
        marks["dataset"] = time.monotonic()
        job, events = fine_tune(client, file_id, args, tag)
        marks["trained"] = time.monotonic()
        student = job.fine_tuned_model
        assert student in {m.id for m in client.models.list()}, f"{student} is not in /v1/models"
        graded = grade(client, held_split, student, args)
        marks["graded"] = time.monotonic()
        runs, eval_id = graded["runs"], graded["eval_id"]
        reports = [
            comparison(client, eval_id, [runs["base"], runs["student"], runs["teacher"]]),
            comparison(client, eval_id, [runs["teacher"], runs["student"]]),
        ]
        texts = {name: output_texts(client, eval_id, run_id) for name, run_id in runs.items()}
        table = cli_table(database_url, runs["base"], work)
        speed = decode_speed(client, {"base": MODEL, "student": student}, 128, args.speed_rounds)
        marks["end"] = time.monotonic()
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    training = training_summary(job, events, marks["trained"] - marks["dataset"])
    meta |= {"loadavg_after": os.getloadavg(), "cpus": len(os.sched_getaffinity(0))}
    results = summarize(graded["runs"], reports, texts) | {"dataset": counts, "training": training}
    return results | {
        "tokens_per_second": speed,
        "timings": _timings(marks),
        "eval": graded,
        "cli_table": table,
        "comparisons": reports,
        "meta": meta | {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def summarize(
    runs: dict[str, str], reports: list[dict[str, Any]], texts: dict[str, dict[int, tuple[str, str]]]
) -> dict[str, Any]:
    """Scores, paired tests (named by subject) and the gap closed, from the comparison reports."""
    names = {run_id: name for name, run_id in runs.items()}
    verdicts = [report["criteria"][0] for report in reports]  # "all criteria": here the one grader
    fields = ("passed", "n", "pass_rate", "low", "high")
    scores = {names[s["run_id"]]: {k: s[k] for k in fields} for s in verdicts[0]["subjects"]}
    tests = [
        t | {"baseline": names[t["baseline"]], "subject": names[t["subject"]]} for v in verdicts for t in v["tests"]
    ]
    gap = scores["teacher"]["pass_rate"] - scores["base"]["pass_rate"]
    closed = (scores["student"]["pass_rate"] - scores["base"]["pass_rate"]) / gap if gap > 0 else None
    samples = [
        {"question": texts["base"][i][0], **{name: texts[name][i][1] for name in ("base", "student", "teacher")}}
        for i in sorted(texts["base"])[:12]
    ]
    return {"scores": scores, "gap_closed": closed, "tests": tests, "samples": samples}


def _timings(marks: dict[str, float]) -> dict[str, float]:
    names = list(marks)
    phases = {f"{a}->{b}_s": marks[b] - marks[a] for a, b in itertools.pairwise(names)}
    return phases | {"total_s": marks["end"] - marks["start"]}


# --- results ---


def write_results(results: dict[str, Any], folder: Path, image: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "distill.json").write_text(json.dumps(results, indent=1) + "\n")
    (folder / "distill.md").write_text(render_markdown(results))
    plot(results, image)


def render_markdown(results: dict[str, Any]) -> str:
    s, t, v = results["scores"], results["training"], results["tokens_per_second"]
    lines = ["# Distillation benchmark", "", "| subject | passed | pass rate | 95% CI (Wilson) |", "|---|---|---|---|"]
    for name in ("base", "student", "teacher"):
        lines.append(
            f"| {name} | {s[name]['passed']}/{s[name]['n']} | {s[name]['pass_rate']:.1%} |"
            f" {s[name]['low']:.1%}-{s[name]['high']:.1%} |"
        )
    lines += ["", "| subject vs baseline | difference [95% bootstrap] | McNemar p | significant |", "|---|---|---|---|"]
    for test in results["tests"]:
        lines.append(
            f"| {test['subject']} vs {test['baseline']} | {test['difference']:+.1%} [{test['low']:+.1%},"
            f" {test['high']:+.1%}] | {test['p_value']:.3g} | {'yes' if test['significant'] else 'no'} |"
        )
    gap = results["gap_closed"]
    lines += [
        "",
        f"Gap closed: {'n/a' if gap is None else f'{gap:.0%}'}. Training (job {t['job']}): "
        f"{results['dataset']['training']} examples, {t['hyperparameters']}, {t['steps']} steps, "
        f"{t['trained_tokens']} trained tokens; job {t['job_seconds']} s queued to succeeded "
        f"({t['stepping_seconds']:.0f} s stepping, {t['tokens_per_second'] or 0:.0f} tokens/s), "
        f"loss {t['first_loss']:.2f} -> {t['final_loss']:.2f}.",
        f"Decode speed through the gateway ({v['tokens']} tokens, best of {len(v['rounds']['base'])}, order flipped):"
        f" base {v['base']:.1f} tokens/s, student {v['student']:.1f} ({v['student_vs_base']:.0%}).",
        f"Whole run {results['timings']['total_s']:.0f} s; phases {_phases(results['timings'])}.",
        "",
        "`stillroom eval show` on the same eval:",
        "",
        "```",
        results["cli_table"].rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _phases(timings: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timings.items() if k != "total_s")


def plot(results: dict[str, Any], image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["base", "student", "teacher"]
    s = results["scores"]
    rates = [100 * s[n]["pass_rate"] for n in names]
    errors = [  # Wilson bounds can sit a rounding error past the rate itself
        [max(0.0, rates[i] - 100 * s[n]["low"]) for i, n in enumerate(names)],
        [max(0.0, 100 * s[n]["high"] - rates[i]) for i, n in enumerate(names)],
    ]
    bars = left.bar(names, rates, yerr=errors, capsize=6, color=["#999999", "#2a7ab0", "#d08a2c"])
    for bar, rate in zip(bars, rates, strict=True):
        left.annotate(
            f"{rate:.1f}%",
            (bar.get_x() + 0.04, rate),
            ha="left",
            va="bottom",
            xytext=(0, 2),
            textcoords="offset points",
        )
    left.set_ylim(0, 108)
    left.set_ylabel("held-out pass rate, % (95% CI)")
    gap = results["gap_closed"]
    left.set_title(f"Evals API, n={s['base']['n']}; gap closed {'n/a' if gap is None else f'{gap:.0%}'}", fontsize=10)
    t = results["training"]
    if t["loss_curve"]:
        steps, losses = zip(*t["loss_curve"], strict=True)
        right.plot(steps, losses)
    right.set_xlabel("step")
    right.set_ylabel("training loss (assistant tokens)")
    v = results["tokens_per_second"]
    right.set_title(
        f"job: {t['trained_tokens']} tokens in {t['job_seconds']} s; "
        f"student decodes at {v['student_vs_base']:.0%} of base",
        fontsize=10,
    )
    fig.tight_layout()
    image.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(image, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
