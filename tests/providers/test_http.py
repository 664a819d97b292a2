"""The `openai` and `azure` providers, forwarding to a second Stillroom process over real HTTP."""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from tests.conftest import GATEWAY_KEY, UPSTREAM_KEY
from tests.live import LiveServer

PROMPT = [{"role": "user", "content": "Say yes."}]


@pytest.mark.parametrize("model", ["relay", "relay-azure"])
def test_forwarded_completion_is_returned_and_stored(client: openai.OpenAI, model: str, tag: str) -> None:
    answer = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=4, store=True, metadata={"tag": tag}, temperature=0
    )
    assert answer.choices[0].message.content
    stored = client.chat.completions.retrieve(answer.id)
    assert stored.choices[0].message.content == answer.choices[0].message.content
    assert (stored.model_extra or {})["stillroom"]["provider"] == ("azure" if model == "relay-azure" else "openai")
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, model=model)] == [answer.id]


@pytest.mark.parametrize("model", ["relay", "relay-azure"])
def test_forwarded_stream_is_relayed_and_stored(client: openai.OpenAI, model: str, tag: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=PROMPT,
            max_tokens=6,
            store=True,
            metadata={"tag": tag},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert stored.choices[0].message.content == text
    assert stored.usage is not None and chunks[-1].usage is not None
    assert stored.usage.total_tokens == chunks[-1].usage.total_tokens


def test_store_and_metadata_are_not_forwarded_upstream(client: openai.OpenAI, upstream: LiveServer, tag: str) -> None:
    client.chat.completions.create(model="relay", messages=PROMPT, max_tokens=1, store=True, metadata={"tag": tag})
    direct = openai.OpenAI(base_url=upstream.url + "/v1", api_key=UPSTREAM_KEY, max_retries=0)
    assert direct.chat.completions.list(metadata={"tag": tag}).data == []


def test_upstream_error_is_relayed_and_nothing_stored(
    client: openai.OpenAI, engine: Engine, server: LiveServer
) -> None:
    before = count_rows(engine)
    with pytest.raises(openai.NotFoundError) as info:  # the upstream Stillroom has no such model
        client.chat.completions.create(model="relay-missing", messages=PROMPT, store=True)
    assert info.value.code == "model_not_found"
    assert "no-such-model" in info.value.message
    assert count_rows(engine) == before


def test_unreachable_upstream_is_a_502_and_nothing_stored(client: openai.OpenAI, engine: Engine) -> None:
    before = count_rows(engine)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="unreachable", messages=PROMPT, store=True)
    assert info.value.status_code == 502
    assert info.value.code == "bad_gateway"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="unreachable", messages=PROMPT, store=True, stream=True)
    assert count_rows(engine) == before


def test_upstream_key_is_never_stored_or_logged(
    client: openai.OpenAI, server: LiveServer, upstream: LiveServer, engine: Engine, tag: str
) -> None:
    client.chat.completions.create(model="relay", messages=PROMPT, max_tokens=1, store=True, metadata={"tag": tag})
    with engine.connect() as conn:
        dump = "\n".join(
            str(row)
            for table in ("completions", "message_contents", "completion_metadata")
            for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
        )
    assert UPSTREAM_KEY not in dump and GATEWAY_KEY not in dump
    assert UPSTREAM_KEY not in server.log() and GATEWAY_KEY not in server.log()
    assert UPSTREAM_KEY not in upstream.log()
