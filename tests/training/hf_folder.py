"""A tiny Hugging Face llama folder built in the test: random weights and a 512-token byte-level BPE trained with
`tokenizers` on a few lines, in any of the three pre-tokenizer shapes `hf_gguf.py` converts. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stillroom.training.hf_gguf import LLAMA3_SPLIT
from tests.training.conftest import COLOURS, planted_examples

# ChatML without SmolLM2's default system turn, closing each turn with <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SAMPLE = (
    "<|im_start|>user\nWhich colour is item 1234567? It's naïve — café, 東京 and   three spaces.\n\n"
    "Don't stop: x=3.14, y=-2e10!<|im_end|>\n<|im_start|>assistant\nAnswer: RED.<|im_end|>\n"
)
CORPUS = [
    *(m["content"] for e in planted_examples(60) for m in e["messages"]),
    "It's a naïve café in 東京; don't you think so? We'll see, they've said I'd go.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 1234 3.14 -2e10, x=y+z; (a) [b] {c} <d> 'e' \"f\"",
    *(f"The {c} one, and the {d} one.\n\n  Then   more." for c, d in zip(COLOURS, reversed(COLOURS), strict=True)),
]
TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "initializer_range": 0.1,
}


def _pre_tokenizer(kind: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind != "llama-bpe")
    if kind == "gpt-2":
        return byte_level
    if kind == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False)
    return pre_tokenizers.Sequence([split, byte_level])


def _write_tokenizer(folder: Path, kind: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(ignore_merges=kind == "llama-bpe"))
    tokenizer.pre_tokenizer = _pre_tokenizer(kind)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def make_llama_folder(folder: Path, kind: str = "smollm", **config: Any) -> Path:
    """A tiny random llama as Hugging Face saves it, with a BPE tokenizer whose pre-tokenizer is `kind`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    saved_dtype = config.pop("saved_dtype", None)
    tokenizer = _write_tokenizer(folder, kind)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    settings = {"vocab_size": 512, "tie_word_embeddings": True, **TINY_LLAMA, **config}
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            bos_token_id=ids["<|im_start|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            **settings,
        )
    )
    if saved_dtype is not None:
        model = model.to(getattr(torch, saved_dtype))
    model.save_pretrained(folder)
    return folder
