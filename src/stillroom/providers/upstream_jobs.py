"""The Files and fine-tuning endpoints of an `openai` or `azure` upstream, as the worker that runs upstream
fine-tuning jobs calls them (`training/upstream.py`): upload and delete a file, create, find, retrieve and
cancel a job, page its events and checkpoints, download a result file.

URLs follow the SDKs: `{base_url}/files`, `{base_url}/fine_tuning/jobs…` for `openai`; for `azure`,
`{endpoint}/openai/files…` and `{endpoint}/openai/fine_tuning/jobs…` with `?api-version=` on every request.
The key is read from the model's `api_key_env` for each request and sent as a bearer token (`openai`) or as
`api-key` (`azure`, unless `auth = "bearer"`); it is never stored or logged. Redirects are not followed.
Failures raise the same exceptions as chat completions do (`providers/openai.py`): `UpstreamError` for an
upstream's error answer, `BadGatewayError` (`upstream_auth_failed` for its 401/403, whose body is dropped: it
may quote the key) and `GatewayTimeoutError` for transport failures.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from stillroom.config import ModelConfig
from stillroom.errors import BadGatewayError, GatewayTimeoutError, StillroomError, UpstreamError

_CREDENTIALS_REFUSED = (401, 403)
PAGE = 100


class UpstreamJobs:
    """One upstream's fine-tuning API, for one base model entry."""

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        self._model = model
        self._session = session
        if model.provider == "azure":
            assert model.endpoint
            self._base = model.endpoint.rstrip("/") + "/openai"
            self._params: dict[str, str] = {"api-version": model.api_version}
            self._key_header = "authorization" if model.auth == "bearer" else "api-key"
        else:
            assert model.base_url
            self._base = model.base_url.rstrip("/")
            self._params = {}
            self._key_header = "authorization"
        parts = urlsplit(self._base)
        self.host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=model.timeout)

    def _headers(self) -> dict[str, str]:
        key = self._model.api_key()
        if key is None:
            return {}
        secret = key.get_secret_value()
        return {self._key_header: f"Bearer {secret}" if self._key_header == "authorization" else secret}

    async def _call(
        self, method: str, path: str, *, body: Any = None, data: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        headers = self._headers()
        if body is not None:
            headers["content-type"] = "application/json"
            data = orjson.dumps(body)
        try:
            async with self._session.request(
                method,
                self._base + path,
                params={**self._params, **(params or {})},
                data=data,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                payload = await response.read()
                if response.status >= 300:
                    raise self._refusal(response, payload)
                return orjson.loads(payload) if payload else {}
        except StillroomError:
            raise
        except orjson.JSONDecodeError as exc:
            raise BadGatewayError(f"The upstream {self.host} answered {path} with something that is not JSON.") from exc
        except Exception as exc:
            raise self._transport_error(exc) from exc

    def _refusal(self, response: aiohttp.ClientResponse, body: bytes) -> StillroomError:
        if response.status in _CREDENTIALS_REFUSED:
            return BadGatewayError(
                f"The upstream for model {self._model.name!r} ({self.host}) refused Stillroom's credentials "
                f"(HTTP {response.status}); check the key configured for this model.",
                code="upstream_auth_failed",
            )
        if response.status < 400:
            return BadGatewayError(
                f"The upstream for model {self._model.name!r} ({self.host}) redirected (HTTP {response.status}); "
                "Stillroom does not follow upstream redirects, so fix the model's URL."
            )
        return UpstreamError(response.status, body, {})

    def _transport_error(self, exc: Exception) -> StillroomError:
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return GatewayTimeoutError(f"The upstream for model {self._model.name!r} ({self.host}) timed out.")
        if isinstance(exc, aiohttp.ClientError | OSError | ValueError):
            return BadGatewayError(
                f"The upstream for model {self._model.name!r} could not be reached at {self.host}: "
                f"{type(exc).__name__}."
            )
        raise exc

    # --- files ---

    async def upload_file(self, path: Path, filename: str) -> dict[str, Any]:
        """`POST /files`, multipart, purpose `fine-tune` (parts in the SDK's order), the file streamed."""
        with path.open("rb") as source:
            form = aiohttp.FormData()
            form.add_field("purpose", "fine-tune")
            form.add_field("file", source, filename=filename, content_type="application/octet-stream")
            found: dict[str, Any] = await self._call("POST", "/files", data=form)
        return found

    async def retrieve_file(self, file_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._call("GET", f"/files/{file_id}")
        return found

    async def delete_file(self, file_id: str) -> None:
        await self._call("DELETE", f"/files/{file_id}")

    async def download_file(self, file_id: str, target: Path) -> None:
        """`GET /files/{id}/content`, streamed to `target`."""
        try:
            async with self._session.get(
                f"{self._base}/files/{file_id}/content",
                params=self._params,
                headers=self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if response.status >= 300:
                    raise self._refusal(response, await response.read())
                with target.open("wb") as out:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        out.write(chunk)
        except StillroomError:
            raise
        except Exception as exc:
            raise self._transport_error(exc) from exc

    # --- fine-tuning jobs ---

    async def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = await self._call("POST", "/fine_tuning/jobs", body=body)
        return found

    async def find_job(self, key: str, value: str) -> dict[str, Any] | None:
        """The newest job whose metadata has `key: value` (on the first page of the list), or None."""
        page = await self._call("GET", "/fine_tuning/jobs", params={f"metadata[{key}]": value, "limit": str(PAGE)})
        for job in page.get("data") or []:
            if (job.get("metadata") or {}).get(key) == value:
                found: dict[str, Any] = job
                return found
        return None

    async def retrieve_job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._call("GET", f"/fine_tuning/jobs/{job_id}")
        return found

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._call("POST", f"/fine_tuning/jobs/{job_id}/cancel")
        return found

    async def list_events_since(self, job_id: str, seen: str | None) -> list[dict[str, Any]]:
        """The job's events newer than the one with id `seen` (all of them when None), oldest first."""
        events: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": str(PAGE)} | ({"after": after} if after else {})
            page = await self._call("GET", f"/fine_tuning/jobs/{job_id}/events", params=params)
            data = page.get("data") or []
            for event in data:
                if event.get("id") == seen:
                    return events[::-1]
                events.append(event)
            if not data or not page.get("has_more"):
                return events[::-1]
            after = str(data[-1]["id"])

    async def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        checkpoints: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"limit": str(PAGE)} | ({"after": after} if after else {})
            page = await self._call("GET", f"/fine_tuning/jobs/{job_id}/checkpoints", params=params)
            data = page.get("data") or []
            checkpoints.extend(data)
            if not data or not page.get("has_more"):
                return checkpoints
            after = str(data[-1]["id"])
