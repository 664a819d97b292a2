"""A GGUF model run in-process with llama-cpp-python (by default the bundled SmolLM2-135M-Instruct).

Generation runs on one dedicated thread (a llama.cpp context is not thread-safe), so the event loop
keeps serving other requests while a completion is produced. What llama-cpp-python returns is reshaped
into OpenAI's objects (`providers/llama_output.py`), and `response_format` becomes a grammar here,
because llama-cpp-python 0.3 ignores `{"type": "json_schema"}` altogether.
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from stillroom.config import ModelConfig
from stillroom.errors import BadGatewayError, BadRequestError, StillroomError
from stillroom.providers.llama_output import ChunkTidier, tidy_message

_END = object()
# OpenAI's defaults, where llama-cpp-python's differ.
_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
_PASSED = (
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "logprobs",
    "top_logprobs",
)
_SEED_SPAN = 2**32  # llama.cpp seeds are unsigned 32-bit
_CONTEXT_OVERFLOW = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


class LocalProvider:
    kind = "local"

    def __init__(self, model: ModelConfig) -> None:
        self.name = model.name
        self._config = model
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stillroom-local-{model.name}")

    def _model(self) -> Any:
        if self._config.is_model_folder:
            raise BadRequestError(
                f"The model {self.name!r} is a Hugging Face model folder: its fine-tuned models are served, but "
                "llama.cpp cannot run the folder itself (configure a GGUF file to chat with the base).",
                param="model",
                code="model_not_supported",
            )
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama  # imported on first use: loading the library takes a while

                self._llama = Llama(model_path=str(self._config.model_path()), n_ctx=self._config.n_ctx, verbose=False)
            return self._llama

    def load(self) -> None:
        """Load the weights now rather than on the first request (a model folder has none to load)."""
        if not self._config.is_model_folder:
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
        grammar = _grammar(body.get("response_format"))
        if grammar is not None:
            args["grammar"] = grammar
        args["messages"] = [_plain_message(m) for m in body["messages"]]
        args["model"] = self.name
        return args

    def _generate(self, body: dict[str, Any]) -> bytes:
        llama = self._model()
        args = self._arguments(body)
        seeds = _choice_seeds(body)
        results = [llama.create_chat_completion(**args, seed=seed) for seed in seeds]
        completion = results[0]
        for i, extra in enumerate(results[1:], start=1):
            choice = extra["choices"][0]
            choice["index"] = i
            completion["choices"].append(choice)
            for field in ("completion_tokens", "total_tokens"):
                completion["usage"][field] += extra["usage"]["completion_tokens"]
        for choice in completion["choices"]:
            tidy_message(choice["message"])
        return orjson.dumps(completion)

    async def complete(self, body: dict[str, Any]) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._generate, body)
        except StillroomError:
            raise
        except Exception as exc:  # llama.cpp failures (context overflow, bad template) surface here
            raise self._failure(exc) from exc

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        args = self._arguments(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        tidier = ChunkTidier()
        seeds = _choice_seeds(body)

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                stop.set()

        def produce() -> None:
            try:
                for item in self._chunks(args, seeds, tidier, include_usage, stop):
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
                    raise self._failure(item) from item
                assert isinstance(item, bytes)
                yield item
        finally:
            stop.set()

    def _chunks(
        self,
        args: dict[str, Any],
        seeds: list[int],
        tidier: ChunkTidier,
        include_usage: bool,
        stop: threading.Event,
    ) -> Iterator[bytes]:
        """The choices one after another (n > 1 runs the model n times), as one stream of chunks."""
        llama = self._model()
        head: dict[str, Any] = {}
        prompt_tokens = completion_tokens = 0
        for index, seed in enumerate(seeds):
            generated = 0
            for chunk in llama.create_chat_completion(**args, seed=seed, stream=True):
                if stop.is_set():
                    return
                head = head or {k: chunk[k] for k in ("id", "object", "created", "model")}
                chunk.update(head)
                for choice in chunk["choices"]:
                    choice["index"] = index
                    if tidier.tidy(choice):
                        generated += 1
                if include_usage:
                    chunk["usage"] = None
                yield orjson.dumps(chunk)
            completion_tokens += generated
            if index == 0:
                prompt_tokens = max(llama.n_tokens - generated, 0)
        if include_usage and head:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            yield orjson.dumps({**head, "choices": [], "usage": usage})

    def _failure(self, exc: Exception) -> StillroomError:
        if isinstance(exc, StillroomError):
            return exc
        overflow = _CONTEXT_OVERFLOW.search(str(exc))
        if overflow:
            asked, window = overflow.groups()
            return BadRequestError(
                f"This model's maximum context length is {window} tokens. However, your messages resulted in "
                f"{asked} tokens. Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        return BadGatewayError(f"The local model {self.name!r} failed: {exc}")

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _choice_seeds(body: dict[str, Any]) -> list[int]:
    """One seed per choice: the request's seed (or a random one) for the first, the next ones after it, so
    n > 1 gives n different samples and a seeded request gives the same n again."""
    seed = body.get("seed")
    first = secrets.randbelow(_SEED_SPAN) if seed is None else seed
    return [(first + i) % _SEED_SPAN for i in range(body.get("n") or 1)]


def _grammar(response_format: Any) -> Any:
    """A llama.cpp grammar for `json_object` (any JSON object) or `json_schema` (that schema); None for text."""
    if not isinstance(response_format, dict) or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    spec = response_format.get("json_schema") if response_format["type"] == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        text = _schema_grammar(orjson.dumps(schema).decode())
    except Exception as exc:  # the converter raises bare Exceptions for what it does not support
        raise BadRequestError(
            f"Invalid 'response_format': the local model cannot constrain its output to this schema: {exc}",
            param="response_format",
        ) from exc
    return LlamaGrammar.from_string(text, verbose=False)


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema: str) -> str:
    """GBNF for a JSON schema (converting is pure Python and costs milliseconds for large schemas)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(schema))


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates of small local models expect string content; join text parts."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return {**message, "content": text}
    if content is None:
        return {**message, "content": ""}
    return message
