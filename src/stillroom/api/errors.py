"""The one place errors become OpenAI's envelope, and the edge that gives each response its request id."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stillroom.api.hosts import HostPolicy, host_header
from stillroom.errors import BadRequestError, MisdirectedRequestError, StillroomError, UpstreamError
from stillroom.wire.ids import new_request_id

log = logging.getLogger("stillroom.api")


def error_response(exc: StillroomError) -> Response:
    if isinstance(exc, UpstreamError):
        body = (
            exc.body
            if _is_envelope(exc.body)
            else orjson.dumps(
                {
                    "error": {
                        "message": exc.body.decode(errors="replace")[:2000] or exc.message,
                        "type": "server_error" if exc.status >= 500 else "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        )
        return Response(body, status_code=exc.status, media_type="application/json", headers=exc.headers)
    return Response(orjson.dumps(exc.to_envelope()), status_code=exc.status, media_type="application/json")


def _is_envelope(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


async def _stillroom_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StillroomError)
    if exc.status >= 500 or isinstance(exc, UpstreamError):  # the operator's problem: say so, once
        detail = exc.body.decode(errors="replace")[:500] if isinstance(exc, UpstreamError) else exc.message
        level = logging.ERROR if exc.status >= 500 else logging.WARNING
        log.log(level, "request %s failed with %d: %s", request.scope["state"]["request_id"], exc.status, detail)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    return error_response(BadRequestError(f"Invalid '{param}': {first.get('msg', 'invalid value')}.", param=param))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
        code = None
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
        code = "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    envelope = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return Response(orjson.dumps(envelope), status_code=exc.status_code, media_type="application/json")


def install_error_handlers(app: FastAPI, hosts: HostPolicy) -> None:
    """The handlers, and the edge middleware (add it last: it must be the outermost)."""
    app.add_exception_handler(StillroomError, _stillroom_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(RequestEdgeMiddleware, hosts=hosts)


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in OpenAI's envelope rather than plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode()  # "Disallowed CORS origin", "... method", "... headers"
        return error_response(BadRequestError(f"{reason}: see STILLROOM_CORS_ORIGINS.", code="cors_refused"))


class RequestEdgeMiddleware:
    """Gives every response an `x-request-id`, refuses foreign `Host` headers on a loopback address (before
    anything reads the body), and turns anything unexpected into a generic 500."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        if not self.hosts.admits(scope):
            host = (host_header(scope) or b"").decode("latin-1")
            refused = MisdirectedRequestError(
                f"This server does not answer for the host {host!r}: on a loopback address it answers only "
                "localhost, 127.0.0.1 and [::1]. Add the name to STILLROOM_ALLOWED_HOSTS (--allowed-hosts)."
            )
            await error_response(refused)(scope, receive, send_with_id)
            return
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if started:
                raise
            body = orjson.dumps(
                {
                    "error": {
                        "message": f"The server had an error processing your request (request id {request_id}).",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})
