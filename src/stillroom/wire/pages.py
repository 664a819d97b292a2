"""OpenAI's list pages: the `{"object": "list", ...}` envelope every cursor-paged list returns, and the
`limit`/`order` query parameters: clamped (`parse_page`: stored completions, evals, audit logs) or strict
(`parse_limit`: fine-tuning jobs, events and checkpoints, files)."""

from __future__ import annotations

from typing import Any

from stillroom.errors import BadRequestError

MAX_LIMIT = 100


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


def parse_page(
    limit: str | None,
    order: str | None,
    *,
    too_small: str = f"Invalid 'limit': must be between 1 and {MAX_LIMIT}.",
) -> tuple[int, bool]:
    """Validate `limit` (at least 1, default 20; above 100 it is 100, and `has_more` says what is left, as
    other servers' conformance suites page with limit=1000) and `order` (asc default, or desc). `too_small`
    is the message for a limit below 1."""
    if limit is None:
        size = 20
    else:
        try:
            size = int(limit)
        except ValueError:
            raise BadRequestError("Invalid 'limit': expected an integer.", param="limit") from None
        if size < 1:
            raise BadRequestError(too_small, param="limit")
        size = min(size, MAX_LIMIT)
    if order not in (None, "asc", "desc"):
        raise BadRequestError("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    return size, order == "desc"
