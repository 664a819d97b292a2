"""Base models for trainer tests: a tiny llama built here (as GGUF and as a model folder) and the bundled SmolLM2.

The tiny model has SmolLM2's chat template and a 4,096-token cut of its BPE vocabulary (the first tokens
and the merges that build them, so it still tokenises any text) and random weights: two layers of width
64, so a training step takes a fraction of a second and its GGUF parses quickly. Nothing is downloaded.
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
from tests.conftest import NewDatabase

TINY = {
    "vocab_size": 4096,
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


def _write_tiny_tokenizer(smollm2: Path, out: Path, n_vocab: int) -> Path:
    """A tensor-less GGUF holding SmolLM2's tokenizer cut to its first `n_vocab` tokens."""
    import gguf

    reader = gguf.GGUFReader(smollm2)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:n_vocab]
    kept = set(tokens)
    writer = gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            value = value[:n_vocab]
        elif key == "tokenizer.ggml.merges":
            value = [m for m in value if m.replace(" ", "") in kept and set(m.split(" ")) <= kept]
        vtype = gguf.GGUFValueType(field.types[0])
        sub_type = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stillroom.training.student import write_llama_gguf

    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = _write_tiny_tokenizer(smollm2_gguf, folder / "tokenizer.gguf", TINY["vocab_size"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    state = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    return write_llama_gguf(folder / "tiny-llama.gguf", model.config.to_dict(), state, tokenizer_from=tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:
    """The same tiny model as a Hugging Face folder (config.json, safetensors, tokenizer.json)."""
    pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-hf")
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face llama folder with a BPE tokenizer of its own (`tests/training/hf_folder.py`)."""
    pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")
    from tests.training.hf_folder import make_llama_folder

    return make_llama_folder(tmp_path_factory.mktemp("hf-llama"))


@pytest.fixture(scope="session")
def planted_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    folder = tmp_path_factory.mktemp("data")

    def make(n: int, offset: int = 0) -> Path:
        return write_jsonl(folder / f"planted-{n}-{offset}.jsonl", planted_examples(n, offset))

    return make


@pytest.fixture(scope="module")
def db_url(db_url: str, new_database: NewDatabase) -> str:
    """Each module of job tests gets a database of its own on the session's backend: a worker claims any queued
    job, and other modules leave some queued (or keys that end laptop mode)."""
    return new_database(db_url)


@pytest.fixture(scope="module")
def own_postgres_url(postgres_url: str, new_database: NewDatabase) -> str:
    """The same for tests that need PostgreSQL whatever the session's backend. (Not an override of
    `postgres_url`: the session's `db_url` asks for that one, and a module-scoped override is a ScopeMismatch.)"""
    return new_database(postgres_url)
