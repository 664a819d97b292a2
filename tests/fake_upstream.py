"""FAKE UPSTREAM, for benchmarks and fault tests only: a minimal, fast OpenAI-compatible chat server.

It answers canned chat completions without any model, so a benchmark can measure Stillroom's own cost,
and it misbehaves on request (chosen by the `model` name) so fault tests can check what clients get:

    fake            a canned completion (streamed when asked), at once
    fault-slow      the same, after `FAULT_SLOW_SECONDS`
    fault-hang      never answers
    fault-500       500 with an OpenAI error envelope
    fault-429       429 with `retry-after: 1`
    fault-reset     closes the connection without answering
    fault-cut       starts a stream, sends a few chunks, then drops the connection
    fault-401       401 `invalid_api_key`, quoting the key it was sent (as OpenAI does, masked)
    fault-403       403 `permission_denied`
    fault-redirect  307 to /redirected/..., which answers a canned completion (a server that moved)
    fault-not-json  200 with an HTML body; streamed, an HTML line as the first `data:`
    fault-array     200 with a JSON array body; streamed, `data: [1, 2]` as the first event
    fault-bad-chunk a stream whose fourth event is `data: {not json`, then the rest and [DONE]
    fault-array-chunk  the same with `data: ["an", "array"]` as the fourth event
    azure-filters   Azure's shape: a `prompt_filter_results` chunk first, `content_filter_results` on choices
    echo            a completion whose content is the JSON request body the fake received
    fault-error-event  a stream whose fourth event is an OpenAI error event, then its end without [DONE]
    fake-ms         a canned completion whose `created` is in milliseconds, as some upstreams send it
    hold            a stream that sends its first two events, then waits for a `release` request with
                    the same `user` before sending the rest (a long stream, ended when a test says so)
    release         releases the held streams of its `user`, and answers a canned completion
    drip            a stream of `DRIP_CHUNKS` chunks, one every `DRIP_SECONDS` (a live stream to time)

Raw asyncio (uvloop when present) with HTTP/1.1 keep-alive: no framework, so it costs little.
Run: python -m tests.fake_upstream --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import orjson

FAULT_SLOW_SECONDS = 2.0
DRIP_CHUNKS = 200
DRIP_SECONDS = 0.01
_HELD: dict[str, list[Callable[[], None]]] = {}  # user -> resumptions of its held streams
ANSWER = "The quick brown fox jumps over the lazy dog. " * 4


def _completion(model: str, content: str = ANSWER) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-fake0000000000000000000000000",
            "object": "chat.completion",
            "created": int(time.time() * 1000) if model == "fake-ms" else int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 25, "completion_tokens": 40, "total_tokens": 65},
        }
    )


def _chunks(model: str, include_usage: bool, text: str | None = None) -> list[bytes]:
    head = {
        "id": "chatcmpl-fake-stream",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    usage = {"usage": None} if include_usage else {}
    pieces = [w + " " for w in ANSWER.split()[:12]] if text is None else [text]
    if model == "drip":
        pieces = [f"{i} " for i in range(DRIP_CHUNKS)]
    deltas = [{"role": "assistant", "content": ""}] + [{"content": piece} for piece in pieces]
    events = [
        {**head, **usage, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}
        for d in deltas
    ]
    events.append({**head, **usage, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    if include_usage:
        events.append(
            {**head, "choices": [], "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37}}
        )
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _azure_chunks(model: str, include_usage: bool) -> list[bytes]:
    """Azure OpenAI's streams: a first chunk with empty id/model and only the prompt's filter results, then
    the usual chunks with each choice's `content_filter_results`."""
    safe = {"filtered": False, "severity": "safe"}
    prompt = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": safe, "violence": safe}}],
    }
    events = [b"data: " + orjson.dumps(prompt) + b"\n\n"]
    for event in _chunks(model, include_usage)[:-1]:
        chunk = orjson.loads(event[6:])
        for choice in chunk["choices"]:
            choice["content_filter_results"] = {"hate": safe, "self_harm": safe} if choice["delta"] else {}
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return [*events, b"data: [DONE]\n\n"]


