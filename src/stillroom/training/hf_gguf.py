"""A Hugging Face llama model folder as a llama.cpp GGUF: the merged student of a job whose base is a folder.

A GGUF base's student copies that GGUF (`student.py`); a folder has no GGUF to copy, so its student is
written here from the folder itself, the small llama-only part of llama.cpp's `convert_hf_to_gguf.py`:

- metadata from `config.json` (context, width, blocks, feed-forward width, head counts, RoPE base and
  llama3 scaling, RMS epsilon, vocabulary size);
- every weight of `model.safetensors` (or its shards) under llama.cpp's name, each adapted one as
  `W + scale·B·A`, `attn_q`/`attn_k` rows permuted for llama.cpp's RoPE layout, 2-D weights Q8_0 (F32 where
  a row is not a whole number of 32-value blocks), norms F32;
- the byte-level BPE tokenizer of `tokenizer.json` (tokens, token types, merges), its special ids and the
  chat template of `tokenizer_config.json` (`gguf.SpecialVocab`), and the pre-tokenizer llama.cpp must
  split text with. llama.cpp's converter recognises that by hashing the tokenisation of a test text;
  here it is read from `tokenizer.json`'s `pre_tokenizer`, and only the three shapes of the llama family
  are accepted: GPT-2's byte-level regex (`gpt-2`), digits split first (`smollm`: SmolLM/SmolLM2) and
  Llama 3's split regex (`llama-bpe`). A BOS token is added only where the tokenizer adds one.

`check_hf_base` refuses what this writer cannot convert before a job trains. Only numpy and `gguf` are
needed (no torch): the safetensors are read here, bf16 included.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stillroom.errors import BadRequestError
from stillroom.training.student import LoraWeights, permute_rows, read_peft_adapter

if TYPE_CHECKING:
    import gguf

ARCHITECTURES = ("LlamaForCausalLM",)
# tokenizer.json's `pre_tokenizer.pretokenizers[0].pattern.Regex` for Llama 3 (llama.cpp's "llama-bpe").
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _refuse(message: str) -> BadRequestError:
    return BadRequestError(message, param="model")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise _refuse(f"The base model folder {path.parent} has no {path.name}.") from None
    except ValueError as exc:
        raise _refuse(f"The base model's {path.name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _refuse(f"The base model's {path.name} is not a JSON object.")
    return value


def _rope(config: Mapping[str, Any]) -> dict[str, Any]:
    """The RoPE settings, as transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`) saves them."""
    rope = {"rope_theta": config.get("rope_theta", 10000.0), **(config.get("rope_scaling") or {})}
    rope |= config.get("rope_parameters") or {}
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _check_config(config: Mapping[str, Any]) -> None:
    architectures = config.get("architectures") or [config.get("model_type")]
    if config.get("model_type") != "llama" or architectures[0] not in ARCHITECTURES:
        raise _refuse(
            f"The base model's architecture {architectures[0]!r} cannot be served as a student: only Hugging Face "
            f"llama models ({', '.join(ARCHITECTURES)}: Llama, SmolLM, SmolLM2) are converted to GGUF here."
        )
    if config.get("attention_bias") or config.get("mlp_bias") or config.get("hidden_act", "silu") != "silu":
        raise _refuse("The base model uses biases or an activation other than SiLU, which this converter does not.")
    rope_type = _rope(config)["rope_type"]
    if rope_type not in ("default", "llama3"):
        raise _refuse(f"The base model's RoPE scaling {rope_type!r} is not supported (only none or 'llama3').")


def pre_tokenizer_name(tokenizer: Mapping[str, Any]) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a `tokenizer.json`; BadRequestError for any other kind."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or tokenizer.get("normalizer"):
        raise _refuse(
            "The base model's tokenizer is not a byte-level BPE (a SentencePiece tokenizer is not supported)."
        )
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    last = steps[-1] if steps else {}
    if kinds[-1:] == ["ByteLevel"] and not last.get("add_prefix_space"):
        ignore_merges = bool(model.get("ignore_merges"))
        if kinds == ["ByteLevel"] and last.get("use_regex", True) and not ignore_merges:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True):
            return "smollm"
        if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True) and _is_llama3_split(steps[0]):
            return "llama-bpe"
    raise _refuse(
        f"The base model's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one llama.cpp's "
        "llama family uses (GPT-2, SmolLM or Llama 3 byte-level BPE)."
    )


def _is_llama3_split(step: Mapping[str, Any]) -> bool:
    pattern = (step.get("pattern") or {}).get("Regex")
    return pattern == LLAMA3_SPLIT and step.get("behavior") == "Isolated" and not step.get("invert")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(_read_json(index)["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise _refuse(f"The base model folder {folder} has no model.safetensors (PyTorch .bin weights are not read).")


def check_hf_base(folder: Path) -> None:
    """BadRequestError (param `model`) unless `folder` is a llama model this module can write as GGUF."""
    _check_config(_read_json(folder / "config.json"))
    pre_tokenizer_name(_read_json(folder / "tokenizer.json"))
    _weight_files(folder)


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, fp32 array) for each tensor of a safetensors file (F32, F16 or BF16), without torch."""
    with path.open("rb") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise _refuse(f"The base model's tensor {name} is {info['dtype']}; only F32, F16 and BF16 are read.")
            start, end = info["data_offsets"]
            file.seek(8 + size + start)
            raw = np.frombuffer(file.read(end - start), dtype=dtype)
            if info["dtype"] == "BF16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            yield name, raw.astype(np.float32).reshape(info["shape"])


def _add_parameters(writer: gguf.GGUFWriter, config: Mapping[str, Any], name: str) -> None:
    n_head = int(config["num_attention_heads"])
    width = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or width // n_head)
    writer.add_string("general.type", "model")
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(width)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != width // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _llama3_rope_factors(config: Mapping[str, Any]) -> np.ndarray:
    """llama.cpp's `rope_freqs.weight` for Llama 3's scaled RoPE (as its converter computes it)."""
    rope = _rope(config)
    dim = int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))
    freqs = 1.0 / (float(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _add_vocabulary(writer: gguf.GGUFWriter, folder: Path, n_vocab: int) -> None:
    import gguf

    tokenizer = _read_json(folder / "tokenizer.json")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    by_id = {int(i): token for token, i in tokenizer["model"]["vocab"].items()}
    kinds = {i: gguf.TokenType.NORMAL for i in by_id}
    for added in tokenizer.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        kinds[int(added["id"])] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if max(by_id) >= n_vocab:
        raise _refuse(f"The base model's tokenizer has token id {max(by_id)}, beyond its vocab_size {n_vocab}.")
    writer.add_token_list([by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)])
    writer.add_token_types([kinds.get(i, gguf.TokenType.UNUSED) for i in range(n_vocab)])
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    special.add_special_token.setdefault("bos", False)  # llama.cpp's default for `llama-bpe` is True; HF's is not
    special.add_to_gguf(writer, quiet=True)


def _add_tensor(writer: gguf.GGUFWriter, name: str, matrix: np.ndarray, quant: gguf.GGMLQuantizationType) -> None:
    import gguf

    block = gguf.GGML_QUANT_SIZES[quant][0]
    if matrix.ndim == 1 or quant == gguf.GGMLQuantizationType.F32 or matrix.shape[-1] % block:
        writer.add_tensor(name, np.ascontiguousarray(matrix, dtype=np.float32))
        return
    data = gguf.quants.quantize(matrix, quant)
    writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=quant)


def _gguf_weights(
    folder: Path, config: Mapping[str, Any], lora: Mapping[str, LoraWeights], scale: float
) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, weight in llama.cpp's order) for every tensor the GGUF holds, LoRA deltas merged."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    if _rope(config)["rope_type"] == "llama3":
        yield "rope_freqs.weight", _llama3_rope_factors(config)
    unused = set(lora)
    for path in _weight_files(folder):
        for hf_name, value in read_safetensors(path):
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise _refuse(f"The base model holds a tensor this converter does not know: {hf_name}")
            if name == "output.weight" and config.get("tie_word_embeddings"):
                continue
            if name in lora:
                value = value + np.float32(scale) * (lora[name].b @ lora[name].a)
                unused.discard(name)
            if ".attn_q." in name:
                value = permute_rows(value, n_head)
            elif ".attn_k." in name:
                value = permute_rows(value, n_head_kv)
            yield name, value
    if unused:
        raise BadRequestError(f"The adapter does not fit the base model: no tensor {sorted(unused)[0]} in it.")


def write_hf_gguf(
    folder: Path, lora: Mapping[str, LoraWeights], scale: float, out: Path, *, qtype: str = "Q8_0"
) -> Path:
    """The llama model in `folder` with `W + scale·B·A` for each adapted weight, as one GGUF llama.cpp serves."""
    import gguf

    config = _read_json(folder / "config.json")
    _check_config(config)
    writer = gguf.GGUFWriter(out, "llama")
    _add_parameters(writer, config, folder.name)
    quant = gguf.GGMLQuantizationType[qtype]
    if quant == gguf.GGMLQuantizationType.Q8_0:
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_vocabulary(writer, folder, int(config["vocab_size"]))
    for name, matrix in _gguf_weights(folder, config, lora, scale):
        _add_tensor(writer, name, matrix, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_hf_student(base_dir: Path, adapter_dir: Path, output_dir: Path) -> Path:
    """output_dir/student.gguf: the merged Q8_0 student of a PEFT adapter trained on the model in `base_dir`."""
    lora, alpha, r = read_peft_adapter(adapter_dir)
    return write_hf_gguf(base_dir, lora, alpha / r, output_dir / "student.gguf")
