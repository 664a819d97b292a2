"""Completion ids: OpenAI's shape, and strictly rising in creation order (keyset pages rely on it)."""

from __future__ import annotations

import itertools
import re
import threading

from stillroom.wire.ids import new_completion_id, new_request_id

COMPLETION_ID = re.compile(r"chatcmpl-[0-9A-Za-z]{29}")


def test_completion_id_is_chatcmpl_and_29_alphanumerics() -> None:
    for _ in range(1000):
        cid = new_completion_id()
        assert COMPLETION_ID.fullmatch(cid), cid
        assert len(cid) == len("chatcmpl-") + 29


def test_completion_ids_made_in_a_tight_loop_sort_strictly_ascending_as_bytes() -> None:
    ids = [new_completion_id() for _ in range(20000)]
    encoded = [i.encode("ascii") for i in ids]
    assert all(a < b for a, b in itertools.pairwise(encoded))
    assert len(set(ids)) == len(ids)


def test_completion_ids_from_several_threads_are_unique_and_rise_in_each_thread() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        out.extend(new_completion_id() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [cid for out in results for cid in out]
    assert len(set(every)) == len(every)
    for out in results:
        assert out == sorted(out)
    # The 9-character time prefix is unique per id across threads as well.
    assert len({cid[:18] for cid in every}) == len(every)


def test_completion_ids_are_random_after_the_time_prefix() -> None:
    tails = {new_completion_id()[18:] for _ in range(1000)}
    assert len(tails) == 1000


def test_request_id_is_req_and_32_hex_characters() -> None:
    rid = new_request_id()
    assert re.fullmatch(r"req_[0-9a-f]{32}", rid)
    assert rid != new_request_id()
