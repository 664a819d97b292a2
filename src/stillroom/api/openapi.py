"""The OpenAPI document: FastAPI's for the declared routes, plus the plain Starlette create routes."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from stillroom.api.files import PARQUET
from stillroom.files import MAX_LIST_LIMIT
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
# Per operation (its handler's name), what the server really enforces where it differs from the above: these
# lists read a `limit` past 100 as 100 (`has_more` says what is left); files page up to 10,000.
_CLAMPED_LIMIT = {"type": "integer", "minimum": 1, "description": "Default 20; more than 100 is read as 100"}
_RUN_STATUS = {"type": "string", "enum": ["queued", "in_progress", "completed", "canceled", "failed"]}
_OPERATION_PARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "list_chat_completions": {"limit": _CLAMPED_LIMIT},
    "list_deployment_chat_completions": {"limit": _CLAMPED_LIMIT},
    "get_chat_messages": {"limit": _CLAMPED_LIMIT},
    "list_audit_logs": {"limit": _CLAMPED_LIMIT},
    "list_evals": {
        "limit": _CLAMPED_LIMIT,
        "order_by": {"type": "string", "enum": ["created_at", "updated_at"]},
    },
    "get_eval_runs": {"limit": _CLAMPED_LIMIT, "status": _RUN_STATUS},
    "get_eval_run_output_items": {"limit": _CLAMPED_LIMIT, "status": {"type": "string", "enum": ["pass", "fail"]}},
    "list_files": {"limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT}},
    "download_file": {"format": {"type": "string", "enum": ["jsonl", "parquet"]}},
}
# Statuses beyond _ROUTE_ERRORS that an operation can answer.
_QUOTA = _error_response("The project's stored data is at its quota (insufficient_quota)")
_TOO_LARGE = _error_response("Body or file too large")
_OPERATION_ERRORS: dict[str, dict[str, Any]] = {
    "create_file": {"413": _TOO_LARGE, "429": _QUOTA},
    "create_fine_tuning_dataset": {"429": _QUOTA},
    "update_chat_completion": {"429": _QUOTA},
    "create_project": {"409": _error_response("A project with that id already exists")},
    "run_grader": {"502": _error_response("A model grader's upstream failed"), "504": _error_response("It timed out")},
}
_OBJECT: dict[str, Any] = {"type": "object"}
_STRING = {"type": "string"}
# The JSON bodies of the routes that read their own (the server checks them in the domain; this states the
# required fields and their types, so clients and the fuzzer see what a valid request is).
_JSON_BODIES: dict[str, dict[str, Any]] = {
    "create_fine_tuning_job": {
        "type": "object",
        "required": ["model", "training_file"],
        "properties": {"model": _STRING, "training_file": _STRING, "validation_file": {"type": ["string", "null"]}},
    },
    "create_fine_tuning_dataset": _OBJECT,
    "create_eval": {
        "type": "object",
        "required": ["data_source_config", "testing_criteria"],
        "properties": {
            "name": _STRING,
            "data_source_config": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"type": "string", "enum": ["custom", "logs", "stored_completions"]}},
            },
            "testing_criteria": {"type": "array", "minItems": 1, "items": _OBJECT},
        },
    },
    "update_eval": _OBJECT,
    "create_eval_run": {
        "type": "object",
        "required": ["data_source"],
        "properties": {
            "name": _STRING,
            "data_source": {
                "type": "object",
                "required": ["type", "source"],
                "properties": {"type": {"type": "string", "enum": ["jsonl", "completions"]}, "source": _OBJECT},
            },
        },
    },
    "run_grader": {
        "type": "object",
        "required": ["grader", "model_sample"],
        "properties": {"grader": _OBJECT, "model_sample": _STRING, "item": _OBJECT},
    },
    "validate_grader": {"type": "object", "required": ["grader"], "properties": {"grader": _OBJECT}},
    "create_project": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 256},
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "quota_bytes": {"type": "integer", "minimum": 0},
        },
    },
    "modify_project": _OBJECT,
    "create_project_api_key": _OBJECT,
    "delete_chat_completions": _OBJECT,
}
_CREATED = {"create_eval", "create_eval_run"}  # answer 201, not 200
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_OPERATION_ANSWERS: dict[str, dict[str, Any]] = {
    "download_file": {
        "description": "The file's bytes; with `format=parquet`, the fine-tuning JSONL as Parquet",
        "content": {"application/octet-stream": _BINARY, PARQUET: _BINARY},
    },
}
_ALL_ERRORS = {
    **_ROUTE_ERRORS,
    "403": _error_response("The key's role may not do this, or the project is not the key's"),
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


def _operation_name(operation: dict[str, Any], path: str, method: str) -> str:
    """The handler's name, which is the operation's OpenAI name (auth/roles.py), from FastAPI's default
    operationId: the name, then the path and method with every non-word character as `_`."""
    suffix = re.sub(r"\W", "_", path) + "_" + method
    operation_id = str(operation.get("operationId", ""))
    return operation_id.removesuffix(suffix) if operation_id.endswith(suffix) else operation_id


def _complete_operation(operation: dict[str, Any], method: str, name: str) -> None:
    """The statuses the operation really answers (never FastAPI's 422) and the bounds its parameters have."""
    responses = operation["responses"]
    responses.pop("422", None)
    responses.update(_ALL_ERRORS)
    if name in _JSON_BODIES:
        content = {"application/json": {"schema": _JSON_BODIES[name]}}
        operation["requestBody"] = {"required": True, "content": content}
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        responses["413"] = _TOO_LARGE
        responses["415"] = _BODY_NOT_JSON
    responses.update(_OPERATION_ERRORS.get(name, {}))
    if name in _OPERATION_ANSWERS:
        responses["200"] = _OPERATION_ANSWERS[name]
    if name in _CREATED and "200" in responses:
        responses["201"] = responses.pop("200")
    overrides = _OPERATION_PARAMETERS.get(name, {})
    for parameter in operation.get("parameters", ()):
        if parameter["name"] in overrides:
            parameter["schema"] = overrides[parameter["name"]]
        elif parameter["name"] in _PARAMETER_SCHEMAS:
            parameter["schema"] = _PARAMETER_SCHEMAS[parameter["name"]]


def install_openapi(app: FastAPI, prefixes: tuple[str, ...]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path, operations in schema["paths"].items():
                for method, operation in operations.items():
                    _complete_operation(operation, method, _operation_name(operation, path, method))
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
