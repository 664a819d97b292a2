"""The one exception tree. `api/errors.py` renders it as OpenAI's error envelope.

StillroomError (500 server_error)
├── BadRequestError (400 invalid_request_error)
│   ├── PayloadTooLargeError (413)
│   └── UnsupportedMediaTypeError (415: a JSON route sent something else)
├── AuthenticationError (401)
├── PermissionDeniedError (403)
├── NotFoundError (404)
├── ConflictError (409)
├── MisdirectedRequestError (421: a Host this server does not answer for)
├── QuotaExceededError (429 insufficient_quota)
├── UpstreamError (relayed status and body, as the upstream sent them)
├── BadGatewayError (502)
├── GatewayTimeoutError (504)
└── ConfigError (a bad config file; raised at start-up)
"""

from __future__ import annotations


class StillroomError(Exception):
    status: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def to_envelope(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequestError(StillroomError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLargeError(BadRequestError):
    status = 413
    default_code = "request_too_large"


class UnsupportedMediaTypeError(BadRequestError):
    status = 415
    default_code = "unsupported_media_type"


class AuthenticationError(StillroomError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(StillroomError):
    """The caller is known but its role lacks the action the route needs."""

    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(StillroomError):
    status = 404
    type = "invalid_request_error"


class ConflictError(StillroomError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class QuotaExceededError(StillroomError):
    """A write that would take a project past its storage quota."""

    status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class MisdirectedRequestError(StillroomError):
    """A request naming a host that is not this server's (DNS rebinding, or a missing --allowed-hosts)."""

    status = 421
    type = "invalid_request_error"
    default_code = "host_not_allowed"


class UpstreamError(StillroomError):
    """The upstream answered with an error; relay its status, body and retry hints unchanged."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.headers = headers


class BadGatewayError(StillroomError):
    status = 502
    default_code = "bad_gateway"


class GatewayTimeoutError(StillroomError):
    status = 504
    default_code = "upstream_timeout"


class ConfigError(StillroomError):
    """A configuration problem found at start-up (never during a request)."""
