"""A GGUF model run in-process with llama-cpp-python (by default the bundled SmolLM2-135M-Instruct).

Generation runs on one dedicated thread (a llama.cpp context is not thread-safe), so the event loop
keeps serving other requests while a completion is produced.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from stillroom.config import ModelConfig
from stillroom.errors import BadGatewayError, BadRequestError

_END = object()
# OpenAI's defaults, where llama-cpp-python's differ.
_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
_PASSED = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "logprobs",
    "top_logprobs",
)


class LocalProvider:
    kind = "local"

    def __init__(self, model: ModelConfig) -> None:
        self.name = model.name
        self._config = model
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stillroom-local-{model.name}")

    def _model(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama  # imported on first use: loading the library takes a while

                self._llama = Llama(model_path=str(self._config.model_path()), n_ctx=self._config.n_ctx, verbose=False)
            return self._llama

    def load(self) -> None:
        """Load the weights now rather than on the first request."""
        self._model()

    def _arguments(self, body: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
        for key, value in _DEFAULTS.items():
            args.setdefault(key, value)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if max_tokens is not None:
            args["max_tokens"] = max_tokens
        if body.get("logit_bias"):
            try:
                args["logit_bias"] = {int(k): float(v) for k, v in body["logit_bias"].items()}
            except (TypeError, ValueError) as exc:
                raise BadRequestError("Invalid 'logit_bias': keys must be token ids.", param="logit_bias") from exc
        args["messages"] = [_plain_message(m) for m in body["messages"]]
        args["model"] = self.name
        return args

    def _generate(self, body: dict[str, Any]) -> bytes:
        llama = self._model()
        args = self._arguments(body)
        n = body.get("n") or 1
        results = [llama.create_chat_completion(**args) for _ in range(n)]
        completion = results[0]
        for i, extra in enumerate(results[1:], start=1):
            choice = extra["choices"][0]
            choice["index"] = i
            completion["choices"].append(choice)
            for field in ("completion_tokens", "total_tokens"):
                completion["usage"][field] += extra["usage"]["completion_tokens"]
        return orjson.dumps(completion)

    async def complete(self, body: dict[str, Any]) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._generate, body)
        except BadRequestError:
            raise
        except Exception as exc:  # llama.cpp failures (context overflow, bad template) surface here
            raise BadGatewayError(f"The local model {self.name!r} failed: {exc}") from exc

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        if (body.get("n") or 1) > 1:
            raise BadRequestError("The local provider streams only n=1.", param="n")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        args = self._arguments(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                stop.set()

        def produce() -> None:
            try:
                for item in self._chunks(args, include_usage, stop):
                    put(item)
                put(_END)
            except Exception as exc:
                put(exc)

        loop.run_in_executor(self._executor, produce)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise BadGatewayError(f"The local model {self.name!r} failed: {item}") from item
                assert isinstance(item, bytes)
                yield item
        finally:
            stop.set()

    def _chunks(self, args: dict[str, Any], include_usage: bool, stop: threading.Event) -> Iterator[bytes]:
        llama = self._model()
        completion_tokens = 0
        last: dict[str, Any] = {}
        for chunk in llama.create_chat_completion(**args, stream=True):
            if stop.is_set():
                return
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                completion_tokens += 1
            if include_usage:
                chunk["usage"] = None
            last = chunk
            yield orjson.dumps(chunk)
        if include_usage and last:
            prompt_tokens = max(llama.n_tokens - completion_tokens, 0)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            yield orjson.dumps({**last, "choices": [], "usage": usage})

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates of small local models expect string content; join text parts."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return {**message, "content": text}
    if content is None:
        return {**message, "content": ""}
    return message
