"""A Hugging Face llama folder's student as llama.cpp runs it: the GGUF `hf_gguf.py` writes gives the logits
transformers (and PEFT, with the adapter merged) gives, and its tokenizer splits text as the folder's does.

The folders are built by `tests/training/hf_folder.py` (random weights, a tiny BPE trained with `tokenizers`), in each
of the three pre-tokenizer shapes the converter accepts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stillroom.errors import BadRequestError
from stillroom.training.hf_gguf import check_hf_base, write_hf_gguf, write_hf_student
from stillroom.training.student import read_peft_adapter
from tests.training.hf_folder import CHAT_TEMPLATE, SAMPLE, make_llama_folder

pytest.importorskip("torch", reason="the trainer needs the `train` extra (torch, transformers, peft, gguf)")


def _llama(model: Path, **options: Any) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(model), logits_all=True, n_ctx=512, verbose=False, **options)


def _llama_logits(model: Path, ids: list[int]) -> np.ndarray:
    llama = _llama(model)
    try:
        llama.eval(ids)
        return np.array(llama.scores[: len(ids)])
    finally:
        llama.close()


def _hf(folder: Path, adapter: Path | None = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 deprecates
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def _torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.asarray(model(torch.tensor([ids])).logits[0].numpy())


def _sample_ids(tokenizer: Any) -> list[int]:
    return list(tokenizer(SAMPLE, add_special_tokens=False)["input_ids"])


@pytest.fixture
def folder(llama_folder: Path) -> Path:
    return llama_folder


@pytest.fixture(scope="module")
def adapter(llama_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA on q/k/v/o whose B matrices are far from zero (a freshly initialised LoRA is a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = _hf(llama_folder)
    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    out = tmp_path_factory.mktemp("hf-adapter")
    peft_model.save_pretrained(out, save_embedding_layers=False)
    return out


# Measured: F32 ~0.01 (llama.cpp's F16 KV cache), Q8_0 ~0.3, with logits up to ~4.
@pytest.mark.parametrize(
    ("variant", "config"),
    [
        ("tied", {}),
        ("untied-bf16", {"tie_word_embeddings": False, "saved_dtype": "bfloat16"}),
        (
            "llama3-rope",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
        ),
    ],
)
def test_the_converted_folder_gives_transformers_logits(tmp_path: Path, variant: str, config: dict[str, Any]) -> None:
    folder = make_llama_folder(tmp_path / variant, **config)
    model, tokenizer = _hf(folder)
    ids = _sample_ids(tokenizer)
    expected = _torch_logits(model, ids)
    exact = write_hf_gguf(folder, {}, 1.0, tmp_path / "f32.gguf", qtype="F32")
    assert np.abs(_llama_logits(exact, ids) - expected).max() < 0.05
    quantised = write_hf_gguf(folder, {}, 1.0, tmp_path / "q8.gguf")
    assert np.abs(_llama_logits(quantised, ids) - expected).max() < 0.75


@pytest.mark.parametrize(("qtype", "tolerance"), [("F32", 0.05), ("Q8_0", 0.75)])
def test_the_merged_student_gives_peft_logits(
    folder: Path, adapter: Path, tmp_path: Path, qtype: str, tolerance: float
) -> None:
    lora, alpha, r = read_peft_adapter(adapter)
    student = write_hf_gguf(folder, lora, alpha / r, tmp_path / "student.gguf", qtype=qtype)
    model, tokenizer = _hf(folder, adapter)
    ids = _sample_ids(tokenizer)
    expected = _torch_logits(model, ids)
    error = np.abs(_llama_logits(student, ids) - expected).max()
    effect = np.abs(_torch_logits(_hf(folder)[0], ids) - expected).max()
    assert error < tolerance and effect > 5 * error


def test_write_hf_student_is_q8_0_with_the_tokenizer_and_template(folder: Path, adapter: Path, tmp_path: Path) -> None:
    import gguf

    student = write_hf_student(folder, adapter, tmp_path)
    assert student == tmp_path / "student.gguf"
    reader = gguf.GGUFReader(student)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied: llama.cpp uses token_embd

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    assert field("tokenizer.chat_template") == CHAT_TEMPLATE
    assert field("tokenizer.ggml.pre") == "smollm"
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    config = json.loads((folder / "config.json").read_text())
    assert field("tokenizer.ggml.eos_token_id") == config["eos_token_id"]


@pytest.mark.parametrize("kind", ["gpt-2", "smollm", "llama-bpe"])
def test_llama_cpp_tokenises_as_the_folder_does(tmp_path: Path, kind: str) -> None:
    from transformers import AutoTokenizer

    folder = make_llama_folder(tmp_path / kind, kind=kind)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    llama = _llama(write_hf_gguf(folder, {}, 1.0, tmp_path / "model.gguf"))
    try:
        ids = llama.tokenize(SAMPLE.encode(), add_bos=False, special=True)
        assert ids == _sample_ids(tokenizer)
        assert llama.detokenize(ids, special=True).decode() == SAMPLE
    finally:
        llama.close()


def test_other_architectures_and_tokenizers_are_refused(folder: Path, tmp_path: Path) -> None:
    from stillroom.training.runner import check_model_folder
    from stillroom.training.worker import JobFailed

    other = tmp_path / "qwen"
    other.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (other / name).write_bytes((folder / name).read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (other / "config.json").write_text(
        json.dumps(config | {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
    )
    with pytest.raises(JobFailed) as failed:
        check_model_folder(other)
    assert failed.value.error["code"] == "model_not_available" and failed.value.error["param"] == "model"
    assert "'Qwen2ForCausalLM'" in str(failed.value.error["message"])

    (other / "config.json").write_text(json.dumps(config))
    check_hf_base(other)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(BadRequestError, match="pre-tokenizer \\(Metaspace\\)"):
        check_hf_base(other)


def test_a_model_folder_is_a_local_base_that_llama_cpp_does_not_run(folder: Path, tmp_path: Path) -> None:
    import asyncio

    from stillroom.config import ModelConfig
    from stillroom.errors import ConfigError
    from stillroom.providers.local import LocalProvider

    base = ModelConfig(name="folder", provider="local", path=folder)
    assert base.model_path() == folder and base.is_model_folder
    with pytest.raises(ConfigError, match=r"no GGUF file or model folder with a config\.json"):
        ModelConfig(name="empty", provider="local", path=tmp_path).model_path()
    provider = LocalProvider(base)
    provider.load()  # nothing to load: the server starts
    body = {"model": "folder", "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(BadRequestError) as refused:
        asyncio.run(provider.complete(body))
    assert refused.value.code == "model_not_supported" and refused.value.param == "model"
