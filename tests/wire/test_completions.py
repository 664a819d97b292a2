"""StreamAssembler folds chunks into a chat.completion; render_* shape what the stored-completion API returns."""

from __future__ import annotations

from typing import Any

from stillroom.wire.completions import StreamAssembler, render_store_message, render_stored_completion

HEAD = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-test"}


def chunk(*choices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": list(choices), **extra}


def delta(index: int = 0, finish_reason: str | None = None, logprobs: Any = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": finish_reason, "logprobs": logprobs}


def assemble(*chunks: dict[str, Any]) -> StreamAssembler:
    assembler = StreamAssembler()
    for item in chunks:
        assembler.add(item)
    return assembler


# --- StreamAssembler ------------------------------------------------------------------------------


def test_content_deltas_are_joined_into_one_message() -> None:
    assembler = assemble(
        chunk(delta(role="assistant", content="")),
        chunk(delta(content="Hel")),
        chunk(delta(content="lo, ")),
        chunk(delta(content="world")),
        chunk(delta(finish_reason="stop")),
    )
    result = assembler.result()
    assert result["object"] == "chat.completion"
    assert result["id"] == "chatcmpl-abc"
    assert result["created"] == 1700000000
    assert result["model"] == "gpt-test"
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert "usage" not in result and "system_fingerprint" not in result  # absent, never null
    assert assembler.chunks == 5


def test_content_is_none_when_no_content_delta_arrived() -> None:
    result = assemble(chunk(delta(role="assistant", content=None)), chunk(delta(finish_reason="stop"))).result()
    assert result["choices"][0]["message"]["content"] is None


def test_empty_content_delta_gives_empty_string_not_none() -> None:
    result = assemble(chunk(delta(role="assistant", content="")), chunk(delta(finish_reason="length"))).result()
    assert result["choices"][0]["message"]["content"] == ""
    assert result["choices"][0]["finish_reason"] == "length"


def test_tool_call_arguments_split_across_deltas_are_joined() -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    result = assemble(
        chunk(delta(role="assistant", content=None, tool_calls=[first])),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"ci'}}])),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Par'}}])),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": 'is"}'}}])),
        chunk(delta(finish_reason="tool_calls")),
    ).result()
    message = result["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert result["choices"][0]["finish_reason"] == "tool_calls"


def test_parallel_tool_calls_are_kept_apart_by_index_and_ordered() -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"index": index, **fields}

    result = assemble(
        chunk(delta(role="assistant", tool_calls=[call(0, id="call_a", type="function", function={"name": "f"})])),
        chunk(delta(tool_calls=[call(0, function={"arguments": '{"x":'})])),
        chunk(delta(tool_calls=[call(1, id="call_b", type="function", function={"name": "g", "arguments": ""})])),
        chunk(delta(tool_calls=[call(1, function={"arguments": '{"y": 2'})])),
        chunk(delta(tool_calls=[call(0, function={"arguments": " 1}"})])),
        chunk(delta(tool_calls=[call(1, function={"arguments": "}"})])),
        chunk(delta(finish_reason="tool_calls")),
    ).result()
    assert result["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"y": 2}'}},
    ]


def test_tool_calls_listed_in_index_order_even_when_higher_index_arrives_first() -> None:
    result = assemble(
        chunk(delta(tool_calls=[{"index": 1, "id": "second", "function": {"name": "b", "arguments": "{}"}}])),
        chunk(delta(tool_calls=[{"index": 0, "id": "first", "function": {"name": "a", "arguments": "{}"}}])),
    ).result()
    assert [c["id"] for c in result["choices"][0]["message"]["tool_calls"]] == ["first", "second"]


def test_message_without_tool_calls_has_no_tool_calls_key() -> None:
    result = assemble(chunk(delta(content="x", finish_reason="stop"))).result()
    assert "tool_calls" not in result["choices"][0]["message"]
    assert "function_call" not in result["choices"][0]["message"]


def test_legacy_function_call_deltas_are_joined() -> None:
    result = assemble(
        chunk(delta(role="assistant", function_call={"name": "lookup", "arguments": ""})),
        chunk(delta(function_call={"arguments": '{"q":'})),
        chunk(delta(function_call={"arguments": ' "x"}'}, finish_reason="function_call")),
    ).result()
    assert result["choices"][0]["message"]["function_call"] == {"name": "lookup", "arguments": '{"q": "x"}'}


def test_two_interleaved_choices_are_assembled_separately() -> None:
    assembler = assemble(
        chunk(delta(0, role="assistant", content="")),
        chunk(delta(1, role="assistant", content="")),
        chunk(delta(1, content="B1 ")),
        chunk(delta(0, content="A1 ")),
        chunk(delta(0, content="A2")),
        chunk(delta(1, content="B2")),
        chunk(delta(1, finish_reason="length")),
    )
    assert not assembler.is_finished  # choice 0 has no finish_reason yet
    assembler.add(chunk(delta(0, finish_reason="stop")))
    assert assembler.is_finished
    choices = assembler.result()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["message"]["content"] == "A1 A2"
    assert choices[0]["finish_reason"] == "stop"
    assert choices[1]["message"]["content"] == "B1 B2"
    assert choices[1]["finish_reason"] == "length"


