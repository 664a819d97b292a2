"""The `text_similarity` metrics, each a pure function (input, reference) -> score in [0, 1], all offline.

- fuzzy_match: rapidfuzz `fuzz.ratio` / 100 (normalised Indel similarity; case and spacing count).
- bleu: sacrebleu `sentence_bleu` (13a tokeniser, exponential smoothing) / 100.
- gleu: nltk `sentence_gleu` (Google-BLEU, 1-4 grams) on whitespace tokens.
- meteor: nltk `meteor_score` on lower-cased whitespace tokens: exact and Porter-stem matches, plus WordNet
  synonyms only when the WordNet corpus is already installed (nltk data is never downloaded). Without it
  the score is METEOR without the synonym stage; `meteor_uses_wordnet()` says which.
- rouge_1 .. rouge_5, rouge_l: rouge-score F-measure (its tokeniser, no stemming).
- cosine: cosine of all-MiniLM-L6-v2 sentence embeddings (see `embeddings.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from stillroom.evals.embeddings import cosine_similarity

Metric = Callable[[str, str], float]


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return float(fuzz.ratio(text, reference)) / 100.0


def bleu(text: str, reference: str) -> float:
    return float(_bleu().sentence_score(text, [reference]).score) / 100.0


@cache
def _bleu() -> Any:
    from sacrebleu.metrics.bleu import BLEU

    return BLEU(effective_order=True)


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    hypothesis, references = text.split(), [reference.split()]
    if not hypothesis or not references[0]:
        return 1.0 if hypothesis == references[0] else 0.0
    return float(sentence_gleu(references, hypothesis))


class _NoSynonyms:
    """Stands in for nltk's WordNet reader when its corpus is not installed: no synonym matches."""

    def synsets(self, word: str) -> list[Any]:
        return []


@cache
def meteor_uses_wordnet() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet.zip")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            return False
    return True


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    hypothesis, ref = text.lower().split(), reference.lower().split()
    if not hypothesis or not ref:
        return 1.0 if hypothesis == ref else 0.0
    if meteor_uses_wordnet():
        from nltk.corpus import wordnet

        return float(meteor_score([ref], hypothesis, wordnet=wordnet))
    return float(meteor_score([ref], hypothesis, wordnet=_NoSynonyms()))


@cache
def _rouge_scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def _rouge(kind: str) -> Metric:
    def score(text: str, reference: str) -> float:
        return float(_rouge_scorer(kind).score(reference, text)[kind].fmeasure)

    score.__name__ = kind
    return score


def cosine(text: str, reference: str) -> float:
    return cosine_similarity(text, reference)


METRICS: dict[str, Metric] = {
    "cosine": cosine,
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}
