"""The numpy MiniLM encoder reproduces sentence-transformers on the same bundled weights."""

from __future__ import annotations

import numpy as np
import pytest

from stillroom.evals.embeddings import default_encoder, model_dir

SENTENCES = ["The cat sits on the mat.", "", "Invoice #4411 was paid twice; please refund the duplicate charge. " * 20]


def test_vectors_match_sentence_transformers() -> None:
    sentence_transformers = pytest.importorskip(
        "sentence_transformers", reason="the reference implementation comes with the evals extra (torch)"
    )
    reference = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")
    expected = reference.encode(SENTENCES)
    ours = np.stack([default_encoder().encode(s) for s in SENTENCES])
    assert ours.shape == (3, 384)
    assert np.abs(ours - expected).max() < 1e-5


def test_vectors_are_unit_length() -> None:
    assert float(np.linalg.norm(default_encoder().encode("hello"))) == pytest.approx(1.0, abs=1e-6)
