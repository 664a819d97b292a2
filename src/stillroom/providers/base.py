"""The narrow interface every provider implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Provider(Protocol):
    """A source of chat completions for one configured model name.

    `complete` returns the upstream's `chat.completion` JSON. `stream` yields the JSON payload of each
    `chat.completion.chunk` (without the SSE framing or the final `[DONE]`), and raises if the upstream
    ends before it said it was done. Failures raise `stillroom.errors` exceptions.
    """

    kind: str

    async def complete(self, body: dict[str, Any]) -> bytes: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...
