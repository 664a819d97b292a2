"""The local trainer: supervised LoRA on a chat fine-tuning file, then the student as GGUF.

Imported only inside the worker process: `train()` loads torch, transformers and peft (the `train` extra)
when called; importing this module for `TrainConfig`, `resolve_hyperparameters` or `TrainingCancelled`
costs nothing.

    cfg = TrainConfig(base_model=ModelConfig(...).model_path(), training_file=..., validation_file=None,
                      output_dir=..., n_epochs=None, batch_size=None, learning_rate_multiplier=None, seed=42)
    result = train(cfg, on_event=events.append, should_stop=lambda: cancelled)

`on_event` receives, in order:
- `{"type": "message", "level": "info", "message": str, "data": {}}` for each phase (loading, tokenising,
  writing the student);
- `{"type": "metrics", "level": "info", "message": "Step 3/40: training loss=1.234", "data": {"step",
  "total_steps", "epoch", "train_loss", "train_mean_token_accuracy", "learning_rate", "tokens" (this step's),
  "tokens_per_second", "eta_seconds"}}` after every optimizer step;
- `{"type": "checkpoint", "step_number": int, "metrics": {"step", "train_loss", "train_mean_token_accuracy",
  "valid_loss", "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"},
  "path": Path}` at the end of every epoch and at the last step (`path` is a PEFT adapter folder).

`should_stop()` is polled before every micro-batch; once it is true `train` raises `TrainingCancelled`
within one micro-batch (a few seconds on two cores). The run writes under `output_dir`:
`adapter/` (PEFT safetensors: the weights the user downloads), `checkpoints/step-N/`, `metrics.csv`
(OpenAI's result-file columns), `student.gguf` (merged, adapted tensors in Q8_0: what llama.cpp serves at
the base's speed; for a model-folder base every weight is Q8_0, written by `hf_gguf.py`) and, for a GGUF
base, `adapter.gguf` (llama.cpp's LoRA format).

Training is fp32 (no bf16 assumption), on CUDA where present and otherwise on all of the machine's
cores, without gradient checkpointing. The loop runs through Hugging Face accelerate, so the same code
spreads over several GPUs (or CPU processes) when started by `accelerate launch` (`training/launch.py`):
each process takes every n-th example of each batch, gradients are summed across processes once per
optimizer step (DDP, synchronised on the step's last micro-batch only), and only the main process reports
events and writes files.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillroom.errors import BadRequestError
from stillroom.training.examples import IGNORE_INDEX, TokenizedExample, tokenize_file

Event = dict[str, Any]
BASE_LEARNING_RATE = 1e-3  # LoRA on a small model; `learning_rate_multiplier` scales it
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MICRO_BATCH_TOKENS = 4096  # padded tokens per forward pass; larger batches accumulate gradients
VALID_EXAMPLES = 64  # examples behind `valid_loss` at each checkpoint (the full set gives `full_valid_loss`)
CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


class TrainingCancelled(Exception):
    """`should_stop()` turned true; raised at the next micro-batch."""

    def __init__(self, step: int) -> None:
        super().__init__(f"Training stopped at step {step}.")
        self.step = step


@dataclass
class TrainConfig:
    base_model: Path  # a GGUF file (the bundled SmolLM2: ModelConfig.model_path()) or a local HF llama folder
    training_file: Path  # chat fine-tuning JSONL: {"messages": [...], "tools"?: [...]} per line
    validation_file: Path | None
    output_dir: Path
    n_epochs: int | None  # None = "auto"
    batch_size: int | None  # None = "auto"
    learning_rate_multiplier: float | None  # None = "auto"
    seed: int
    max_steps: int | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 1024  # tokens per example; longer ones are cut (their tail carries no loss)


@dataclass
class TrainResult:
    hyperparameters: dict[str, Any]
    trained_tokens: int
    steps: int
    adapter_dir: Path
    metrics_csv: Path
    gguf_path: Path | None  # merged student (None only in a non-main accelerate process)
    final_train_loss: float
    final_valid_loss: float | None
    adapter_gguf_path: Path | None = None  # a GGUF base's adapter in llama.cpp's LoRA format
    checkpoints: list[Path] = field(default_factory=list)
    model: Any = None  # the trained PEFT model, in memory (evaluate it without loading the base again)
    tokenizer: Any = None


def resolve_hyperparameters(n_examples: int, cfg: TrainConfig) -> dict[str, Any]:
    """Fill in "auto" values: OpenAI's epoch rule; batches of up to 8 (at least ~25 examples each)."""
    n_epochs = cfg.n_epochs
    if n_epochs is None:
        n_epochs = 3
        if n_examples * 3 < 100:
            n_epochs = min(25, math.ceil(100 / max(n_examples, 1)))
        elif n_examples * 3 > 25_000:
            n_epochs = max(1, 25_000 // n_examples)
    batch_size = cfg.batch_size if cfg.batch_size is not None else max(1, min(8, n_examples // 25))
    multiplier = cfg.learning_rate_multiplier if cfg.learning_rate_multiplier is not None else 1.0
    return {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": multiplier}


def _message(text: str) -> Event:
    return {"type": "message", "level": "info", "message": text, "data": {}}


def load_base(path: Path) -> tuple[Any, Any]:
    """(model in fp32, fast tokenizer) from a GGUF file or a Hugging Face model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # progress goes out as events, not to stderr
    if path.is_file() and path.suffix == ".gguf":
        where, extra = path.parent, {"gguf_file": path.name}
    elif path.is_dir():
        where, extra = path, {}
    else:
        raise BadRequestError(f"The base model {path} is neither a .gguf file nor a model folder.", param="model")
    if path.is_dir():
        from stillroom.training.hf_gguf import check_hf_base

        check_hf_base(path)  # before loading or training: its student must be convertible to GGUF
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model, tokenizer


def _micro_batches(examples: Sequence[TokenizedExample]) -> list[list[TokenizedExample]]:
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    batches: list[list[TokenizedExample]] = [[]]
    for example in ordered:
        longest = max([len(example.input_ids)] + [len(e.input_ids) for e in batches[-1]])
        if batches[-1] and longest * (len(batches[-1]) + 1) > MICRO_BATCH_TOKENS:
            batches.append([])
        batches[-1].append(example)
    return [b for b in batches if b]


def _tensors(batch: Sequence[TokenizedExample], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _token_loss(model: Any, ids: Any, labels: Any, mask: Any) -> tuple[Any, int, int]:
    """(summed loss over labelled tokens, labelled tokens, correctly predicted tokens)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    labelled = targets != IGNORE_INDEX
    correct = int(((logits.argmax(-1) == targets) & labelled).sum())
    return loss, int(labelled.sum()), correct


def _evaluate(model: Any, examples: Sequence[TokenizedExample], pad_id: int, device: Any) -> tuple[float, float]:
    """(mean token loss, mean token accuracy) on `examples`."""
    import torch

    total, count, correct = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for batch in _micro_batches(examples):
            loss, n, right = _token_loss(model, *_tensors(batch, pad_id, device))
            total, count, correct = total + float(loss), count + n, correct + right
    model.train()
    return total / max(count, 1), correct / max(count, 1)


class _Run:
    """One training run's state: the model, optimizer, counters and the files it writes."""

    def __init__(self, cfg: TrainConfig, on_event: Callable[[Event], None], should_stop: Callable[[], bool]):
        self.cfg, self.on_event, self.should_stop = cfg, on_event, should_stop
        self.step = 0
        self.trained_tokens = 0
        self.last_loss = math.nan
        self.last_accuracy = math.nan
        self.last_metrics: dict[str, Any] = {}
        self.checkpoints: list[Path] = []
        self.started = time.monotonic()

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator  # type: ignore[import-untyped]

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if not torch.cuda.is_available():  # the cores, shared by the processes `accelerate launch` started here
            local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_processes))
        # Each process takes a share of every batch (the batch size is the job's, whatever the process count), so the
        # schedule steps once per optimizer step, not once per process as accelerate's default assumes.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False)
        self.emit(_message(f"Loading the base model {cfg.base_model.name}"))
        model, self.tokenizer = load_base(cfg.base_model)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.train_set = tokenize_file(self.tokenizer, cfg.training_file, cfg.max_length)
        if not self.train_set:
            raise BadRequestError("The training file has no assistant turn to learn from.", param="training_file")
        self.valid_set = (
            tokenize_file(self.tokenizer, cfg.validation_file, cfg.max_length) if cfg.validation_file else []
        )
        self.hyperparameters = resolve_hyperparameters(len(self.train_set), cfg)
        self.steps_per_epoch = math.ceil(len(self.train_set) / int(self.hyperparameters["batch_size"]))
        self.total_steps = self.steps_per_epoch * int(self.hyperparameters["n_epochs"])
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        tokens = sum(len(e.input_ids) for e in self.train_set)
        self.emit(_message(f"{len(self.train_set)} training examples ({tokens} tokens), {self.total_steps} steps"))
        self._prepare_model(model)

    def _prepare_model(self, model: Any) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=self.cfg.lora_r,
            lora_alpha=self.cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(TARGET_MODULES),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, lora)
        lr = BASE_LEARNING_RATE * self.hyperparameters["learning_rate_multiplier"]
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warmup = max(1, min(20, self.total_steps // 10))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(peft_model, optimizer, scheduler)
        self.model.train()

    def emit(self, event: Event) -> None:
        if self.accelerator.is_main_process:
            self.on_event(event)

    def _check_stop(self) -> None:
        if self.should_stop():
            raise TrainingCancelled(self.step)

    def run_step(self, batch: Sequence[TokenizedExample]) -> None:
        """One optimizer step over `batch` (this process's share), accumulated over micro-batches."""
        import torch

        began = time.monotonic()
        acc = self.accelerator
        label_count = sum(max(0, sum(1 for x in e.labels[1:] if x != IGNORE_INDEX)) for e in batch)
        global_labels = int(acc.reduce(torch.tensor(label_count, device=acc.device), reduction="sum"))
        loss_sum, correct, tokens = 0.0, 0, 0
        # A share smaller than the process count leaves a process nothing: it still joins the gradient sum
        # with one empty (no labelled token, zero loss) pass, as every process must.
        micros = _micro_batches(batch) or [[TokenizedExample([self.pad_id] * 2, [IGNORE_INDEX] * 2)]]
        for n, micro in enumerate(micros):
            self._check_stop()
            ids, labels, mask = _tensors(micro, self.pad_id, acc.device)
            syncing = n == len(micros) - 1  # processes may differ in micro-batches: sum gradients once, at the end
            with contextlib.nullcontext() if syncing else acc.no_sync(self.model):
                loss, _, right = _token_loss(self.model, ids, labels, mask)
                acc.backward(loss * acc.num_processes / max(global_labels, 1))
            real = int(mask.sum()) if batch else 0
            loss_sum, correct, tokens = loss_sum + float(loss.detach()), correct + right, tokens + real
        self.optimizer.step()
        self.step_lr = float(self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.step += 1
        totals = acc.reduce(torch.tensor([loss_sum, correct, tokens], device=acc.device), reduction="sum")
        loss_total, correct_total, token_total = (float(x) for x in totals)
        self.trained_tokens += int(token_total)
        self.last_loss = loss_total / max(global_labels, 1)
        self._report(loss_total / max(global_labels, 1), correct_total / max(global_labels, 1), token_total, began)

    def _report(self, loss: float, accuracy: float, tokens: float, began: float) -> None:
        elapsed = time.monotonic() - began
        per_step = (time.monotonic() - self.training_started) / self.step
        data = {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": math.ceil(self.step / self.steps_per_epoch),
            "train_loss": loss,
            "train_mean_token_accuracy": accuracy,
            "learning_rate": self.step_lr,
            "tokens": int(tokens),
            "tokens_per_second": tokens / max(elapsed, 1e-9),
            "eta_seconds": per_step * (self.total_steps - self.step),
        }
        self.last_accuracy = accuracy
        message = f"Step {self.step}/{self.total_steps}: training loss={loss:.4f}"
        self.emit({"type": "metrics", "level": "info", "message": message, "data": data})

    def _write_csv(self, row: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with self.metrics_csv.open("a", newline="") as out:
                csv.DictWriter(out, CSV_COLUMNS).writerow(row)

    def write_row(self, checkpointed: bool) -> None:
        """This step's line of metrics.csv (validation columns only on checkpoint steps)."""
        row: dict[str, Any] = {"step": self.step, "train_loss": self.last_loss, "train_accuracy": self.last_accuracy}
        if checkpointed:
            row |= {k: self.last_metrics.get(k) for k in ("valid_loss", "valid_mean_token_accuracy")}
        self._write_csv(row)

    def checkpoint(self, final: bool) -> None:
        metrics: dict[str, Any] = {
            "step": self.step,
            "train_loss": self.last_loss,
            "train_mean_token_accuracy": self.last_accuracy,
        }
        if self.valid_set and self.accelerator.is_main_process:  # the others wait for it in save_adapter
            device = self.accelerator.device
            model = self.accelerator.unwrap_model(self.model)
            loss, accuracy = _evaluate(model, self.valid_set[:VALID_EXAMPLES], self.pad_id, device)
            metrics |= {"valid_loss": loss, "valid_mean_token_accuracy": accuracy}
            if final:
                loss, accuracy = _evaluate(model, self.valid_set, self.pad_id, device)
                metrics |= {"full_valid_loss": loss, "full_valid_mean_token_accuracy": accuracy}
        self.last_metrics = metrics
        path = self.cfg.output_dir / "checkpoints" / f"step-{self.step}"
        self.save_adapter(path)
        self.checkpoints.append(path)
        self.emit({"type": "checkpoint", "step_number": self.step, "metrics": metrics, "path": path})

    def save_adapter(self, path: Path) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(path, save_embedding_layers=False)

    def run(self) -> None:
        import torch

        self.metrics_csv = self.cfg.output_dir / "metrics.csv"
        if self.accelerator.is_main_process:
            self.cfg.output_dir.mkdir(parents=True, exist_ok=True)
            with self.metrics_csv.open("w", newline="") as out:
                csv.DictWriter(out, CSV_COLUMNS).writeheader()
        self._check_stop()  # loading took a while: a job cancelled meanwhile never starts stepping
        self.training_started = time.monotonic()
        batch_size = self.hyperparameters["batch_size"]
        acc = self.accelerator
        for epoch in range(self.hyperparameters["n_epochs"]):
            order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size].tolist()[acc.process_index :: acc.num_processes]
                self.run_step([self.train_set[i] for i in indices])
                last_of_epoch = start + batch_size >= len(order)
                done = self.step >= self.total_steps
                if last_of_epoch or done:
                    self.checkpoint(final=done)
                self.write_row(checkpointed=last_of_epoch or done)
                if done:
                    return


def train(cfg: TrainConfig, *, on_event: Callable[[Event], None], should_stop: Callable[[], bool]) -> TrainResult:
    """Train a LoRA on `cfg.base_model`; write the adapter, metrics and the student GGUF."""
    run = _Run(cfg, on_event, should_stop)
    run.setup()
    run.run()
    adapter_dir = cfg.output_dir / "adapter"
    run.save_adapter(adapter_dir)
    gguf_path = adapter_gguf = None
    if run.accelerator.is_main_process:
        run.emit(_message("Writing the student model as GGUF"))
        if cfg.base_model.suffix == ".gguf":
            from stillroom.training.student import write_student

            gguf_path, adapter_gguf = write_student(cfg.base_model, adapter_dir, cfg.output_dir)
        else:
            from stillroom.training.hf_gguf import write_hf_student

            gguf_path = write_hf_student(cfg.base_model, adapter_dir, cfg.output_dir)
    return TrainResult(
        hyperparameters=run.hyperparameters,
        trained_tokens=run.trained_tokens,
        steps=run.step,
        adapter_dir=adapter_dir,
        metrics_csv=run.metrics_csv,
        gguf_path=gguf_path,
        final_train_loss=run.last_loss,
        final_valid_loss=run.last_metrics.get("full_valid_loss"),
        adapter_gguf_path=adapter_gguf,
        checkpoints=run.checkpoints,
        model=run.accelerator.unwrap_model(run.model).eval(),
        tokenizer=run.tokenizer,
    )
