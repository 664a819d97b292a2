"""complete_chat: route to the provider, forward, relay (tee-ing streams), and record what was asked.

A stored call is sent upstream with a seed (generated when the client sent none, and recorded, so the
stored request reproduces) and, when streamed, with `stream_options.include_usage`, so that every stored
completion has its usage; the usage chunk is taken out again for a client that did not ask for it.
Whatever the upstream answers must be a JSON object (each chunk, for streams): anything else is a 502. An
upstream's own error event ends a stream as ours would: relayed as it came, and nothing after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from stillroom.auth import Principal
from stillroom.auth.access import Access
from stillroom.config import ModelConfig
from stillroom.errors import BadGatewayError, QuotaExceededError, StillroomError, UpstreamError
from stillroom.policy import QUOTA_EXCEEDED, STORE_FAILED, decide_store
from stillroom.providers.registry import ProviderRegistry
from stillroom.store.completions import CompletionRecord
from stillroom.store.writer import CommitQueue
from stillroom.wire.chat import ChatRequest
from stillroom.wire.completions import StreamAssembler
from stillroom.wire.ids import new_completion_id, new_seed

log = logging.getLogger("stillroom.gateway")

_NOT_FORWARDED = ("store", "metadata")
_NOT_RECORDED = ("messages", "metadata")


@dataclass(slots=True)
class Answer:
    body: bytes
    stored: bool | None  # None: storing was not asked for
    reason: str | None = None  # why not, when stored is False: quota_exceeded, storage_disabled, store_failed


@dataclass(slots=True)
class StreamAnswer:
    events: AsyncIterator[bytes]  # SSE-framed events, ending with `data: [DONE]`
    refused: str | None = None  # asked to be stored, but will not be: why (known before the first chunk)


class Gateway:
    def __init__(
        self, registry: ProviderRegistry, commits: CommitQueue, *, store_timeout: float, access: Access | None = None
    ) -> None:
        self._access = access  # projects' store policies, switches and quotas (None: store what asks to be)
        self._registry = registry
        self._commits = commits
        self._store_timeout = store_timeout

    async def complete_chat(self, request: ChatRequest, principal: Principal, request_id: str) -> Answer:
        request, refused = self._decide(request, principal)
        model, provider = await self._registry.lookup(request.model, principal.project_id)
        started = time.perf_counter()
        asked = _asked(request)
        raw = await provider.complete(_upstream_body(asked, request, model))
        completion = _json_object(raw, model, "answered with")
        if not request.store:
            return Answer(raw, None if refused is None else False, refused)
        completion["id"] = new_completion_id()
        record = _record(request, asked, principal, model, provider.kind, completion, request_id, started, False)
        body = orjson.dumps(completion)
        reason = await self._store(record)
        return Answer(body, reason is None, reason)

    async def stream_chat(self, request: ChatRequest, principal: Principal, request_id: str) -> StreamAnswer:
        """Open the upstream stream and read its first chunk, so failures up to there are plain HTTP errors."""
        request, refused = self._decide(request, principal)
        model, provider = await self._registry.lookup(request.model, principal.project_id)
        started = time.perf_counter()
        asked = _asked(request)
        body = _upstream_body(asked, request, model)
        client_usage = _wants_usage(request.body)
        if request.store and not client_usage:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        chunks = aiter(provider.stream(body))
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise BadGatewayError(f"The upstream for model {model.name!r} sent an empty stream.") from None
        try:
            _json_object(first, model, "streamed")
        except BadGatewayError:
            _close_later(chunks)
            raise
        relay = _Relay(request, asked, principal, model, provider.kind, request_id, started, client_usage)
        return StreamAnswer(self._relay(first, chunks, relay), refused)

    async def _relay(self, first: bytes, chunks: AsyncIterator[bytes], relay: _Relay) -> AsyncIterator[bytes]:
        request, model = relay.request, relay.model
        assembler = StreamAssembler() if request.store else None
        strip_usage = request.store and not relay.client_usage
        completion_id = new_completion_id()
        finished = False
        payload: bytes | None = first
        try:
            while payload is not None:
                chunk = _json_object(payload, model, "streamed")
                if isinstance(chunk.get("error"), dict):  # the upstream's own mid-stream error event
                    raise UpstreamError(502, orjson.dumps({"error": chunk["error"]}), {})
                sent: bytes | None = payload
                if assembler is not None:
                    assembler.add(chunk)
                    sent = _client_chunk(chunk, completion_id, strip_usage)
                if sent is not None:
                    yield b"data: " + sent + b"\n\n"
                payload = await anext(chunks, None)
            finished = True
        except StillroomError as exc:
            log.warning("stream for %s broke off: %s", relay.request_id, exc.message)
            event = exc.body if isinstance(exc, UpstreamError) else orjson.dumps(exc.to_envelope())
            yield b"data: " + event + b"\n\n"  # and the stream ends there, no [DONE]
        finally:
            if not finished:  # stop the upstream now (a local model would otherwise keep generating)
                _close_later(chunks)
            if assembler is not None and not finished and assembler.chunks:
                # Broken or abandoned: keep what arrived, marked incomplete. No waiting here: the
                # client is gone or already has its error.
                self._commits.enqueue(relay.record(_assembled(assembler, completion_id), incomplete=True))
        if not finished:
            return
        stored = assembler is None or await self._commit(
            relay.record(_assembled(assembler, completion_id), incomplete=False)
        )
        if not stored:
            yield b": stillroom-stored false\n\n"
        yield b"data: [DONE]\n\n"

    def _decide(self, request: ChatRequest, principal: Principal) -> tuple[ChatRequest, str | None]:
        if self._access is None:
            return request, None
        return decide_store(self._access, request, principal)

    async def _commit(self, record: CompletionRecord) -> bool:
        return await self._store(record) is None

    async def _store(self, record: CompletionRecord) -> str | None:
        """Wait until the record is durably committed: None, or why it was not stored (logged, counted)."""
        try:
            await self._commits.commit(record, self._store_timeout)
        except QuotaExceededError:
            if self._access is not None:
                self._access.note_not_stored(record.project_id)
            return QUOTA_EXCEEDED
        except TimeoutError:
            log.error("storing completion %s did not confirm within %.1fs", record.id, self._store_timeout)
            return STORE_FAILED
        except Exception:  # already logged and counted by the commit queue
            return STORE_FAILED
        return None


_closing: set[asyncio.Task[None]] = set()


def _close_later(chunks: AsyncIterator[bytes]) -> None:
    """Close an abandoned upstream stream in its own task: the relaying task may be cancelled."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    task = asyncio.get_running_loop().create_task(aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


