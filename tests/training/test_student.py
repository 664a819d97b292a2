"""The student as llama.cpp runs it: its logits match the PEFT model's, and the local provider serves it.

On the tiny F32 model llama.cpp and PyTorch compute the same function, so the tolerances are tight.
On SmolLM2 (the users' path: one short real run, trained here) llama.cpp multiplies Q4_1 weights with
activations quantised to 8 bits, which already moves the *base* model's log-probabilities by up to ~2
against PyTorch on the same weights; there the test asks that the student stays within that noise while
the adapter's effect is many times larger, and that both answer a held-out prompt alike. That one run (four
steps, a module fixture) serves the three SmolLM2 tests, and its trained PEFT model is compared as it is in
memory (loading a GGUF base takes transformers ~15 s a time); the tiny tests load their adapter as PEFT does.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stillroom.providers.local import LocalProvider
from stillroom.training.student import read_peft_adapter, student_model_config, write_merged_gguf
from stillroom.training.trainer import TrainConfig, TrainResult, load_base, train
from tests.training.conftest import planted_examples

pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")

HELD_OUT = planted_examples(1, offset=57)[0]["messages"]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _llama_logits(model: Path, ids: list[int], **options: Any) -> np.ndarray:
    from llama_cpp import Llama

    llama = Llama(model_path=str(model), logits_all=True, n_ctx=512, verbose=False, **options)
    try:
        llama.eval(ids)
        return np.array(llama.scores[: len(ids)])
    finally:
        llama.close()


def _torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.asarray(model.eval()(torch.tensor([ids])).logits[0].numpy())


def _peft_logits(base: Path, adapter_dir: Path, messages: list[dict[str, Any]]) -> tuple[list[int], np.ndarray]:
    """(token ids of `messages`, their logits) from the base with the adapter saved in `adapter_dir`, as PEFT
    loads it."""
    from peft import PeftModel

    model, tokenizer = load_base(base)
    with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(model, adapter_dir)
    ids = _ids(tokenizer, messages)
    return ids, _torch_logits(model, ids)


def _ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def tiny_adapter(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA on the tiny model whose B matrices are far from zero (a freshly initialised LoRA is a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = load_base(tiny_gguf)
    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    out = tmp_path_factory.mktemp("tiny-adapter")
    peft_model.save_pretrained(out, save_embedding_layers=False)
    return out


# Measured: F32 0.019 (llama.cpp's F16 KV cache), Q8_0 0.51, with logits up to 4.2 and the adapter moving them 5.8.
@pytest.mark.parametrize(("qtype", "tolerance"), [("F32", 0.05), ("Q8_0", 0.75)])
def test_tiny_merged_student_logits_match_peft(
    tiny_gguf: Path, tiny_adapter: Path, tmp_path: Path, qtype: str, tolerance: float
) -> None:
    lora, alpha, r = read_peft_adapter(tiny_adapter)
    student = write_merged_gguf(tiny_gguf, lora, alpha / r, tmp_path / "student.gguf", qtype=qtype)
    ids, expected = _peft_logits(tiny_gguf, tiny_adapter, HELD_OUT)
    error = np.abs(_llama_logits(student, ids) - expected).max()
    effect = np.abs(_llama_logits(tiny_gguf, ids) - expected).max()
    assert error < tolerance and effect > 5 * error


def test_tiny_adapter_gguf_on_the_base_matches_peft(tiny_gguf: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    from stillroom.training.student import write_adapter_gguf

    lora, alpha, _ = read_peft_adapter(tiny_adapter)
    adapter = write_adapter_gguf(tiny_gguf, lora, alpha, tmp_path / "adapter.gguf")
    ids, expected = _peft_logits(tiny_gguf, tiny_adapter, HELD_OUT)
    served = _llama_logits(tiny_gguf, ids, lora_path=str(adapter))
    assert np.abs(served - expected).max() < 0.05


@pytest.fixture(scope="module")
def smollm2_run(
    smollm2_gguf: Path, planted_file: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    cfg = TrainConfig(
        base_model=smollm2_gguf,
        training_file=planted_file(12),
        validation_file=None,
        output_dir=tmp_path_factory.mktemp("smollm2-run"),
        n_epochs=1,
        batch_size=3,
        learning_rate_multiplier=5.0,
        seed=3,
    )
    return train(cfg, on_event=events.append, should_stop=lambda: False), events


def test_smollm2_short_run_learns_and_writes_a_student(smollm2_run: tuple[TrainResult, list[dict[str, Any]]]) -> None:
    result, events = smollm2_run
    losses = [e["data"]["train_loss"] for e in events if e["type"] == "metrics"]
    assert len(losses) == result.steps == 4 and losses[-1] < losses[0] / 2
    assert result.gguf_path is not None and result.adapter_gguf_path is not None
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 16


def test_smollm2_student_logits_match_peft_within_llama_cpp_noise(
    smollm2_gguf: Path, smollm2_run: tuple[TrainResult, list[dict[str, Any]]]
) -> None:
    result, _ = smollm2_run
    assert result.gguf_path is not None
    ids = _ids(result.tokenizer, HELD_OUT)
    expected = _log_softmax(_torch_logits(result.model, ids))  # the trained PEFT model the student was made from
    student = _log_softmax(_llama_logits(result.gguf_path, ids))
    base = _log_softmax(_llama_logits(smollm2_gguf, ids))
    error, effect = np.abs(student - expected).max(), np.abs(base - expected).max()
    assert error < 2.5 and effect > 5 * error
    assert (student.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_local_provider_serves_the_student_from_its_stored_path(
    smollm2_run: tuple[TrainResult, list[dict[str, Any]]],
) -> None:
    result, _ = smollm2_run
    assert result.gguf_path is not None
    provider = LocalProvider(student_model_config("ft:smollm2:proj::ftjob-abc", result.gguf_path))
    body = {"model": provider.name, "messages": HELD_OUT[:1], "temperature": 0, "max_tokens": 8}

    async def ask() -> Any:
        try:
            return json.loads(await provider.complete(body))
        finally:
            await provider.aclose()

    answer = asyncio.run(ask())
    assert answer["model"] == "ft:smollm2:proj::ftjob-abc"
    assert answer["choices"][0]["message"]["content"].startswith("Answer: ")