def _response(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def _error(status: str, message: str, kind: str, code: str | None = None) -> bytes:
    envelope = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    extra = b"retry-after: 1\r\n" if status.startswith("429") else b""
    return _response(status, orjson.dumps(envelope), extra)


_CANNED_FAULTS = {
    "fault-401": _error(
        "401 Unauthorized",
        "Incorrect API key provided: sk-test-*****************9876. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "fault-403": _error(
        "403 Forbidden", "You are not allowed to use this model.", "invalid_request_error", "permission_denied"
    ),
}
_MALFORMED = {"fault-not-json": b"<html><body>502 Bad Gateway</body></html>", "fault-array": b"[1, 2]"}


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head[0], body)

    def _answer(self, request_line: str, body: bytes) -> None:
        assert self.transport is not None
        if " /redirected/" in request_line:
            self.transport.write(_response("200 OK", _completion("redirected")))
            return
        if "/chat/completions" not in request_line:
            self.transport.write(_error("404 Not Found", "no such route", "invalid_request_error"))
            return
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.transport.write(_error("400 Bad Request", "bad json", "invalid_request_error"))
            return
        model = str(request.get("model", "fake"))
        stream = bool(request.get("stream"))
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        if model == "fault-hang":
            return
        if model == "fault-reset":
            self.transport.abort()
            return
        if model == "fault-500":
            self.transport.write(_error("500 Internal Server Error", "the fake upstream failed", "server_error"))
            return
        if model == "fault-429":
            self.transport.write(_error("429 Too Many Requests", "slow down", "rate_limit_error"))
            return
        if model in _CANNED_FAULTS:
            self.transport.write(_CANNED_FAULTS[model])
            return
        if model == "fault-redirect":
            location = b"location: /redirected/chat/completions\r\n"
            self.transport.write(_response("307 Temporary Redirect", b"", location))
            return
        if model == "echo":
            self._send(model, stream, include_usage, echo=body.decode())
            return
        if model in ("fault-not-json", "fault-array") and not stream:
            self.transport.write(_response("200 OK", _MALFORMED[model]))
            return
        if model == "fault-slow":
            asyncio.get_running_loop().call_later(FAULT_SLOW_SECONDS, self._send, model, stream, include_usage)
            return
        if model == "release":
            for resume in _HELD.pop(str(request.get("user")), []):
                resume()
        if model == "hold" and stream:
            self._hold(str(request.get("user")), include_usage)
            return
        self._send(model, stream, include_usage)

    def _hold(self, user: str, include_usage: bool) -> None:
        assert self.transport is not None
        events = [b"%x\r\n%s\r\n" % (len(e), e) for e in _chunks("hold", include_usage)] + [b"0\r\n\r\n"]
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.transport.writelines(events[:2])
        transport = self.transport
        _HELD.setdefault(user, []).append(lambda: None if transport.is_closing() else transport.writelines(events[2:]))

    def _send(self, model: str, stream: bool, include_usage: bool, echo: str | None = None) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        if not stream:
            self.transport.write(_response("200 OK", _completion(model, ANSWER if echo is None else echo)))
            return
        if model == "azure-filters":
            events = _azure_chunks(model, include_usage)
        else:
            events = _chunks(model, include_usage, echo)
        if model in ("fault-not-json", "fault-array"):
            events[0] = b"data: " + _MALFORMED[model] + b"\n\n"
        if model == "fault-bad-chunk":
            events[3] = b"data: {not json\n\n"
        if model == "fault-array-chunk":
            events[3] = b'data: ["an", "array"]\n\n'
        if model == "fault-error-event":
            failure = {"error": {"message": "the fake upstream failed mid-stream", "type": "server_error"}}
            events[3:] = [b"data: " + orjson.dumps(failure) + b"\n\n"]
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        if model == "drip":
            loop = asyncio.get_running_loop()
            framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]
            transport = self.transport
            for i, event in enumerate(framed):
                loop.call_later(
                    i * DRIP_SECONDS, lambda e=event: None if transport.is_closing() else transport.write(e)
                )
            return
        if model == "fault-cut":
            for event in events[:4]:
                self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            asyncio.get_running_loop().call_later(0.05, self.transport.abort)
            return
        for event in events:
            self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.transport.write(b"0\r\n\r\n")


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
