"""OpenAI-style ids. Completion ids sort by creation time, so keyset pages can use them directly."""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # ASCII order
_RANDOM_SPAN = 62**20
_lock = threading.Lock()
_last_micros = 0


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_completion_id() -> str:
    """`chatcmpl-` + 29 alphanumerics: 9 of microsecond time (strictly rising per process) + 20 random."""
    global _last_micros
    with _lock:
        micros = max(time.time_ns() // 1000, _last_micros + 1)
        _last_micros = micros
    return "chatcmpl-" + _base62(micros, 9) + _base62(int.from_bytes(secrets.token_bytes(16)) % _RANDOM_SPAN, 20)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(12)


def new_project_id() -> str:
    return "proj_" + secrets.token_hex(12)


def new_seed() -> int:
    """A sampling seed for a request that sent none, as OpenAI records one on stored completions. Below 2**31,
    so every upstream (and llama.cpp's 32-bit seeds) takes it as it is."""
    return secrets.randbelow(2**31)


def new_sortable_id(prefix: str) -> str:
    """`prefix` + 9 characters of microsecond time (strictly rising per process) + 15 random: the ids of files,
    fine-tuning jobs, events and checkpoints, which lists page through newest first."""
    global _last_micros
    with _lock:
        micros = max(time.time_ns() // 1000, _last_micros + 1)
        _last_micros = micros
    return prefix + _base62(micros, 9) + _base62(int.from_bytes(secrets.token_bytes(12)) % 62**15, 15)


def completion_id_floor(micros: int) -> str:
    """The smallest completion id minted at or after `micros` (microseconds since the epoch): ids compare
    with it as their times do, so time ranges are id ranges."""
    return "chatcmpl-" + _base62(max(micros, 0), 9)
