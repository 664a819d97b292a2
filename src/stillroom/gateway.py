"""complete_chat: route to the provider, forward, relay (tee-ing streams), and record what was asked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from stillroom.auth import Principal
from stillroom.config import ModelConfig
from stillroom.errors import BadGatewayError, StillroomError
from stillroom.providers.registry import ProviderRegistry
from stillroom.store.completions import CompletionRecord
from stillroom.store.writer import CommitQueue
from stillroom.wire.chat import ChatRequest
from stillroom.wire.completions import StreamAssembler
from stillroom.wire.ids import new_completion_id

log = logging.getLogger("stillroom.gateway")

_NOT_FORWARDED = ("store", "metadata")
_NOT_RECORDED = ("messages", "metadata")


@dataclass(slots=True)
class Answer:
    body: bytes
    stored: bool | None  # None: storing was not asked for


@dataclass(slots=True)
class StreamAnswer:
    events: AsyncIterator[bytes]  # SSE-framed events, ending with `data: [DONE]`


class Gateway:
    def __init__(self, registry: ProviderRegistry, commits: CommitQueue, *, store_timeout: float) -> None:
        self._registry = registry
        self._commits = commits
        self._store_timeout = store_timeout

    async def complete_chat(self, request: ChatRequest, principal: Principal, request_id: str) -> Answer:
        model, provider = self._registry.get(request.model)
        started = time.perf_counter()
        raw = await provider.complete(_upstream_body(request, model))
        if not request.store:
            return Answer(raw, None)
        try:
            completion = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadGatewayError(f"The upstream for model {model.name!r} answered with invalid JSON.") from exc
        completion["id"] = new_completion_id()
        record = _record(request, principal, model, provider.kind, completion, request_id, started, False)
        body = orjson.dumps(completion)
        return Answer(body, await self._commit(record))

    async def stream_chat(self, request: ChatRequest, principal: Principal, request_id: str) -> StreamAnswer:
        """Open the upstream stream and read its first chunk, so failures up to there are plain HTTP errors."""
        model, provider = self._registry.get(request.model)
        started = time.perf_counter()
        chunks = aiter(provider.stream(_upstream_body(request, model)))
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            raise BadGatewayError(f"The upstream for model {model.name!r} sent an empty stream.") from None
        return StreamAnswer(self._relay(first, chunks, request, principal, model, provider.kind, request_id, started))

    async def _relay(
        self,
        first: bytes,
        chunks: AsyncIterator[bytes],
        request: ChatRequest,
        principal: Principal,
        model: ModelConfig,
        provider_kind: str,
        request_id: str,
        started: float,
    ) -> AsyncIterator[bytes]:
        assembler = StreamAssembler() if request.store else None
        completion_id = new_completion_id()
        finished = False
        payload: bytes | None = first
        try:
            while payload is not None:
                if assembler is not None:
                    chunk = orjson.loads(payload)
                    assembler.add(chunk)
                    chunk["id"] = completion_id
                    payload = orjson.dumps(chunk)
                yield b"data: " + payload + b"\n\n"
                payload = await anext(chunks, None)
            finished = True
        except StillroomError as exc:
            log.warning("stream for %s broke off: %s", request_id, exc.message)
            yield b"data: " + orjson.dumps(exc.to_envelope()) + b"\n\n"  # and the stream ends there
        finally:
            if not finished:  # stop the upstream now (a local model would otherwise keep generating)
                _close_later(chunks)
            if assembler is not None and not finished and assembler.chunks:
                # Broken or abandoned: keep what arrived, marked incomplete. No waiting here: the
                # client is gone or already has its error.
                completion = _assembled(assembler, completion_id)
                self._commits.enqueue(
                    _record(request, principal, model, provider_kind, completion, request_id, started, True)
                )
        if not finished:
            return
        if assembler is not None:
            completion = _assembled(assembler, completion_id)
            record = _record(request, principal, model, provider_kind, completion, request_id, started, False)
            if not await self._commit(record):
                yield b": stillroom-stored false\n\n"
        yield b"data: [DONE]\n\n"

    async def _commit(self, record: CompletionRecord) -> bool:
        """Wait until the record is durably committed; False (logged, counted) if storing failed."""
        try:
            await self._commits.commit(record, self._store_timeout)
        except TimeoutError:
            log.error("storing completion %s did not confirm within %.1fs", record.id, self._store_timeout)
            return False
        except Exception:  # already logged and counted by the commit queue
            return False
        return True


_closing: set[asyncio.Task[None]] = set()


def _close_later(chunks: AsyncIterator[bytes]) -> None:
    """Close an abandoned upstream stream in its own task: the relaying task may be cancelled."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    task = asyncio.get_running_loop().create_task(aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _upstream_body(request: ChatRequest, model: ModelConfig) -> dict[str, Any]:
    body = request.body
    if model.forward_store:
        return {**body, "model": model.target_model}
    return {k: v for k, v in body.items() if k not in _NOT_FORWARDED} | {"model": model.target_model}


def _assembled(assembler: StreamAssembler, completion_id: str) -> dict[str, Any]:
    completion = assembler.result()
    completion["id"] = completion_id
    return completion


def _record(
    request: ChatRequest,
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
        request={k: v for k, v in request.body.items() if k not in _NOT_RECORDED},
        response=completion,
        messages=request.body["messages"],
        metadata=request.metadata or {},
        request_id=request_id,
        stream=request.stream,
        incomplete=incomplete,
        latency_ms=(time.perf_counter() - started) * 1000,
    )
