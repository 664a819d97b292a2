"""Evals and eval runs as OpenAI's Evals API presents them: create, list, retrieve, update, delete, cancel.

Writes are `fn(conn)` functions handed to `writes` (the server's single writer, or a direct transaction in
the CLI), so each is one transaction. Nothing here runs a run: creating one queues it for a worker.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from stillroom.errors import BadRequestError, NotFoundError
from stillroom.evals.graders import validate_grader, with_criterion_id
from stillroom.evals.judges import normalise_message
from stillroom.store import evals as store
from stillroom.store.db import Engine
from stillroom.store.projects import Writes
from stillroom.stored import FILTER_FIELDS, parse_stored_filter
from stillroom.wire.chat import validate_metadata
from stillroom.wire.pages import parse_page, render_page

_LIMIT_TOO_SMALL = "Invalid 'limit': must be at least 1."  # evals' wording (stored: "between 1 and 100")
_SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "tools": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
    },
    "required": ["model", "choices"],
}


def new_id(prefix: str) -> str:
    """`prefix` + 32 hex digits: 13 of microsecond time (so ids sort by creation) + 19 random."""
    return f"{prefix}{time.time_ns() // 1000:013x}{secrets.token_hex(10)[:19]}"


# --- evals ---


def create_eval(body: dict[str, Any], project_id: str, writes: Writes) -> dict[str, Any]:
    metadata = validate_metadata(body.get("metadata"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequestError("Invalid 'name': expected a string.", param="name")
    config = _data_source_config(body.get("data_source_config"))
    criteria = body.get("testing_criteria")
    if not isinstance(criteria, list) or not criteria:
        raise BadRequestError("'testing_criteria' must be a non-empty list of graders.", param="testing_criteria")
    graders = [with_criterion_id(validate_grader(c, param=f"testing_criteria.{i}")) for i, c in enumerate(criteria)]
    now = int(time.time())
    row = store.EvalRow(new_id("eval_"), project_id, name, metadata, config, graders, now, now)
    writes(lambda conn: store.insert_eval(conn, row))
    return render_eval(row)


def _data_source_config(config: Any) -> dict[str, Any]:
    """The config as the eval echoes it, with the derived `schema`."""
    param = "data_source_config"
    if not isinstance(config, dict):
        raise BadRequestError(f"Missing required parameter: '{param}'.", param=param)
    kind = config.get("type")
    if kind == "custom":
        schema = config.get("item_schema")
        if not isinstance(schema, dict):
            raise BadRequestError("A custom data source needs an 'item_schema' object.", param=f"{param}.item_schema")
        properties: dict[str, Any] = {"item": schema}
        required = ["item"]
        if config.get("include_sample_schema"):
            properties["sample"] = _SAMPLE_SCHEMA
            required.append("sample")
        return {"type": "custom", "schema": {"type": "object", "properties": properties, "required": required}}
    if kind in ("logs", "stored_completions"):
        metadata = config.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise BadRequestError("Invalid 'metadata': expected an object.", param=f"{param}.metadata")
        schema = {
            "type": "object",
            "properties": {"item": {"type": "object"}, "sample": {"type": "object"}},
            "required": ["item", "sample"],
        }
        return {"type": kind, "metadata": metadata, "schema": schema}
    raise BadRequestError(
        f"Invalid '{param}.type' {kind!r}: expected custom, logs or stored_completions.", param=f"{param}.type"
    )


def render_eval(row: store.EvalRow) -> dict[str, Any]:
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "data_source_config": row.data_source_config,
        "testing_criteria": row.testing_criteria,
        "created_at": row.created_at,
        "metadata": row.metadata,
    }


def get_eval_row(engine: Engine, project_id: str, eval_id: str) -> store.EvalRow:
    row = store.get_eval(engine, project_id, eval_id) if "\x00" not in eval_id else None
    if row is None:
        raise NotFoundError(f"Eval with id '{eval_id}' not found.", param="eval_id")
    return row


def list_evals(
    engine: Engine, project_id: str, *, after: str | None, limit: str | None, order: str | None, order_by: str | None
) -> dict[str, Any]:
    size, descending = parse_page(limit, order, too_small=_LIMIT_TOO_SMALL)
    if order_by not in (None, "created_at", "updated_at"):
        raise BadRequestError("Invalid 'order_by': expected created_at or updated_at.", param="order_by")
    rows, more = store.list_evals(
        engine, project_id, after=after, limit=size, descending=descending, by_updated=order_by == "updated_at"
    )
    return render_page([render_eval(r) for r in rows], more)


def update_eval(engine: Engine, project_id: str, eval_id: str, body: dict[str, Any], writes: Writes) -> dict[str, Any]:
    get_eval_row(engine, project_id, eval_id)
    values: dict[str, Any] = {"updated_at": int(time.time())}
    if "name" in body:
        if body["name"] is not None and not isinstance(body["name"], str):
            raise BadRequestError("Invalid 'name': expected a string.", param="name")
        values["name"] = body["name"]
    if "metadata" in body:
        values["metadata"] = validate_metadata(body["metadata"])
    writes(lambda conn: store.update_eval(conn, project_id, eval_id, values))
    return render_eval(get_eval_row(engine, project_id, eval_id))


def delete_eval(project_id: str, eval_id: str, writes: Writes) -> dict[str, Any]:
    if "\x00" in eval_id or not writes(lambda conn: store.delete_eval(conn, project_id, eval_id)):
        raise NotFoundError(f"Eval with id '{eval_id}' not found.", param="eval_id")
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


# --- runs ---


def create_run(
    engine: Engine,
    project_id: str,
    eval_id: str,
    body: dict[str, Any],
    writes: Writes,
    *,
    is_model: Callable[[str], bool],
    report_base: str,
) -> dict[str, Any]:
    found = store.get_eval(engine, project_id, eval_id) if "\x00" not in eval_id else None
    if found is None:
        raise BadRequestError(f"Eval with id '{eval_id}' not found.", param="eval_id")
    source = normalise_data_source(body.get("data_source"), found)
    model = source.get("model")
    if model is not None and not is_model(model):
        raise BadRequestError(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    for criterion in found.testing_criteria:
        if criterion.get("model") and not is_model(criterion["model"]):
            raise BadRequestError(f"The grader model `{criterion['model']}` does not exist.", param="testing_criteria")
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequestError("Invalid 'name': expected a string.", param="name")
    run_id = new_id("evalrun_")
    row = store.RunRow(
        id=run_id,
        eval_id=eval_id,
        project_id=project_id,
        name=name or f"{model or 'stored answers'} {run_id[-6:]}",
        model=model,
        status="queued",
        data_source=source,
        metadata=validate_metadata(body.get("metadata")),
        error=None,
        result_counts={"total": 0, "errored": 0, "failed": 0, "passed": 0},
        per_model_usage=[],
        per_testing_criteria_results=[
            {"testing_criteria": c["id"], "passed": 0, "failed": 0} for c in found.testing_criteria
        ],
        created_at=int(time.time()),
        started_at=None,
        finished_at=None,
        worker_id=None,
        lease_expires_at=None,
        attempts=0,
    )
    writes(lambda conn: store.insert_run(conn, row))
    return render_run(row, report_base)


def normalise_data_source(source: Any, found: store.EvalRow) -> dict[str, Any]:
    param = "data_source"
    if not isinstance(source, dict):
        raise BadRequestError(f"Missing required parameter: '{param}'.", param=param)
    kind = source.get("type")
    if kind not in ("jsonl", "completions"):
        raise BadRequestError(f"Invalid '{param}.type' {kind!r}: expected jsonl or completions.", param=f"{param}.type")
    inner = _source(source.get("source"), allow_stored=kind == "completions")
    normalised: dict[str, Any] = {"type": kind, "source": inner}
    if kind == "jsonl":
        return normalised
    model = source.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise BadRequestError("Invalid 'data_source.model'.", param=f"{param}.model")
    normalised["model"] = model
    messages = source.get("input_messages")
    if model is not None and messages is None:
        raise BadRequestError("A completions run with a model needs 'input_messages'.", param=f"{param}.input_messages")
    if messages is not None:
        normalised["input_messages"] = _input_messages(messages)
    params = source.get("sampling_params") or {}
    if not isinstance(params, dict):
        raise BadRequestError("Invalid 'sampling_params'.", param=f"{param}.sampling_params")
    limit = params.get("max_completion_tokens") or params.get("max_completions_tokens")
    normalised["sampling_params"] = {
        "temperature": params.get("temperature", 1.0),
        "top_p": params.get("top_p", 1.0),
        "seed": params.get("seed", 42),
        "max_completion_tokens": limit,
        **{k: params[k] for k in ("reasoning_effort", "response_format", "tools") if params.get(k) is not None},
    }
    return normalised


def _source(source: Any, *, allow_stored: bool) -> dict[str, Any]:
    param = "data_source.source"
    if not isinstance(source, dict):
        raise BadRequestError(f"Missing '{param}'.", param=param)
    kind = source.get("type")
    if kind == "file_content":
        content = source.get("content")
        if not isinstance(content, list):
            raise BadRequestError("'content' must be a list of {item, sample?} rows.", param=f"{param}.content")
        return {"type": kind, "content": content}
    if kind == "file_id":
        if not isinstance(source.get("id"), str):
            raise BadRequestError("A file_id source needs 'id'.", param=f"{param}.id")
        return {"type": kind, "id": source["id"]}
    if kind == "stored_completions" and allow_stored:
        # The list's filter fields, checked by the list's own parser; kept as given, parsed again to load.
        parse_stored_filter(source, f"{param}.")
        out: dict[str, Any] = {"type": kind, **{key: source.get(key) for key in FILTER_FIELDS}}
        out["metadata"] = out["metadata"] or None
        if out["search"] is None:  # Stillroom's own field: absent unless given, as OpenAI's source shows it
            del out["search"]
        limit = source.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise BadRequestError(f"Invalid '{param}.limit'.", param=f"{param}.limit")
        out["limit"] = limit
        ids = source.get("ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) and "\x00" not in i for i in ids):
                raise BadRequestError(
                    f"Invalid '{param}.ids': expected a list of completion ids.", param=f"{param}.ids"
                )
            out["ids"] = ids
        return out
    allowed = "file_content, file_id" + (" or stored_completions" if allow_stored else "")
    raise BadRequestError(f"Invalid '{param}.type' {kind!r}: expected {allowed}.", param=f"{param}.type")


def _input_messages(messages: Any) -> dict[str, Any]:
    param = "data_source.input_messages"
    if isinstance(messages, dict) and messages.get("type") == "template":
        template = messages.get("template")
        if not isinstance(template, list) or not template:
            raise BadRequestError("'template' must be a list of messages.", param=f"{param}.template")
        return {
            "type": "template",
            "template": [normalise_message(m, f"{param}.template.{i}") for i, m in enumerate(template)],
        }
    if isinstance(messages, dict) and messages.get("type") == "item_reference":
        reference = messages.get("item_reference")
        if not isinstance(reference, str) or not reference.strip("{} ").startswith("item."):
            raise BadRequestError(
                "'item_reference' must name an item field, e.g. item.input.", param=f"{param}.item_reference"
            )
        return {"type": "item_reference", "item_reference": reference}
    raise BadRequestError("'input_messages' must be a template or an item_reference.", param=f"{param}.type")


def render_run(row: store.RunRow, report_base: str) -> dict[str, Any]:
    return {
        "object": "eval.run",
        "id": row.id,
        "eval_id": row.eval_id,
        "status": row.status,
        "model": row.model,
        "name": row.name,
        "created_at": row.created_at,
        "report_url": f"{report_base.rstrip('/')}/console/evals/{row.eval_id}/runs/{row.id}",
        "result_counts": row.result_counts,
        "per_model_usage": row.per_model_usage,
        "per_testing_criteria_results": row.per_testing_criteria_results,
        "data_source": row.data_source,
        "metadata": row.metadata,
        "error": row.error,
    }


def get_run_row(engine: Engine, project_id: str, eval_id: str, run_id: str) -> store.RunRow:
    row = store.get_run(engine, project_id, eval_id, run_id) if "\x00" not in eval_id + run_id else None
    if row is None:
        raise NotFoundError(f"Run with id '{run_id}' not found.", param="run_id")
    return row


def list_runs(
    engine: Engine,
    project_id: str,
    eval_id: str,
    *,
    after: str | None,
    limit: str | None,
    order: str | None,
    status: str | None,
    report_base: str,
) -> dict[str, Any]:
    get_eval_row(engine, project_id, eval_id)
    size, descending = parse_page(limit, order, too_small=_LIMIT_TOO_SMALL)
    if status not in (None, "queued", "in_progress", "completed", "canceled", "failed"):
        raise BadRequestError("Invalid 'status'.", param="status")
    rows, more = store.list_runs(
        engine, project_id, eval_id, status=status, after=after, limit=size, descending=descending
    )
    return render_page([render_run(r, report_base) for r in rows], more)


def cancel_run(
    engine: Engine, project_id: str, eval_id: str, run_id: str, writes: Writes, report_base: str
) -> dict[str, Any]:
    get_run_row(engine, project_id, eval_id, run_id)
    writes(lambda conn: store.cancel_run(conn, project_id, eval_id, run_id, int(time.time())))
    return render_run(get_run_row(engine, project_id, eval_id, run_id), report_base)


def delete_run(project_id: str, eval_id: str, run_id: str, writes: Writes) -> dict[str, Any]:
    if "\x00" in eval_id + run_id or not writes(lambda conn: store.delete_run(conn, project_id, eval_id, run_id)):
        raise NotFoundError(f"Run with id '{run_id}' not found.", param="run_id")
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


# --- output items ---


def render_output_item(row: store.OutputItemRow) -> dict[str, Any]:
    return {
        "object": "eval.run.output_item",
        "id": row.id,
        "run_id": row.run_id,
        "eval_id": row.eval_id,
        "created_at": row.created_at,
        "status": row.status,
        "datasource_item_id": row.datasource_item_id,
        "datasource_item": row.datasource_item,
        "results": row.results,
        "sample": row.sample,
    }


def list_output_items(
    engine: Engine,
    project_id: str,
    eval_id: str,
    run_id: str,
    *,
    after: str | None,
    limit: str | None,
    order: str | None,
    status: str | None,
) -> dict[str, Any]:
    get_run_row(engine, project_id, eval_id, run_id)
    size, descending = parse_page(limit, order, too_small=_LIMIT_TOO_SMALL)
    if status not in (None, "pass", "fail"):
        raise BadRequestError("Invalid 'status': expected pass or fail.", param="status")
    rows, more = store.list_output_items(engine, run_id, status=status, after=after, limit=size, descending=descending)
    return render_page([render_output_item(r) for r in rows], more)


def get_output_item(engine: Engine, project_id: str, eval_id: str, run_id: str, item_id: str) -> dict[str, Any]:
    get_run_row(engine, project_id, eval_id, run_id)
    row = store.get_output_item(engine, run_id, item_id) if "\x00" not in item_id else None
    if row is None:
        raise NotFoundError(f"Output item with id '{item_id}' not found.", param="output_item_id")
    return render_output_item(row)
