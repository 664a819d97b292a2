"""Files as OpenAI's /files presents them: upload (streamed into storage, fine-tuning JSONL checked line by
line on the way), list, retrieve, content, delete; and registering files the server itself makes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from stillroom.errors import BadRequestError, NotFoundError, PayloadTooLargeError, QuotaExceededError
from stillroom.store import files as store
from stillroom.store.blobs import BlobWriter, FileStorage
from stillroom.store.db import Engine
from stillroom.store.projects import Writes
from stillroom.wire.files import RESULT_PURPOSES, UPLOAD_PURPOSES, FileFormatError, FineTuneValidator
from stillroom.wire.ids import new_sortable_id
from stillroom.wire.pages import parse_limit, render_page

MAX_LIST_LIMIT = 10_000
_EXPIRY_SECONDS = (3600, 2_592_000)


def render_file(row: store.FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": None,
    }


def check_purpose(purpose: str | None) -> str:
    if not purpose:
        raise BadRequestError("Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise BadRequestError(
            f"Invalid 'purpose': {purpose!r}. Expected one of {', '.join(UPLOAD_PURPOSES)}.", param="purpose"
        )
    return purpose


def expiry_seconds(anchor: str | None, seconds: str | None) -> int | None:
    """`expires_after[anchor]=created_at` with `expires_after[seconds]` (one hour to 30 days)."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequestError("Invalid 'expires_after.anchor': expected 'created_at'.", param="expires_after.anchor")
    low, high = _EXPIRY_SECONDS
    if seconds is None or not (seconds.isascii() and seconds.isdigit()) or not low <= int(seconds) <= high:
        raise BadRequestError(
            f"Invalid 'expires_after.seconds': expected an integer between {low} and {high}.",
            param="expires_after.seconds",
        )
    return int(seconds)


@dataclass
class Upload:
    """One file on its way into storage. `write` as bytes arrive, then `finish` (or `abort`)."""

    storage: FileStorage
    purpose: str
    filename: str
    max_bytes: int
    expires_in: int | None = None

    def __post_init__(self) -> None:
        if not self.filename or "\x00" in self.filename or len(self.filename) > 512:
            raise BadRequestError("Invalid 'file': a file name of 1 to 512 characters is required.", param="file")
        if self.purpose == "fine-tune" and not self.filename.lower().endswith(".jsonl"):
            raise BadRequestError(
                f"Invalid file format for fine-tuning: {self.filename!r} is not a .jsonl file.", param="file"
            )
        self.id = new_sortable_id("file-")
        self.size = 0
        self._validator = FineTuneValidator() if self.purpose == "fine-tune" else None
        self._writer: BlobWriter | None = self.storage.create(self.id)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            self.abort()
            raise PayloadTooLargeError(f"File too large; the limit is {self.max_bytes} bytes.")
        if self._validator is not None:
            try:
                self._validator.feed(data)
            except FileFormatError as exc:
                self.abort()
                raise _format_error(exc) from None
        assert self._writer is not None
        self._writer.write(data)

    def finish(self, writes: Writes, project_id: str) -> store.FileRow:
        assert self._writer is not None
        try:
            if self._validator is not None:
                try:
                    self._validator.finish()
                except FileFormatError as exc:
                    raise _format_error(exc) from None
                if self._validator.examples == 0:
                    raise BadRequestError(
                        "Invalid file format for fine-tuning: the file has no examples.", param="file"
                    )
            self._writer.commit()
            self._writer = None
            now = int(time.time())
            row = store.FileRow(
                id=self.id,
                project_id=project_id,
                purpose=self.purpose,
                filename=self.filename,
                bytes=self.size,
                created_at=now,
                expires_at=now + self.expires_in if self.expires_in else None,
                status="processed",
                storage_key=self.id,
            )
            _insert(writes, row)
        except BaseException:
            self.abort()
            raise
        return row

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        else:
            self.storage.delete(self.id)


def _format_error(exc: FileFormatError) -> BadRequestError:
    return BadRequestError(
        f"Invalid file format for fine-tuning: line {exc.line}: {exc.detail} (rule: {exc.rule}).",
        param="file",
        code="invalid_file_format",
    )


def register_result_file(
    writes: Writes, storage: FileStorage, project_id: str, source: Path, filename: str
) -> store.FileRow:
    """Keep a file the server made (a training result) under purpose `fine-tune-results`."""
    file_id = new_sortable_id("file-")
    size = storage.put(file_id, source)
    row = store.FileRow(
        file_id, project_id, RESULT_PURPOSES[2], filename, size, int(time.time()), None, "processed", file_id
    )
    try:
        _insert(writes, row)
    except BaseException:
        storage.delete(file_id)
        raise
    return row


def _insert(writes: Writes, row: store.FileRow) -> None:
    refused = store.insert_file(writes, row)
    if refused is not None:
        used, quota = refused
        raise QuotaExceededError(
            f"Storing {row.filename!r} ({row.bytes:,} bytes) would exceed project {row.project_id!r}'s storage "
            f"quota: {used:,} of {quota:,} bytes are in use.",
            param="file",
        )


def get_file_row(engine: Engine, project_id: str, file_id: str) -> store.FileRow:
    row = store.get_file(engine, project_id, file_id) if "\x00" not in file_id else None
    if row is None:
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    return row


def retrieve_file(engine: Engine, project_id: str, file_id: str) -> dict[str, Any]:
    return render_file(get_file_row(engine, project_id, file_id))


def list_files(
    engine: Engine, project_id: str, *, purpose: str | None, after: str | None, limit: str | None, order: str | None
) -> dict[str, Any]:
    size = parse_limit(limit, MAX_LIST_LIMIT, MAX_LIST_LIMIT)
    if order not in (None, "asc", "desc"):
        raise BadRequestError("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    for param, value in (("purpose", purpose), ("after", after)):
        if value is not None and "\x00" in value:
            raise BadRequestError(f"Invalid '{param}': NUL characters are not allowed.", param=param)
    rows, has_more = store.list_files(
        engine, project_id, purpose=purpose, after=after, limit=size, descending=order != "asc"
    )
    return render_page([render_file(row) for row in rows], has_more)


def open_file_content(
    engine: Engine, storage: FileStorage, project_id: str, file_id: str
) -> tuple[store.FileRow, BinaryIO]:
    row = get_file_row(engine, project_id, file_id)
    return row, storage.open(row.storage_key)


def delete_file(writes: Writes, storage: FileStorage, project_id: str, file_id: str) -> dict[str, Any]:
    if "\x00" in file_id or (row := store.delete_file(writes, project_id, file_id)) is None:
        raise NotFoundError(f"No such File object: {file_id}", param="file_id")
    storage.delete(row.storage_key)
    return {"id": file_id, "object": "file", "deleted": True}
