"""Base models for trainer tests: a tiny llama built here (as GGUF and as a model folder) and the bundled SmolLM2.

The tiny model has SmolLM2's tokenizer and chat template (copied from the bundled GGUF) and random
weights: two layers of width 64, so a training step takes a fraction of a second. Nothing is downloaded.
Owned by the trainer tests (test_trainer.py, test_student.py); job and file tests keep their fixtures
in their own modules.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillroom.config import ModelConfig

TINY = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "initializer_range": 0.1,  # large enough that a few LoRA steps on attention move the loss
}

# A planted behaviour: every answer is "Answer: <the colour named in the question, upper case>."
COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "olive", "coral", "ivory", "black", "white", "pink"]


def planted_examples(n: int, offset: int = 0) -> list[dict[str, Any]]:
    examples = []
    for i in range(n):
        colour = COLOURS[(i + offset) % len(COLOURS)]
        examples.append(
            {
                "messages": [
                    {"role": "user", "content": f"Which colour is item {i + offset}? It is {colour}."},
                    {"role": "assistant", "content": f"Answer: {colour.upper()}."},
                ]
            }
        )
    return examples


def write_jsonl(path: Path, examples: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return ModelConfig(name="smollm2", provider="local").model_path()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stillroom.training.student import write_llama_gguf

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    state = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf"
    return write_llama_gguf(out, model.config.to_dict(), state, tokenizer_from=smollm2_gguf)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """The same tiny model as a Hugging Face folder (config.json, safetensors, tokenizer.json)."""
    pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-hf")
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def planted_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    folder = tmp_path_factory.mktemp("data")

    def make(n: int, offset: int = 0) -> Path:
        return write_jsonl(folder / f"planted-{n}-{offset}.jsonl", planted_examples(n, offset))

    return make