def test_choices_are_listed_by_index_when_index_one_arrives_first() -> None:
    choices = assemble(chunk(delta(1, content="b")), chunk(delta(0, content="a"))).result()["choices"]
    assert [(c["index"], c["message"]["content"]) for c in choices] == [(0, "a"), (1, "b")]


def test_usage_chunk_with_empty_choices_is_captured() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assembler = assemble(
        chunk(delta(role="assistant", content="ok")),
        chunk(delta(finish_reason="stop")),
        chunk(usage=usage) | {"choices": []},
    )
    result = assembler.result()
    assert result["usage"] == usage
    assert len(result["choices"]) == 1
    assert result["choices"][0]["message"]["content"] == "ok"
    assert assembler.chunks == 3


def test_null_usage_on_content_chunks_does_not_erase_captured_usage() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    assembler = assemble(chunk(usage=usage) | {"choices": []}, chunk(delta(content="late"), usage=None))
    assert assembler.result()["usage"] == usage


def test_is_finished_is_false_before_any_choice() -> None:
    assembler = StreamAssembler()
    assert not assembler.is_finished
    assembler.add(chunk(usage={"total_tokens": 1}) | {"choices": []})
    assert not assembler.is_finished


def test_is_finished_once_the_only_choice_has_a_finish_reason() -> None:
    assembler = assemble(chunk(delta(role="assistant", content="x")))
    assert not assembler.is_finished
    assembler.add(chunk(delta(finish_reason="stop")))
    assert assembler.is_finished


def test_refusal_deltas_are_joined() -> None:
    result = assemble(
        chunk(delta(role="assistant", content=None, refusal="I can")),
        chunk(delta(refusal="not help")),
        chunk(delta(refusal=" with that.", finish_reason="stop")),
    ).result()
    message = result["choices"][0]["message"]
    assert message["refusal"] == "I cannot help with that."
    assert message["content"] is None


def test_head_fields_are_taken_from_chunks() -> None:
    result = assemble(
        chunk(delta(content="x"), system_fingerprint="fp_1", service_tier="default"),
        chunk(delta(finish_reason="stop"), system_fingerprint=None),
    ).result()
    assert result["system_fingerprint"] == "fp_1"
    assert result["service_tier"] == "default"


def test_service_tier_and_system_fingerprint_are_absent_when_never_sent() -> None:
    result = assemble(chunk(delta(content="x"), system_fingerprint=None)).result()
    assert "service_tier" not in result
    assert "system_fingerprint" not in result  # OpenAI's schema: a string or absent, never null


