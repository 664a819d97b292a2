"""The OpenAPI document: FastAPI's for the declared routes, plus the plain Starlette create routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from stillroom.wire.chat import create_request_schema

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


# What FastAPI's routes really answer besides 200 (never its default 422: errors are OpenAI's 400).
_ROUTE_ERRORS = {
    "400": _error_response("Invalid request"),
    "401": _error_response("Missing or wrong API key"),
    "404": _error_response("No such completion or model"),
    "421": _error_response("A Host this server does not answer for (see STILLROOM_ALLOWED_HOSTS)"),
}
_BODY_NOT_JSON = _error_response("The body is not sent as application/json")
_PARAMETER_SCHEMAS = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
    "order": {"type": "string", "enum": ["asc", "desc"]},
}


def _create_operation(operation_id: str, deployment: bool) -> dict[str, Any]:
    # On a deployment's URL the deployment names the model; the body need not.
    body = create_request_schema(model_required=not deployment)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": "Create a chat completion (stored when `store` is true)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": "A chat.completion, or an SSE stream of chat.completion.chunk when `stream` is true",
                "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
            },
            "400": _error_response("Invalid request"),
            "401": _error_response("Missing or wrong API key"),
            "404": _error_response("Unknown model"),
            "413": _error_response("Body too large"),
            "415": _BODY_NOT_JSON,
            "421": _ROUTE_ERRORS["421"],
            "502": _error_response("The upstream failed"),
            "504": _error_response("The upstream timed out"),
        },
    }
    if deployment:
        operation["parameters"] = [{"name": "deployment", "in": "path", "required": True, "schema": {"type": "string"}}]
    return operation


def install_openapi(app: FastAPI, prefixes: tuple[str, ...]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for operations in schema["paths"].values():
                for method, operation in operations.items():
                    operation["responses"].pop("422", None)
                    operation["responses"].update(_ROUTE_ERRORS)
                    if method == "post":  # JSON bodies only
                        operation["responses"]["415"] = _BODY_NOT_JSON
                    for parameter in operation.get("parameters", ()):
                        if parameter["name"] in _PARAMETER_SCHEMAS:
                            parameter["schema"] = _PARAMETER_SCHEMAS[parameter["name"]]
            schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
            schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
            for prefix in prefixes:
                name = "create_chat_completion" + prefix.replace("/", "_")
                path = schema["paths"].setdefault(f"{prefix}/chat/completions", {})
                path["post"] = _create_operation(name, deployment=False)
            deployments = schema["paths"].setdefault("/openai/deployments/{deployment}/chat/completions", {})
            deployments["post"] = _create_operation("create_deployment_chat_completion", deployment=True)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
