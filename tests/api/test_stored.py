"""Stored completions through the real SDK: list filters, pagination both ways, messages, update, delete."""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import Engine

from stillroom.store.completions import count_rows
from tests.conftest import LOCAL_MODEL


def _create(client: openai.OpenAI, metadata: dict[str, str], content: str = "Hi.", model: str = LOCAL_MODEL) -> str:
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": content}],
        max_tokens=1,
        store=True,
        metadata=metadata,
    )
    return answer.id


@pytest.fixture
def seven(client: openai.OpenAI, tag: str) -> list[str]:
    """Seven stored completions of one test: colours alternate, the last two go through `relay`."""
    ids = []
    for i in range(7):
        colour = "red" if i % 2 == 0 else "blue"
        model = "relay" if i >= 5 else LOCAL_MODEL
        ids.append(_create(client, {"tag": tag, "colour": colour, "i": str(i)}, model=model))
    return ids


def test_metadata_filter_matches_every_pair(client: openai.OpenAI, tag: str, seven: list[str]) -> None:
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == seven
    red = client.chat.completions.list(metadata={"tag": tag, "colour": "red"})
    assert [c.id for c in red] == seven[0::2]
    assert all(c.metadata["colour"] == "red" for c in red.data)
    assert client.chat.completions.list(metadata={"tag": tag, "colour": "green"}).data == []


def test_model_filter_combines_with_metadata(client: openai.OpenAI, tag: str, seven: list[str]) -> None:
    relayed = client.chat.completions.list(metadata={"tag": tag}, model="relay")
    assert [c.id for c in relayed] == seven[5:]
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag, "colour": "blue"}, model="relay")] == [
        seven[5]
    ]


def test_pages_ascending_and_descending_cover_everything_once(
    client: openai.OpenAI, tag: str, seven: list[str]
) -> None:
    first = client.chat.completions.list(metadata={"tag": tag}, limit=3)
    assert [c.id for c in first.data] == seven[:3]
    assert first.has_more is True
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, limit=3)] == seven
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, limit=2, order="desc")] == seven[::-1]
    after = client.chat.completions.list(metadata={"tag": tag}, after=seven[4], limit=10)
    assert [c.id for c in after.data] == seven[5:] and after.has_more is False
    before = client.chat.completions.list(metadata={"tag": tag}, after=seven[2], order="desc")
    assert [c.id for c in before.data] == seven[1::-1]


def test_list_envelope_has_first_last_and_has_more(client: openai.OpenAI, tag: str, seven: list[str]) -> None:
    raw = client.chat.completions.with_raw_response.list(metadata={"tag": tag}, limit=2)
    body = raw.http_response.json()
    assert body["object"] == "list"
    assert body["first_id"] == seven[0] and body["last_id"] == seven[1] and body["has_more"] is True
    empty = client.chat.completions.with_raw_response.list(metadata={"tag": "nothing-" + tag}).http_response.json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_pagination_stays_correct_while_completions_arrive(client: openai.OpenAI, tag: str) -> None:
    ids = [_create(client, {"tag": tag}) for _ in range(4)]
    page = client.chat.completions.list(metadata={"tag": tag}, limit=2)
    seen = [c.id for c in page.data]
    ids.append(_create(client, {"tag": tag}))  # arrives mid-iteration
    page = client.chat.completions.list(metadata={"tag": tag}, limit=2, after=seen[-1])
    seen += [c.id for c in page.data]
    page = client.chat.completions.list(metadata={"tag": tag}, limit=2, after=seen[-1])
    seen += [c.id for c in page.data]
    assert seen == ids and page.has_more is False


def test_deleted_cursor_still_pages(client: openai.OpenAI, tag: str) -> None:
    """Deleting while paging (delete-everything-matching loops) must not break `after`."""
    ids = [_create(client, {"tag": tag}) for _ in range(3)]
    client.chat.completions.delete(ids[0])
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, after=ids[0])] == ids[1:]


