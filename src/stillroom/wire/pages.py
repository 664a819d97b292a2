"""OpenAI's list pages: the `{"object": "list", ...}` envelope every cursor-paged list returns, and the
`limit` parameter as the fine-tuning and files lists take it."""

from __future__ import annotations

from typing import Any

from stillroom.errors import BadRequestError


def render_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page: the items, the first and last ids (None when empty) and whether more follow."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def parse_limit(limit: str | None, default: int, highest: int = 100) -> int:
    """`limit` as given in a query string: `default` when absent, else digits for 1..`highest` (no clamping)."""
    if limit is None:
        return default
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= highest:
        raise BadRequestError(f"Invalid 'limit': expected an integer between 1 and {highest}.", param="limit")
    return int(limit)
