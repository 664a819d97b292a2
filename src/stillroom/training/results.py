"""The files a job leaves for its project: result files (metrics CSV, zipped PEFT adapter, student GGUF), kept
under purpose `fine-tune-results` and counted against the project's storage quota, all or none."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from stillroom.files import register_result_file
from stillroom.store import files as file_store
from stillroom.store.blobs import FileStorage
from stillroom.store.projects import Writes


def zip_adapter(adapter_dir: Path, archive: Path) -> Path:
    """A PEFT adapter folder as one zip (adapter_config.json, adapter_model.safetensors, …)."""
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(adapter_dir.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(adapter_dir))
    return archive


def keep_result_files(
    writes: Writes, storage: FileStorage, project_id: str, sources: Sequence[tuple[Path, str]]
) -> list[file_store.FileRow]:
    """Register each (path, filename) as a result file. A file past the quota raises QuotaExceededError, with
    the ones already kept removed again."""
    rows: list[file_store.FileRow] = []
    try:
        for source, filename in sources:
            rows.append(register_result_file(writes, storage, project_id, source, filename))
    except BaseException:
        remove_files(writes, storage, project_id, (row.id for row in rows))
        raise
    return rows


def remove_files(writes: Writes, storage: FileStorage, project_id: str, file_ids: Iterable[str]) -> None:
    """Delete files (rows, quota bytes, then the bytes); ids already gone are skipped."""
    for file_id in file_ids:
        row = file_store.delete_file(writes, project_id, file_id)
        if row is not None:
            storage.delete(row.storage_key)