def test_azure_filter_results_are_kept_in_the_assembled_completion() -> None:
    prompt_filter = [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}]
    safe = {"filtered": False, "severity": "safe"}
    result = assemble(
        {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": prompt_filter},
        chunk({**delta(role="assistant", content=""), "content_filter_results": {}}),
        chunk({**delta(content="Hi"), "content_filter_results": {"hate": safe, "violence": safe}}),
        chunk({**delta(finish_reason="stop"), "content_filter_results": {"violence": safe, "sexual": safe}}),
    ).result()
    assert result["prompt_filter_results"] == prompt_filter
    assert result["id"] == "chatcmpl-abc" and result["created"] == 1700000000 and result["model"] == "gpt-test"
    assert result["choices"][0]["content_filter_results"] == {"hate": safe, "violence": safe, "sexual": safe}
    assert result["choices"][0]["message"]["content"] == "Hi"


def test_audio_and_annotation_deltas_are_assembled_into_the_message() -> None:
    citation = {"type": "url_citation", "url_citation": {"url": "https://example.com", "title": "Example"}}
    result = assemble(
        chunk(delta(role="assistant", audio={"id": "audio_1", "transcript": "Hel", "data": "AAA"})),
        chunk(delta(audio={"transcript": "lo", "data": "BBB"})),
        chunk(delta(audio={"expires_at": 1700003600}, annotations=[citation])),
        chunk(delta(finish_reason="stop")),
    ).result()
    message = result["choices"][0]["message"]
    assert message["audio"] == {"id": "audio_1", "transcript": "Hello", "data": "AAABBB", "expires_at": 1700003600}
    assert message["annotations"] == [citation]


def test_unknown_text_deltas_are_joined_into_the_message() -> None:
    result = assemble(
        chunk(delta(role="assistant", reasoning_content="Think")),
        chunk(delta(reasoning_content="ing.", content="Yes")),
    ).result()
    assert result["choices"][0]["message"]["reasoning_content"] == "Thinking."
    assert result["choices"][0]["message"]["content"] == "Yes"


def test_logprobs_content_lists_are_concatenated() -> None:
    tok_a = {"token": "A", "logprob": -0.1, "bytes": [65], "top_logprobs": []}
    tok_b = {"token": "B", "logprob": -0.2, "bytes": [66], "top_logprobs": []}
    result = assemble(
        chunk(delta(content="A", logprobs={"content": [tok_a], "refusal": None})),
        chunk(delta(content="B", logprobs={"content": [tok_b], "refusal": None}, finish_reason="stop")),
    ).result()
    assert result["choices"][0]["logprobs"]["content"] == [tok_a, tok_b]


def test_role_from_the_first_delta_is_kept() -> None:
    result = assemble(chunk(delta(role="assistant", content="a")), chunk(delta(content="b"))).result()
    assert result["choices"][0]["message"]["role"] == "assistant"


# --- render_stored_completion ---------------------------------------------------------------------

RESPONSE = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-test",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def test_stored_completion_echo_defaults_when_request_set_nothing() -> None:
    stored = render_stored_completion("chatcmpl-ours", RESPONSE, {"model": "gpt-test"}, None, {"request_id": "req_1"})
    assert stored["id"] == "chatcmpl-ours"
    assert stored["object"] == "chat.completion"
    assert stored["request_id"] == "req_1"
    assert stored["seed"] is None
    assert stored["top_p"] == 1.0
    assert stored["temperature"] == 1.0
    assert stored["presence_penalty"] == 0.0
    assert stored["frequency_penalty"] == 0.0
    assert stored["tools"] is None
    assert stored["tool_choice"] is None
    assert stored["response_format"] is None
    assert stored["input_user"] is None
    assert stored["metadata"] == {}
    assert stored["stillroom"] == {"request_id": "req_1"}
    assert stored["choices"] == RESPONSE["choices"]
    assert stored["usage"] == RESPONSE["usage"]
    assert stored["created"] == RESPONSE["created"]


def test_stored_completion_echoes_request_parameters() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    request = {
        "seed": 7,
        "top_p": 0.5,
        "temperature": 0.2,
        "presence_penalty": 0.3,
        "frequency_penalty": -0.4,
        "tools": tools,
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
        "user": "user-9",
    }
    stored = render_stored_completion("chatcmpl-ours", RESPONSE, request, {"k": "v"}, {})
    assert stored["seed"] == 7
    assert stored["top_p"] == 0.5
    assert stored["temperature"] == 0.2
    assert stored["presence_penalty"] == 0.3
    assert stored["frequency_penalty"] == -0.4
    assert stored["tools"] == tools
    assert stored["tool_choice"] == "required"
    assert stored["response_format"] == {"type": "json_object"}
    assert stored["input_user"] == "user-9"
    assert stored["metadata"] == {"k": "v"}
    assert stored["request_id"] is None


def test_stored_completion_does_not_mutate_the_response() -> None:
    response = dict(RESPONSE)
    render_stored_completion("chatcmpl-ours", response, {}, None, {})
    assert response == RESPONSE


# --- render_store_message -------------------------------------------------------------------------


def test_store_message_id_is_completion_id_dash_index() -> None:
    rendered = render_store_message("chatcmpl-xyz", 3, {"role": "user", "content": "hello", "name": "ann"})
    assert rendered == {
        "id": "chatcmpl-xyz-3",
        "role": "user",
        "content": "hello",
        "name": "ann",
        "content_parts": None,
    }


def test_store_message_array_content_goes_to_content_parts_and_text_is_joined() -> None:
    parts = [
        {"type": "text", "text": "look at "},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "this"},
    ]
    rendered = render_store_message("chatcmpl-xyz", 0, {"role": "user", "content": parts})
    assert rendered["id"] == "chatcmpl-xyz-0"
    assert rendered["content_parts"] == parts
    assert rendered["content"] == "look at this"


def test_store_message_array_without_text_parts_has_null_content() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "u"}}]
    rendered = render_store_message("c", 1, {"role": "user", "content": parts})
    assert rendered["content"] is None
    assert rendered["content_parts"] == parts


def test_store_message_keeps_tool_fields_only_when_present() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assistant = render_store_message("c", 1, {"role": "assistant", "content": None, "tool_calls": calls})
    assert assistant["tool_calls"] == calls
    assert "tool_call_id" not in assistant
    tool = render_store_message("c", 2, {"role": "tool", "content": "42", "tool_call_id": "call_1"})
    assert tool["tool_call_id"] == "call_1"
    assert "tool_calls" not in tool
    assert "refusal" not in tool


def test_a_function_name_repeated_in_every_delta_is_kept_once() -> None:
    """llama-cpp-python repeats the tool call's name (and id) in every delta; OpenAI sends it once."""
    assembler = StreamAssembler()
    for piece in ['{"ci', 'ty": ', '"Paris"}']:
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": piece}}
        delta = {"tool_calls": [call], "function_call": {"name": "get_weather", "arguments": piece}}
        assembler.add({"id": "c", "choices": [{"index": 0, "delta": delta}]})
    message = assembler.result()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert message["function_call"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
