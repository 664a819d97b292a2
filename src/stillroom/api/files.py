"""/files: multipart upload (parsed as it arrives, the file part streamed into storage), list, retrieve,
content (also as Parquet), delete."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.responses import FileResponse, Response, StreamingResponse

from stillroom import files as domain
from stillroom.api.deps import Caller, Svc, json_response
from stillroom.distill.parquet import write_parquet
from stillroom.errors import BadRequestError
from stillroom.files import Upload, check_purpose, expiry_seconds, render_file

router = APIRouter()
_FIELD_LIMIT = 64 * 1024  # bytes a plain form field may hold
PARQUET = "application/vnd.apache.parquet"
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {"purpose": {"type": "string"}, "file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post("/files", openapi_extra=_UPLOAD_BODY)
async def create_file(request: Request, principal: Caller, services: Svc) -> Response:
    """Upload a file; a `fine-tune` file is checked line by line as it arrives."""
    form = _Form(request, services)
    try:
        upload = await form.receive()
        row = await run_in_threadpool(upload.finish, services.writes, principal.project_id)
    except BaseException:
        form.abort()
        raise
    return json_response(render_file(row))


@router.get("/files")
async def list_files(
    principal: Caller,
    services: Svc,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[str | None, Query(description="1..10000, default 10000")] = None,
    order: Annotated[str | None, Query(description="desc (default) or asc")] = None,
) -> Response:
    page = await run_in_threadpool(
        domain.list_files, services.engine, principal.project_id, purpose=purpose, after=after, limit=limit, order=order
    )
    return json_response(page)


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, principal: Caller, services: Svc) -> Response:
    return json_response(await run_in_threadpool(domain.retrieve_file, services.engine, principal.project_id, file_id))


@router.get("/files/{file_id}/content")
async def download_file(
    file_id: str,
    principal: Caller,
    services: Svc,
    format: Annotated[str | None, Query(description="`parquet` converts a fine-tuning JSONL file")] = None,
) -> Response:
    """The file's bytes, streamed; `?format=parquet` turns a chat fine-tuning JSONL file into Parquet."""
    if format not in (None, "jsonl", "parquet"):
        raise BadRequestError("Invalid 'format': expected 'parquet'.", param="format")
    row, source = await run_in_threadpool(
        domain.open_file_content, services.engine, services.storage, principal.project_id, file_id
    )
    if format == "parquet":
        target = Path(tempfile.mkstemp(suffix=".parquet")[1])
        try:
            with source:
                await run_in_threadpool(write_parquet, source, target)
        except ValueError as exc:
            target.unlink(missing_ok=True)
            raise BadRequestError(f"File {file_id} is not chat fine-tuning JSONL: {exc}", param="format") from exc
        name = row.filename.rsplit(".", 1)[0] + ".parquet"
        return FileResponse(
            target, media_type=PARQUET, filename=name, background=BackgroundTask(target.unlink, missing_ok=True)
        )
    headers = {"content-length": str(row.bytes), "content-disposition": f'attachment; filename="{row.filename}"'}
    return StreamingResponse(
        iterate_in_threadpool(_chunks(source)), media_type="application/octet-stream", headers=headers
    )


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, principal: Caller, services: Svc) -> Response:
    deleted = await run_in_threadpool(
        domain.delete_file, services.writes, services.storage, principal.project_id, file_id
    )
    return json_response(deleted)


def _chunks(source: Any) -> Iterator[bytes]:
    with source:
        while chunk := source.read(1 << 16):
            yield chunk


class _Form:
    """multipart/form-data read as it arrives: small fields kept, the `file` part written to an Upload
    chunk by chunk (off the event loop), so memory holds one network chunk at a time."""

    def __init__(self, request: Request, services: Any) -> None:
        self.request = request
        self.services = services
        self.fields: dict[str, bytes] = {}
        self.upload: Upload | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._name: str | None = None
        self._filename: str | None = None
        self._pending: list[bytes] = []
        self._failure: Exception | None = None
        self._ended = False

    async def receive(self) -> Upload:
        kind, options = parse_options_header(self.request.headers.get("content-type", ""))
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise BadRequestError("Upload files as multipart/form-data.", param="file")
        parser = MultipartParser(
            options[b"boundary"],
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._header(d[s:e], None),
                "on_header_value": lambda d, s, e: self._header(None, d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_end": self._body_end,
            },
        )
        async for chunk in self.request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as exc:  # the parser's own refusal: the body is not multipart
                raise BadRequestError(f"The multipart/form-data body is malformed: {exc}.", param="file") from None
            if self._failure is not None:
                raise self._failure
            await self._flush()
        if self._failure is not None:
            raise self._failure
        if not self._ended:  # python-multipart's finalize() checks nothing: a cut-off file is not a file
            raise BadRequestError("The multipart/form-data body ends before its closing boundary.", param="file")
        await self._flush()
        if self.upload is None:
            check_purpose(self._text("purpose"))
            raise BadRequestError("Missing required parameter: 'file'.", param="file")
        return self.upload

    def abort(self) -> None:
        if self.upload is not None:
            self.upload.abort()

    def _text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value.decode(errors="replace") if value is not None else None

    def _begin(self) -> None:
        self._headers = {}
        self._name = self._filename = None
        self._field_header = b""
        self._field_value = b""

    def _header(self, field: bytes | None, value: bytes | None) -> None:
        if field is not None:
            self._field_header += field
        if value is not None:
            self._field_value += value

    def _header_end(self) -> None:
        self._headers[self._field_header.lower()] = self._field_value
        self._field_header = self._field_value = b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode(errors="replace")
        filename = options.get(b"filename")
        self._filename = filename.decode(errors="replace") if filename is not None else None
        if self._name == "file" and self.upload is not None and self._failure is None:
            self._failure = BadRequestError("Send one 'file' part per upload.", param="file")
        elif self._name == "file" and self._failure is None:
            try:
                self.upload = self._start_upload()
            except Exception as exc:  # raised from receive(), outside the parser's callback
                self._failure = exc
        else:
            self._field = b""

    def _start_upload(self) -> Upload:
        purpose = check_purpose(self._text("purpose"))
        expires = expiry_seconds(self._text("expires_after[anchor]"), self._text("expires_after[seconds]"))
        return Upload(
            self.services.storage, purpose, self._filename or "", self.services.settings.max_file_bytes, expires
        )

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            if self.upload is not None:
                self._pending.append(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > _FIELD_LIMIT:
            self._failure = BadRequestError(f"Form field {self._name!r} is too long.", param=self._name)

    def _end(self) -> None:
        if self._name and self._name != "file":
            self.fields[self._name] = self._field

    def _body_end(self) -> None:
        self._ended = True

    async def _flush(self) -> None:
        if self._pending and self.upload is not None:
            data, self._pending = b"".join(self._pending), []
            await run_in_threadpool(self.upload.write, data)
