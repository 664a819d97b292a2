"""Where file bytes live: a narrow interface, and the local-filesystem implementation.

An S3-compatible store is the obvious second implementation: `create` would be a multipart upload, `open` a
streamed GET, and `local_path` a download into a cache directory (llama.cpp and the trainer read paths).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Protocol


class BlobWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> int:
        """Make the bytes durable and visible under the key; return how many were written."""
        ...

    def abort(self) -> None: ...


class FileStorage(Protocol):
    def create(self, key: str) -> BlobWriter: ...

    def put(self, key: str, source: Path) -> int:
        """Store a file that already exists on this machine (a training result); return its size."""
        ...

    def open(self, key: str) -> BinaryIO: ...

    def local_path(self, key: str) -> Path: ...

    def delete(self, key: str) -> None: ...


class LocalFileStorage:
    """Files under one directory, each written to a temporary name and renamed into place when complete."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        if not key or "/" in key or "\\" in key or key.startswith("."):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def create(self, key: str) -> _LocalWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        return _LocalWriter(self._path(key))

    def put(self, key: str, source: Path) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self._path(key)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        return target.stat().st_size

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


class _LocalWriter:
    def __init__(self, target: Path) -> None:
        self._target = target
        self._partial = target.with_name(target.name + ".partial")
        self._file: BinaryIO | None = self._partial.open("wb")
        self.size = 0

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit or abort"
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> int:
        assert self._file is not None, "commit after commit or abort"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._partial, self._target)
        return self.size

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._partial.unlink()
