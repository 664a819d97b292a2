"""The local trainer on a tiny llama built by the test, and the SmolLM2 tokenizer (the one short real run on the
bundled SmolLM2 is test_student.py's)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import BadRequestError
from stillroom.training.examples import IGNORE_INDEX, tokenize_example
from stillroom.training.trainer import (
    CSV_COLUMNS,
    TrainConfig,
    TrainingCancelled,
    resolve_hyperparameters,
    train,
)
from tests.training.conftest import planted_examples, write_jsonl

pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")


def _config(base: Path, training: Path, out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "base_model": base,
        "training_file": training,
        "validation_file": None,
        "output_dir": out,
        "n_epochs": None,
        "batch_size": None,
        "learning_rate_multiplier": None,
        "seed": 7,
    }
    return TrainConfig(**(values | overrides))


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


def test_auto_hyperparameters_follow_openai_epochs_and_small_batches() -> None:
    cfg = TrainConfig(Path("b"), Path("t"), None, Path("o"), None, None, None, seed=0)
    assert resolve_hyperparameters(10, cfg) == {"n_epochs": 10, "batch_size": 1, "learning_rate_multiplier": 1.0}
    assert resolve_hyperparameters(200, cfg) == {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert resolve_hyperparameters(20_000, cfg)["n_epochs"] == 1
    fixed = TrainConfig(Path("b"), Path("t"), None, Path("o"), 2, 4, 0.5, seed=0)
    assert resolve_hyperparameters(200, fixed) == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}


def test_labels_cover_assistant_answers_and_their_end_token_only(smollm2_tokenizer: Any) -> None:
    example = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there.", "weight": 0},
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "Answer: RED."},
        ]
    }
    tokens = tokenize_example(smollm2_tokenizer, example, max_length=512)
    labelled = [t for t in tokens.labels if t != IGNORE_INDEX]
    assert smollm2_tokenizer.decode(labelled) == "Answer: RED.<|im_end|>\n"
    assert len(tokens.labels) == len(tokens.input_ids)


def test_tokenizer_ids_match_llama_cpp_on_a_rendered_conversation(smollm2_tokenizer: Any, smollm2_gguf: Path) -> None:
    from llama_cpp import Llama

    example = planted_examples(1)[0]
    example["messages"][0]["content"] = "Ünïcödé, émojis 🙂 and   spaces\ttabs — all tokenised alike?"
    text = smollm2_tokenizer.apply_chat_template(example["messages"], tokenize=False)
    ours = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    llama = Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    assert llama.tokenize(text.encode(), add_bos=False, special=True) == ours


def test_tiny_model_loss_falls_and_the_run_writes_its_files(
    tiny_gguf: Path, planted_file: Callable[..., Path], tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    cfg = _config(
        tiny_gguf,
        planted_file(12),
        tmp_path,
        validation_file=planted_file(4, 100),
        n_epochs=2,
        batch_size=4,
        learning_rate_multiplier=20.0,
    )
    result = train(cfg, on_event=events.append, should_stop=lambda: False)

    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 7)) and {m["total_steps"] for m in metrics} == {6}
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 1.0
    assert all(m["tokens_per_second"] > 0 and m["eta_seconds"] >= 0 and m["learning_rate"] > 0 for m in metrics)
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert [c["step_number"] for c in checkpoints] == [3, 6]
    assert all((c["path"] / "adapter_model.safetensors").exists() for c in checkpoints)
    assert math.isfinite(checkpoints[-1]["metrics"]["valid_loss"])
    assert result.final_valid_loss == checkpoints[-1]["metrics"]["full_valid_loss"]

    assert result.hyperparameters == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 20.0}
    assert result.steps == 6 and result.final_train_loss == metrics[-1]["train_loss"]
    assert result.trained_tokens > 12 * 2 * 20
    assert (result.adapter_dir / "adapter_config.json").exists()
    rows = list(csv.DictReader(result.metrics_csv.read_text().splitlines()))
    assert tuple(rows[0]) == CSV_COLUMNS and [r["step"] for r in rows] == [str(s) for s in range(1, 7)]
    assert rows[2]["valid_loss"] and not rows[1]["valid_loss"]
    assert result.gguf_path is not None and result.gguf_path.stat().st_size > 0
    assert result.adapter_gguf_path is not None and result.adapter_gguf_path.exists()


def test_same_seed_gives_the_same_losses(
    tiny_model_dir: Path, planted_file: Callable[..., Path], tmp_path: Path
) -> None:
    def losses(out: Path) -> list[float]:
        events: list[dict[str, Any]] = []
        train(
            _config(tiny_model_dir, planted_file(12), out, max_steps=2, batch_size=4),
            on_event=events.append,
            should_stop=lambda: False,
        )
        return [e["data"]["train_loss"] for e in events if e["type"] == "metrics"]

    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_should_stop_cancels_before_the_next_micro_batch(
    tiny_model_dir: Path, planted_file: Callable[..., Path], tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []

    with pytest.raises(TrainingCancelled) as raised:
        train(
            _config(tiny_model_dir, planted_file(12), tmp_path, batch_size=1),
            on_event=events.append,
            should_stop=lambda: any(e["type"] == "metrics" for e in events),
        )
    assert raised.value.step == 1 and [e["data"]["step"] for e in events if e["type"] == "metrics"] == [1]


def test_a_hugging_face_model_folder_trains_too(
    tiny_model_dir: Path, planted_file: Callable[..., Path], tmp_path: Path
) -> None:
    result = train(
        _config(tiny_model_dir, planted_file(12), tmp_path, max_steps=2),
        on_event=lambda e: None,
        should_stop=lambda: False,
    )
    assert result.steps == 2 and (result.adapter_dir / "adapter_model.safetensors").exists()


def test_a_file_without_assistant_turns_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    training = write_jsonl(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 10)
    with pytest.raises(BadRequestError, match="no assistant turn"):
        train(_config(tiny_model_dir, training, tmp_path / "out"), on_event=lambda e: None, should_stop=lambda: False)
