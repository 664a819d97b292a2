"""End-to-end distillation: a prompted teacher, stored through the gateway, distilled into a LoRA student.

    .venv/bin/python -m bench.distill            # full run: 220 training prompts, 150 held out (~15 min on 2 cores)
    .venv/bin/python -m bench.distill --quick    # smoke run: 40 / 30 prompts, 1 epoch

Everything comes from what the packages ship. The task is context distillation of a reply format (the
kind of behaviour worked examples teach a 135M model; see shared/spec/distillation-notes.md):

* teacher: the bundled SmolLM2 served by a real `stillroom serve`, with a system prompt asking for replies
  of the form `Answer: <a few words>.` plus two worked examples as user/assistant turns, called through the
  openai SDK with `store=True` and a run-specific metadata tag;
* dataset: the stored completions read back through the stored-completions API (`chat.completions.list`
  with the metadata filter), each turned into {user question -> stored answer} with the system prompt and
  the examples stripped (prompt distillation), as fine-tuning JSONL;
* student: the same base plus a LoRA trained by `stillroom.training.trainer.train` (auto hyperparameters
  unless given), served as the merged Q8_0 `student.gguf` by Stillroom's LocalProvider;
* grading: base (no prompt), student (no prompt) and teacher (prompt and examples) answer the same held-out
  questions at temperature 0; the grader is a deterministic regex: one line, `Answer: ` then 1-8 words.
  Scores carry 95% Wilson intervals; `gap closed` = (student - base) / (teacher - base).
* speed: base and student GGUFs decode 128 tokens (end-of-text banned) from the same prompt in llama.cpp,
  the order flipping each round, best of 5, in this one run.

Results: bench/results/distill.json and .md, plot docs/img/distill.png.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
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
GRADER = re.compile(r"^Answer: \S+(?: \S+){0,7}$")

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


def wilson(passed: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    z, p = 1.96, passed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def is_pass(answer: str) -> bool:
    return bool(GRADER.match(answer.strip()))


def teacher_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, *EXAMPLES, {"role": "user", "content": question}]


def ask_teacher(client: Any, items: list[str], tag: str | None, max_tokens: int) -> list[str]:
    answers = []
    for question in items:
        extra: dict[str, Any] = {"store": True, "metadata": {"bench": tag}} if tag else {}
        reply = client.chat.completions.create(
            model=MODEL, messages=teacher_messages(question), temperature=0, seed=1, max_tokens=max_tokens, **extra
        )
        answers.append(reply.choices[0].message.content or "")
    return answers


def stored_dataset(client: Any, tag: str, out: Path) -> int:
    """The stored completions tagged `tag` as fine-tuning JSONL, system prompt and examples stripped."""
    lines = []
    for stored in client.chat.completions.list(metadata={"bench": tag}, limit=100):
        messages = client.chat.completions.messages.list(stored.id, limit=100).data
        question = [m for m in messages if m.role == "user"][-1].content
        answer = stored.choices[0].message.content
        if stored.choices[0].finish_reason != "stop" or not answer:
            continue
        pair = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": pair}))
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def answer_locally(gguf: Path, name: str, items: list[str], max_tokens: int) -> list[str]:
    """Answers of a GGUF served by Stillroom's LocalProvider, as a `serve` process would route it."""
    import asyncio

    from stillroom.providers.local import LocalProvider
    from stillroom.training.student import student_model_config

    provider = LocalProvider(student_model_config(name, gguf))

    async def run() -> list[str]:
        answers = []
        try:
            for question in items:
                body = {
                    "model": name,
                    "messages": [{"role": "user", "content": question}],
                    "temperature": 0,
                    "seed": 1,
                    "max_tokens": max_tokens,
                }
                answers.append(json.loads(await provider.complete(body))["choices"][0]["message"]["content"] or "")
        finally:
            await provider.aclose()
        return answers

    return asyncio.run(run())


