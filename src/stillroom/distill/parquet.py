"""Fine-tuning JSONL as Parquet that Hugging Face `datasets` loads: one row per example, `messages` as a
list of structs, written in row groups (memory bounded by one group).

Columns: `messages` (role, content, name, tool_call_id, tool_calls[{id, type, function{name, arguments}}],
weight), `tools` (the JSON text of the tool list, since tool schemas have no fixed shape) and
`parallel_tool_calls`. Content given as a list of parts is kept as its JSON text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import orjson

_ROWS_PER_GROUP = 2000


def _schema() -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]

    call = pa.struct(
        [
            ("id", pa.string()),
            ("type", pa.string()),
            ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
        ]
    )
    message = pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.string()),
            ("name", pa.string()),
            ("tool_call_id", pa.string()),
            ("tool_calls", pa.list_(call)),
            ("weight", pa.int8()),
        ]
    )
    return pa.schema([("messages", pa.list_(message)), ("tools", pa.string()), ("parallel_tool_calls", pa.bool_())])


def _row(example: dict[str, Any]) -> dict[str, Any]:
    messages = []
    for m in example.get("messages", []):
        content = m.get("content")
        messages.append(
            {
                "role": m.get("role"),
                "content": content if content is None or isinstance(content, str) else orjson.dumps(content).decode(),
                "name": m.get("name"),
                "tool_call_id": m.get("tool_call_id"),
                "tool_calls": m.get("tool_calls"),
                "weight": m.get("weight"),
            }
        )
    tools = example.get("tools")
    return {
        "messages": messages,
        "tools": orjson.dumps(tools).decode() if tools is not None else None,
        "parallel_tool_calls": example.get("parallel_tool_calls"),
    }


def write_parquet(source: BinaryIO, target: Path) -> int:
    """Convert a chat fine-tuning JSONL stream; return the number of rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = _schema()
    rows: list[dict[str, Any]] = []
    total = 0
    with pq.ParquetWriter(str(target), schema) as writer:
        for line in source:
            if line.strip():
                rows.append(_row(orjson.loads(line)))
            if len(rows) >= _ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                total += len(rows)
                rows = []
        if rows or total == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            total += len(rows)
    return total
