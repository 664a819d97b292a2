"""OpenAI and any OpenAI-compatible upstream (vLLM, Ollama, llama.cpp server, another Stillroom)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from stillroom.config import ModelConfig
from stillroom.errors import BadGatewayError, GatewayTimeoutError, UpstreamError

_RELAYED_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")


class HTTPProvider:
    """Speaks the OpenAI chat completions protocol to a URL over the app's shared connection pool."""

    def __init__(
        self,
        model: ModelConfig,
        client: httpx.AsyncClient,
        *,
        kind: str,
        url: str,
        params: dict[str, str] | None,
        key_header: str,
    ) -> None:
        self.kind = kind
        self.name = model.name
        self._model = model
        self._client = client
        self._url = url
        self._params = params
        self._key_header = key_header
        # The model's timeout bounds the answer; connecting keeps the pool's (settings) connect timeout.
        self._timeout = httpx.Timeout(model.timeout, connect=client.timeout.connect)

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = self._model.api_key()
        if key is not None:
            secret = key.get_secret_value()
            headers[self._key_header] = f"Bearer {secret}" if self._key_header == "authorization" else secret
        return headers

    async def complete(self, body: dict[str, Any]) -> bytes:
        try:
            response = await self._client.post(
                self._url,
                params=self._params,
                content=orjson.dumps(body),
                headers=self._headers(),
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise GatewayTimeoutError(f"The upstream for model {self.name!r} timed out.") from exc
        except httpx.HTTPError as exc:
            raise BadGatewayError(f"The upstream for model {self.name!r} failed: {type(exc).__name__}.") from exc
        if response.status_code >= 400:
            raise _upstream_error(response, response.content)
        return response.content

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        request = self._client.build_request(
            "POST",
            self._url,
            params=self._params,
            content=orjson.dumps(body),
            headers=self._headers(),
            timeout=self._timeout,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise GatewayTimeoutError(f"The upstream for model {self.name!r} timed out.") from exc
        except httpx.HTTPError as exc:
            raise BadGatewayError(f"The upstream for model {self.name!r} failed: {type(exc).__name__}.") from exc
        try:
            if response.status_code >= 400:
                raise _upstream_error(response, await response.aread())
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                yield payload.encode()
            if not done:
                raise BadGatewayError(f"The upstream for model {self.name!r} ended its stream early.")
        except httpx.TimeoutException as exc:
            raise GatewayTimeoutError(f"The upstream for model {self.name!r} timed out mid-stream.") from exc
        except httpx.HTTPError as exc:
            raise BadGatewayError(
                f"The upstream for model {self.name!r} broke off its stream: {type(exc).__name__}."
            ) from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """The connection pool is shared and closed by the app."""


def openai_provider(model: ModelConfig, client: httpx.AsyncClient) -> HTTPProvider:
    """Any OpenAI-compatible base URL, with the key sent as a bearer token."""
    assert model.base_url
    url = model.base_url.rstrip("/") + "/chat/completions"
    return HTTPProvider(model, client, kind="openai", url=url, params=None, key_header="authorization")


def azure_provider(model: ModelConfig, client: httpx.AsyncClient) -> HTTPProvider:
    """An Azure OpenAI deployment: `{endpoint}/openai/deployments/{deployment}/chat/completions`."""
    assert model.endpoint
    deployment = model.deployment or model.target_model
    url = f"{model.endpoint.rstrip('/')}/openai/deployments/{deployment}/chat/completions"
    header = "authorization" if model.auth == "bearer" else "api-key"
    return HTTPProvider(
        model, client, kind="azure", url=url, params={"api-version": model.api_version}, key_header=header
    )


def _upstream_error(response: httpx.Response, body: bytes) -> UpstreamError:
    headers = {h: response.headers[h] for h in _RELAYED_HEADERS if h in response.headers}
    return UpstreamError(response.status_code, body, headers)