def decode_speed(models: dict[str, Path], tokens: int = 128, rounds: int = 5) -> dict[str, float]:
    """Best-of-`rounds` decode tokens/s of each GGUF, same prompt, end-of-text banned; the order flips each round
    (on two shared cores one best-of-3 pass swung a model between 45 and 66 tokens/s)."""
    from llama_cpp import Llama

    loaded = {name: Llama(model_path=str(path), n_ctx=2048, verbose=False) for name, path in models.items()}
    best = dict.fromkeys(models, 0.0)
    prompt = "<|im_start|>user\nTell me a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"
    for round_ in range(rounds):
        for name, llama in list(loaded.items())[:: 1 if round_ % 2 == 0 else -1]:
            llama.reset()
            began = time.perf_counter()
            out = llama.create_completion(prompt, max_tokens=tokens, temperature=0, logit_bias={2: -1e9, 0: -1e9})
            best[name] = max(best[name], out["usage"]["completion_tokens"] / (time.perf_counter() - began))
    for llama in loaded.values():
        llama.close()
    return best


def score(answers: list[str]) -> dict[str, Any]:
    passed = sum(is_pass(a) for a in answers)
    low, high = wilson(passed, len(answers))
    return {"passed": passed, "n": len(answers), "score": passed / max(len(answers), 1), "ci95": [low, high]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 training / 30 held-out prompts, 1 epoch")
    parser.add_argument("--train", type=int, default=220, help="training prompts answered by the teacher")
    parser.add_argument("--held-out", type=int, default=150, help="held-out prompts graded for all three")
    parser.add_argument("--epochs", type=int, default=None, help="n_epochs (default: auto)")
    parser.add_argument("--lr-multiplier", type=float, default=None, help="learning_rate_multiplier (default auto)")
    parser.add_argument("--max-tokens", type=int, default=24, help="max_tokens of every graded answer")
    args = parser.parse_args()
    if args.quick:
        args.train, args.held_out, args.epochs = 40, 30, 1
    sys.path.insert(0, str(ROOT))
    results = run(args)
    write_results(results)
    print(json.dumps({k: results[k] for k in ("scores", "gap_closed", "training", "tokens_per_second")}, indent=1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import openai

    from stillroom.config import ModelConfig
    from stillroom.training.trainer import TrainConfig, train
    from tests.live import start_server

    base = ModelConfig(name=MODEL, provider="local").model_path()
    items = questions(args.train + args.held_out, seed=0)
    train_items, held_out = items[: args.train], items[args.train :]
    work = Path(tempfile.mkdtemp(prefix="stillroom-distill-"))
    tag = f"distill-{uuid.uuid4().hex[:8]}"
    timings: dict[str, float] = {}
    began = time.monotonic()

    server = start_server(work, f"sqlite:///{work}/stillroom.db", name="gateway")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        ask_teacher(client, train_items, tag, args.max_tokens)
        timings["teacher_train_answers_s"] = time.monotonic() - began
        teacher = ask_teacher(client, held_out, None, args.max_tokens)
        timings["teacher_held_out_s"] = time.monotonic() - began - sum(timings.values())
        n_examples = stored_dataset(client, tag, work / "train.jsonl")
    finally:
        server.kill()

    events: list[dict[str, Any]] = []
    step_times: list[float] = []

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        if event["type"] == "metrics":
            step_times.append(time.monotonic())

    mark = time.monotonic()
    cfg = TrainConfig(
        base_model=base,
        training_file=work / "train.jsonl",
        validation_file=None,
        output_dir=work / "run",
        n_epochs=args.epochs,
        batch_size=None,
        learning_rate_multiplier=args.lr_multiplier,
        seed=0,
    )
    result = train(cfg, on_event=on_event, should_stop=lambda: False)
    timings["training_s"] = time.monotonic() - mark
    assert result.gguf_path is not None

    mark = time.monotonic()
    student = answer_locally(
        result.gguf_path, "ft:smollm2-135m-instruct:default:bench:ftjob-bench", held_out, args.max_tokens
    )
    base_answers = answer_locally(base, MODEL, held_out, args.max_tokens)
    timings["grading_s"] = time.monotonic() - mark
    speed = decode_speed({"base": base, "student": result.gguf_path})
    timings["total_s"] = time.monotonic() - began

    scores = {"base": score(base_answers), "student": score(student), "teacher": score(teacher)}
    gap = scores["teacher"]["score"] - scores["base"]["score"]
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    return {
        "scores": scores,
        "gap_closed": (scores["student"]["score"] - scores["base"]["score"]) / gap if gap > 0 else None,
        "training": {
            "examples": n_examples,
            "hyperparameters": result.hyperparameters,
            "steps": result.steps,
            "trained_tokens": result.trained_tokens,
            # steps 2..N only: step 1 also pays for warming up, and model loading and GGUF writing are excluded
            "tokens_per_second": (result.trained_tokens - metrics[0]["tokens"]) / (step_times[-1] - step_times[0])
            if len(step_times) > 1
            else None,
            "first_loss": metrics[0]["train_loss"],
            "final_loss": result.final_train_loss,
            "loss_curve": [(m["step"], m["train_loss"]) for m in metrics],
        },
        "tokens_per_second": speed | {"student_vs_base": speed["student"] / speed["base"]},
        "timings": timings,
        "samples": [
            {"question": q, "base": b, "student": s, "teacher": t}
            for q, b, s, t in list(zip(held_out, base_answers, student, teacher, strict=True))[:12]
        ],
        "meta": {
            "train_prompts": args.train,
            "held_out": args.held_out,
            "max_tokens": args.max_tokens,
            "work_dir": str(work),
            "cpus": _cpus(),
            "loadavg": _loadavg(),
        },
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def write_results(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(results, indent=1))
    s, t, v = results["scores"], results["training"], results["tokens_per_second"]

    def row(name: str) -> str:
        low, high = s[name]["ci95"]
        return f"| {name} | {s[name]['passed']}/{s[name]['n']} | {s[name]['score']:.1%} | {low:.1%}-{high:.1%} |"

    gap = results["gap_closed"]
    lines = [
        "# Distillation benchmark",
        "",
        "| model | passed | score | 95% CI |",
        "|---|---|---|---|",
        row("base"),
        row("student"),
        row("teacher"),
        "",
        f"Gap closed: {'n/a' if gap is None else f'{gap:.0%}'}. Training: {t['examples']} examples, {t['steps']} steps,"
        f" {t['trained_tokens']} tokens in {results['timings']['training_s']:.0f} s (model loading and GGUF writing"
        f" included; {t['tokens_per_second'] or 0:.0f} tokens/s while stepping),"
        f" loss {t['first_loss']:.2f} -> {t['final_loss']:.2f}, hyperparameters {t['hyperparameters']}.",
        f"Decode speed (128 tokens, best of 5): base {v['base']:.1f} tokens/s, student {v['student']:.1f}"
        f" ({v['student_vs_base']:.0%}). Whole run {results['timings']['total_s']:.0f} s.",
        "",
    ]
    (RESULTS / "distill.md").write_text("\n".join(lines))
    plot(results)


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["base", "student", "teacher"]
    scores = [results["scores"][n]["score"] for n in names]
    errors = [
        [scores[i] - results["scores"][n]["ci95"][0] for i, n in enumerate(names)],
        [results["scores"][n]["ci95"][1] - scores[i] for i, n in enumerate(names)],
    ]
    left.bar(names, scores, yerr=errors, capsize=6, color=["#999999", "#2a7ab0", "#d08a2c"])
    left.set_ylim(0, 1)
    left.set_ylabel("held-out pass rate (95% CI)")
    left.set_title("Format followed without the prompt")
    steps, losses = zip(*results["training"]["loss_curve"], strict=True)
    right.plot(steps, losses)
    right.set_xlabel("step")
    right.set_ylabel("training loss (assistant tokens)")
    v = results["tokens_per_second"]
    right.set_title(f"LoRA training; student decodes at {v['student_vs_base']:.0%} of base")
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / "distill.png", dpi=110)


if __name__ == "__main__":
    main()
