"""`stillroom export`'s rows under the name the CLI and the benchmarks import: a selection of stored completions
as chat fine-tuning rows, streamed page by page (constant memory). The one implementation is
distill/export.py, which dataset building reads through too."""

from __future__ import annotations

from stillroom.distill.export import iter_training_rows

__all__ = ["iter_training_rows"]
