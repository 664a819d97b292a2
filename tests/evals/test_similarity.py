"""Each text-similarity metric against values worked out by hand, and a case where it must fail."""

from __future__ import annotations

import pytest

from stillroom.evals import similarity
from stillroom.evals.similarity import METRICS


def test_every_openai_metric_is_offered() -> None:
    openai_metrics = {"cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_l"} | {
        f"rouge_{n}" for n in range(1, 6)
    }
    assert set(METRICS) == openai_metrics


# Hypothesis "the cat sat" against reference "the cat sat on" (3 and 4 tokens, all 3 matching in order).
HAND_CHECKED = {
    # Indel similarity: longest common subsequence 11 chars, lengths 11 + 14: 2*11/25.
    "fuzzy_match": 22 / 25,
    # n-gram precisions 3/3, 2/2, 1/1 (effective order 3), brevity penalty exp(1 - 4/3).
    "bleu": 0.7165313105737893,
    # GLEU: 1-4-gram matches 3+2+1 = 6; hypothesis has 6 n-grams, reference 10: min(6/6, 6/10).
    "gleu": 0.6,
    # P=1, R=3/4, Fmean = 10PR/(R+9P) = 10/13; one chunk of 3 matches: penalty 0.5*(1/3)^3.
    "meteor": (10 / 13) * (1 - 0.5 / 27),
    # unigram F: P=1, R=3/4 -> 6/7; bigrams P=2/2, R=2/3 -> 0.8; trigrams 1/1, 1/2 -> 2/3; no 4-grams.
    "rouge_1": 6 / 7,
    "rouge_2": 0.8,
    "rouge_3": 2 / 3,
    "rouge_4": 0.0,
    "rouge_5": 0.0,
    # LCS 3 tokens: P=1, R=3/4.
    "rouge_l": 6 / 7,
}


@pytest.mark.parametrize("metric", sorted(HAND_CHECKED))
def test_metric_matches_hand_computed_value(metric: str) -> None:
    assert METRICS[metric]("the cat sat", "the cat sat on") == pytest.approx(HAND_CHECKED[metric], abs=1e-9)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_identical_text_scores_one(metric: str) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    assert METRICS[metric](text, text) == pytest.approx(1.0, abs=2e-3)  # meteor's fragmentation: 1 - 0.5/9^3


@pytest.mark.parametrize("metric", sorted(set(METRICS) - {"cosine", "fuzzy_match"}))
def test_disjoint_text_scores_zero(metric: str) -> None:
    assert METRICS[metric]("alpha beta gamma delta", "one two three four") == 0.0


def test_fuzzy_match_of_kitten_and_sitting() -> None:
    # LCS "ittn" = 4 characters over 6 + 7: 8/13.
    assert METRICS["fuzzy_match"]("kitten", "sitting") == pytest.approx(8 / 13)


def test_meteor_stems_without_wordnet_data() -> None:
    # "cats" and "cat" meet at the Porter stem stage; no corpus download is needed for that.
    assert METRICS["meteor"]("cats", "cat") > 0.4
    assert isinstance(similarity.meteor_uses_wordnet(), bool)


def test_cosine_ranks_a_paraphrase_above_an_unrelated_sentence() -> None:
    near = METRICS["cosine"]("The cat sits on the mat.", "A cat is sitting on a mat.")
    far = METRICS["cosine"]("The cat sits on the mat.", "Quarterly revenue grew by ten percent.")
    assert near > 0.9 > 0.1 > far