def test_messages_list_returns_inputs_with_ids_and_pages(client: openai.OpenAI, tag: str) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": [{"type": "text", "text": "Two?"}]},
    ]
    answer = client.chat.completions.create(
        model=LOCAL_MODEL, messages=messages, max_tokens=1, store=True, metadata={"tag": tag}
    )
    listed = client.chat.completions.messages.list(answer.id)
    assert [m.id for m in listed.data] == [f"{answer.id}-{i}" for i in range(4)]
    assert [m.role for m in listed.data] == ["system", "user", "assistant", "user"]
    parts = listed.data[3].content_parts or []
    assert [(p.type, getattr(p, "text", None)) for p in parts] == [("text", "Two?")]
    assert listed.data[0].content_parts is None and listed.data[0].content == "Be brief."
    assert [m.id for m in client.chat.completions.messages.list(answer.id, limit=1)] == [m.id for m in listed.data]
    desc = client.chat.completions.messages.list(answer.id, order="desc", limit=2)
    assert [m.id for m in desc.data] == [f"{answer.id}-3", f"{answer.id}-2"] and desc.has_more
    after = client.chat.completions.messages.list(answer.id, after=f"{answer.id}-1")
    assert [m.id for m in after.data] == [f"{answer.id}-2", f"{answer.id}-3"]


def test_update_merges_metadata_and_null_clears_it(client: openai.OpenAI, engine: Engine, tag: str) -> None:
    completion_id = _create(client, {"tag": tag, "stage": "draft"})
    updated = client.chat.completions.update(completion_id, metadata={"stage": "final", "reviewer": "ana"})
    assert updated.metadata == {"tag": tag, "stage": "final", "reviewer": "ana"}
    assert client.chat.completions.retrieve(completion_id).metadata == updated.metadata
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag, "stage": "final"})] == [completion_id]
    assert client.chat.completions.list(metadata={"tag": tag, "stage": "draft"}).data == []
    cleared = client.chat.completions.update(completion_id, metadata=None)
    assert cleared.metadata == {}
    assert client.chat.completions.list(metadata={"tag": tag}).data == []


def test_delete_returns_deleted_object_then_404s(client: openai.OpenAI, engine: Engine, tag: str) -> None:
    completion_id = _create(client, {"tag": tag}, content=f"unique {tag}")
    before = count_rows(engine)
    deleted = client.chat.completions.delete(completion_id)
    assert (deleted.id, deleted.object, deleted.deleted) == (completion_id, "chat.completion.deleted", True)
    after = count_rows(engine)
    assert after["completions"] == before["completions"] - 1
    assert after["message_contents"] == before["message_contents"] - 1  # its unique user message is freed
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(completion_id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list(completion_id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(completion_id)


def test_azure_client_reaches_every_stored_endpoint(azure_client: openai.AzureOpenAI, tag: str) -> None:
    ids = [
        azure_client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=1,
            store=True,
            metadata={"tag": tag},
        ).id
        for _ in range(3)
    ]
    assert [c.id for c in azure_client.chat.completions.list(metadata={"tag": tag}, limit=1)] == ids
    assert [c.id for c in azure_client.chat.completions.list(metadata={"tag": tag}, order="desc")] == ids[::-1]
    assert azure_client.chat.completions.update(ids[0], metadata={"k": "v"}).metadata == {"tag": tag, "k": "v"}
    assert azure_client.chat.completions.delete(ids[0]).deleted is True
    with pytest.raises(openai.NotFoundError):
        azure_client.chat.completions.retrieve(ids[0])


def test_limit_above_100_is_clamped_to_100_with_has_more(client: openai.OpenAI, tag: str) -> None:
    """Other servers' conformance suites page with limit=1000: that is a page of 100, not a 400."""
    messages = [{"role": "user", "content": f"n{i}"} for i in range(101)]
    answer = client.chat.completions.create(
        model=LOCAL_MODEL, messages=messages, max_tokens=1, store=True, metadata={"tag": tag}  # type: ignore[arg-type]
    )
    page = client.chat.completions.messages.list(answer.id, limit=1000)
    assert [m.content for m in page.data] == [f"n{i}" for i in range(100)]
    assert page.has_more is True
    rest = client.chat.completions.messages.list(answer.id, limit=1000, after=page.data[-1].id)
    assert [m.content for m in rest.data] == ["n100"] and rest.has_more is False
    listed = client.chat.completions.list(metadata={"tag": tag}, limit=1000)
    assert [c.id for c in listed.data] == [answer.id] and listed.has_more is False