@dataclass(slots=True)
class _Relay:
    """What relaying one stream needs to know, and how to record what it assembled."""

    request: ChatRequest
    asked: dict[str, Any]
    principal: Principal
    model: ModelConfig
    provider_kind: str
    request_id: str
    started: float
    client_usage: bool

    def record(self, completion: dict[str, Any], *, incomplete: bool) -> CompletionRecord:
        return _record(
            self.request,
            self.asked,
            self.principal,
            self.model,
            self.provider_kind,
            completion,
            self.request_id,
            self.started,
            incomplete,
        )


def _asked(request: ChatRequest) -> dict[str, Any]:
    """The request as sent upstream and recorded: the client's, plus a generated seed when storing without one."""
    if request.store and request.body.get("seed") is None:
        return {**request.body, "seed": new_seed()}
    return request.body


def _upstream_body(asked: dict[str, Any], request: ChatRequest, model: ModelConfig) -> dict[str, Any]:
    if model.forward_store:
        return {**asked, "model": model.target_model}
    return {k: v for k, v in asked.items() if k not in _NOT_FORWARDED} | {"model": model.target_model}


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _client_chunk(chunk: dict[str, Any], completion_id: str, strip_usage: bool) -> bytes | None:
    """A stored stream's chunk as the client gets it: with Stillroom's id, and without the usage that only
    Stillroom asked for (None: the extra usage chunk, not sent at all)."""
    if strip_usage:
        if not chunk.get("choices") and chunk.get("usage") is not None:
            return None
        chunk.pop("usage", None)
    chunk["id"] = completion_id
    return orjson.dumps(chunk)


def _json_object(raw: bytes, model: ModelConfig, what: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise BadGatewayError(f"The upstream for model {model.name!r} {what} something that is not a JSON object.")
    return parsed


def _assembled(assembler: StreamAssembler, completion_id: str) -> dict[str, Any]:
    completion = assembler.result()
    completion["id"] = completion_id
    return completion


def _record(
    request: ChatRequest,
    asked: dict[str, Any],
    principal: Principal,
    model: ModelConfig,
    provider_kind: str,
    completion: dict[str, Any],
    request_id: str,
    started: float,
    incomplete: bool,
) -> CompletionRecord:
    return CompletionRecord(
        id=completion["id"],
        project_id=principal.project_id,
        model=request.model,
        provider=provider_kind,
        request={k: v for k, v in asked.items() if k not in _NOT_RECORDED},
        response=completion,
        messages=request.body["messages"],
        metadata=request.metadata or {},
        request_id=request_id,
        stream=request.stream,
        incomplete=incomplete,
        latency_ms=(time.perf_counter() - started) * 1000,
    )
