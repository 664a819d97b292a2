"""Training and validation data must not overlap (OpenAI's rule): the examples two fine-tuning files share.

An example is compared by its JSON value (key order and spacing do not matter), through a 16-byte digest
per training example, so memory grows with the training file's example count, not its bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Overlap:
    shared: int  # validation examples that also appear in the training file
    first_line: int | None  # the first such line of the validation file (1-based)


def _digests(lines: Iterable[bytes]) -> Iterable[tuple[int, bytes]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            canonical = orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS)
            yield number, hashlib.blake2b(canonical, digest_size=16).digest()


def find_overlap(training: Iterable[bytes], validation: Iterable[bytes]) -> Overlap:
    """Both files line by line (already checked as fine-tuning JSONL)."""
    seen = {digest for _, digest in _digests(training)}
    shared, first = 0, None
    for number, digest in _digests(validation):
        if digest in seen:
            shared += 1
            first = first or number
    return Overlap(shared, first)
