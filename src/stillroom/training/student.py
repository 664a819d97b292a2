"""The student model as llama.cpp serves it: a merged GGUF or a GGUF LoRA adapter, from a PEFT adapter.

A merged student copies its base GGUF (metadata, tokenizer, chat template and every tensor the adapter
leaves alone, byte for byte) and replaces each adapted weight `W` with `W + scale·B·A`, quantised to Q8_0:
llama.cpp then runs it at its base's speed (an F16/F32 merge runs at 45-75%, an adapter applied at run time
on a 4-bit base costs about a quarter). The adapter GGUF is llama.cpp's `general.type = "adapter"` format
for `Llama(lora_path=...)`: `<tensor>.lora_a` (r, in) and `<tensor>.lora_b` (out, r).

llama.cpp stores `attn_q`/`attn_k` rows permuted for its RoPE layout; transformers undoes that when it
loads a GGUF, so deltas computed in Hugging Face order are permuted here (B only: `P(B·A) = P(B)·A`).

Only numpy is imported at module level: `student_model_config` is what a `serve` process calls, and the
`gguf`/`safetensors` packages (the `train` extra) load inside the functions that write files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stillroom.config import ModelConfig
from stillroom.errors import BadRequestError

if TYPE_CHECKING:
    import gguf

# Hugging Face llama module -> GGUF tensor stem, for the weights a LoRA may adapt.
_PROJECTIONS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LORA_KEY = re.compile(r"layers\.(\d+)\.([a-z_]+\.[a-z_]+)\.lora_([AB])\.weight$")
# Written by GGUFWriter itself, or describing the file rather than the model.
_OWN_FIELDS = ("GGUF.", "general.architecture")


@dataclass(frozen=True)
class LoraWeights:
    """One adapted GGUF tensor: `delta = scale · b @ a`, in Hugging Face (unpermuted) row order."""

    a: np.ndarray  # (r, in)
    b: np.ndarray  # (out, r)


def student_model_config(name: str, gguf_path: Path, *, n_ctx: int = 2048) -> ModelConfig:
    """The model entry a registry serves a trained student under (`ft:<base>:<project>:<suffix>:<job id>`)."""
    return ModelConfig.model_validate({"name": name, "provider": "local", "path": gguf_path, "n_ctx": n_ctx})


def read_peft_adapter(adapter_dir: Path) -> tuple[dict[str, LoraWeights], float, int]:
    """A PEFT adapter folder -> ({GGUF tensor name: weights}, alpha, r)."""
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_rslora") or config.get("use_dora"):
        raise BadRequestError("Only plain LoRA adapters can be written as GGUF (not rsLoRA or DoRA).")
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _LORA_KEY.search(key)
        if match is None or match.group(2) not in _PROJECTIONS:
            raise BadRequestError(f"The adapter holds a tensor this writer does not know: {key}")
        name = f"blk.{match.group(1)}.{_PROJECTIONS[match.group(2)]}.weight"
        parts.setdefault(name, {})[match.group(3)] = value.astype(np.float32)
    weights = {name: LoraWeights(a=p["A"], b=p["B"]) for name, p in parts.items()}
    return weights, float(config["lora_alpha"]), int(config["r"])


def _head_counts(reader: gguf.GGUFReader) -> tuple[int, int]:
    arch = _field(reader, "general.architecture")
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv") or n_head)
    return n_head, n_head_kv


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's RoPE row order for a q/k projection (or its LoRA B), from Hugging Face's."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _gguf_order(name: str, matrix: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    if ".attn_q." in name:
        return permute_rows(matrix, n_head)
    if ".attn_k." in name:
        return permute_rows(matrix, n_head_kv)
    return matrix


def _copy_fields(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, overrides: Mapping[str, Any]) -> None:
    import gguf

    for key, field in reader.fields.items():
        if key.startswith(_OWN_FIELDS) or key in overrides:
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        sub_type = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)
    for key, value in overrides.items():
        vtype = gguf.GGUFValueType.get_type(value)
        writer.add_key_value(key, value, vtype)


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _open(base: Path | gguf.GGUFReader) -> gguf.GGUFReader:
    """A reader for the base (parsing a 49k-token vocabulary takes seconds: pass one reader to both writers)."""
    import gguf

    return base if isinstance(base, gguf.GGUFReader) else gguf.GGUFReader(base)


def write_merged_gguf(
    base_gguf: Path | gguf.GGUFReader,
    lora: Mapping[str, LoraWeights],
    scale: float,
    out: Path,
    *,
    qtype: str = "Q8_0",
) -> Path:
    """Copy `base_gguf` with `W + scale·B·A` in place of each adapted tensor, that tensor stored as `qtype`."""
    import gguf

    reader = _open(base_gguf)
    n_head, n_head_kv = _head_counts(reader)
    quant = gguf.GGMLQuantizationType[qtype]
    missing = set(lora) - {t.name for t in reader.tensors}
    if missing:
        raise BadRequestError(f"The adapter does not fit the base model: no tensor {sorted(missing)[0]} in it.")
    writer = gguf.GGUFWriter(out, str(_field(reader, "general.architecture")))
    _copy_fields(reader, writer, {"general.type": "model"})
    for tensor in reader.tensors:
        weights = lora.get(tensor.name)
        if weights is None:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
            continue
        base = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        delta = _gguf_order(tensor.name, weights.b, n_head, n_head_kv) @ weights.a
        merged = base + np.float32(scale) * delta
        if quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor.name, merged)
        else:
            data = gguf.quants.quantize(merged, quant)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=quant)
    _finish(writer)
    return out


def write_adapter_gguf(
    base_gguf: Path | gguf.GGUFReader, lora: Mapping[str, LoraWeights], alpha: float, out: Path
) -> Path:
    """llama.cpp's LoRA adapter file for `base_gguf` (served with `Llama(lora_path=out)`)."""
    import gguf

    reader = _open(base_gguf)
    n_head, n_head_kv = _head_counts(reader)
    writer = gguf.GGUFWriter(out, str(_field(reader, "general.architecture")))
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    for name, weights in lora.items():
        stem = name.removesuffix(".weight")
        writer.add_tensor(f"{stem}.weight.lora_a", np.ascontiguousarray(weights.a, dtype=np.float32))
        b = _gguf_order(name, weights.b, n_head, n_head_kv)
        writer.add_tensor(f"{stem}.weight.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    _finish(writer)
    return out


def write_student(base_gguf: Path, adapter_dir: Path, output_dir: Path) -> tuple[Path, Path]:
    """(output_dir/student.gguf, output_dir/adapter.gguf) for a PEFT adapter trained on `base_gguf`."""
    lora, alpha, r = read_peft_adapter(adapter_dir)
    reader = _open(base_gguf)
    merged = write_merged_gguf(reader, lora, alpha / r, output_dir / "student.gguf")
    return merged, write_adapter_gguf(reader, lora, alpha, output_dir / "adapter.gguf")


def write_llama_gguf(
    out: Path,
    config: Mapping[str, Any],
    state_dict: Mapping[str, np.ndarray],
    *,
    tokenizer_from: Path | gguf.GGUFReader,
    qtype: str = "F32",
) -> Path:
    """A Hugging Face llama checkpoint (config.json values, numpy state dict) as a GGUF model.

    The tokenizer and chat template come from another GGUF with the same vocabulary (`tokenizer_from`):
    the tiny test models reuse the bundled SmolLM2's.
    """
    import gguf

    source = _open(tokenizer_from)
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    width = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or width // n_head)
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_string("general.type", "model")
    writer.add_string("general.name", str(config.get("_name_or_path") or "stillroom-llama"))
    writer.add_uint32("llama.block_count", int(config["num_hidden_layers"]))
    writer.add_uint32("llama.context_length", int(config.get("max_position_embeddings", 2048)))
    writer.add_uint32("llama.embedding_length", width)
    writer.add_uint32("llama.feed_forward_length", int(config["intermediate_size"]))
    writer.add_uint32("llama.attention.head_count", n_head)
    writer.add_uint32("llama.attention.head_count_kv", n_head_kv)
    writer.add_float32("llama.rope.freq_base", float(_rope_theta(config)))
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", float(config.get("rms_norm_eps", 1e-5)))
    writer.add_uint32("llama.vocab_size", int(config["vocab_size"]))
    writer.add_uint32("llama.rope.dimension_count", head_dim)
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            vtype = gguf.GGUFValueType(field.types[0])
            sub_type = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type)
    quant = gguf.GGMLQuantizationType[qtype]
    for hf_name, value in state_dict.items():
        name = _gguf_tensor_name(hf_name)
        if name is None or (name == "output.weight" and config.get("tie_word_embeddings")):
            continue
        matrix = _gguf_order(name, np.asarray(value, dtype=np.float32), n_head, n_head_kv)
        if matrix.ndim == 1 or quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(matrix))
        else:
            data = gguf.quants.quantize(matrix, quant)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=quant)
    _finish(writer)
    return out


def _rope_theta(config: Mapping[str, Any]) -> float:
    parameters = config.get("rope_parameters") or {}
    return float(parameters.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _gguf_tensor_name(hf_name: str) -> str | None:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    if hf_name == "lm_head.weight":
        return "output.weight"
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
    if match is None:
        return None
    norms = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    stem = _PROJECTIONS.get(match.group(2)) or norms.get(match.group(2))
    return None if stem is None else f"blk.{match.group(1)}.{stem}.weight"
