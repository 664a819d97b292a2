"""The files a job leaves for its project, kept under purpose `fine-tune-results` and counted against the
project's storage quota: its result files (metrics CSV, zipped PEFT adapter, student GGUF; all or none), and
each checkpoint's zipped adapter as the run makes it (`<job id>-ckpt-step-<N>-adapter.zip`; one that does not
fit is skipped with a warning event, and the run goes on). A job that fails or is cancelled loses its
checkpoint files; a job that starts again loses its earlier run's checkpoints."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from stillroom.files import register_result_file
from stillroom.store import files as file_store
from stillroom.store import job_queue as queue
from stillroom.store import jobs as job_store
from stillroom.store.blobs import FileStorage
from stillroom.store.projects import Writes


def zip_adapter(adapter_dir: Path, archive: Path) -> Path:
    """A PEFT adapter folder as one zip (adapter_config.json, adapter_model.safetensors, …)."""
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(adapter_dir.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(adapter_dir))
    return archive


def keep_checkpoint_adapter(
    writes: Writes, storage: FileStorage, project_id: str, job_id: str, step: int, adapter_dir: Path
) -> list[str]:
    """The checkpoint's adapter folder as one result file (its id in a list; empty when the folder holds no
    adapter). QuotaExceededError when it does not fit."""
    if not (adapter_dir / "adapter_config.json").is_file():
        return []
    archive = zip_adapter(adapter_dir, adapter_dir.with_name(adapter_dir.name + ".zip"))
    try:
        row = register_result_file(writes, storage, project_id, archive, f"{job_id}-ckpt-step-{step}-adapter.zip")
    finally:
        archive.unlink(missing_ok=True)
    return [row.id]


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


def drop_checkpoint_files(writes: Writes, storage: FileStorage, job: job_store.JobRow) -> None:
    """A failed or cancelled job's checkpoints lose their files (the checkpoints and metrics stay)."""
    remove_files(writes, storage, job.project_id, job_store.clear_checkpoint_files(writes, job.id))


def drop_earlier_checkpoints(writes: Writes, storage: FileStorage, job: job_store.JobRow, worker_id: str) -> None:
    """A job that trains from the base again drops an earlier run's checkpoints, files included."""
    remove_files(writes, storage, job.project_id, queue.delete_held_checkpoints(writes, job.id, worker_id))
