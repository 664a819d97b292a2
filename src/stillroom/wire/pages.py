"""OpenAI's list pages: the `{"object": "list", ...}` envelope every cursor-paged list returns."""

from __future__ import annotations

from typing import Any


def render_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page: the items, the first and last ids (None when empty) and whether more follow."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
