"""Fine-tuned models as the gateway serves them: an `ft:` name registered by a succeeded job resolves to its
student GGUF (a result file), run by llama.cpp like any local model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stillroom.config import ModelConfig
from stillroom.store import files as file_store
from stillroom.store import jobs as store
from stillroom.store.blobs import FileStorage
from stillroom.store.db import Engine
from stillroom.training.student import student_model_config


def fine_tuned_model_resolver(
    engine: Engine, storage: FileStorage, base_models: Mapping[str, ModelConfig]
) -> Callable[[str], ModelConfig | None]:
    """For ProviderRegistry: the model entry of a registered `ft:` name, None for any other name."""

    def resolve(name: str) -> ModelConfig | None:
        row = store.get_model(engine, name)
        if row is None:
            return None
        gguf = file_store.get_file(engine, row.project_id, row.gguf_file)
        if gguf is None:  # its file was deleted: the model can no longer be served
            return None
        base = base_models.get(row.base_model)
        return student_model_config(name, storage.local_path(gguf.storage_key), n_ctx=base.n_ctx if base else 2048)

    return resolve


def fine_tuned_model_cards(engine: Engine) -> list[dict[str, Any]]:
    """`/models` entries for every registered fine-tuned model."""
    return [
        {"id": row.name, "object": "model", "created": row.created_at, "owned_by": row.project_id}
        for row in store.list_models(engine)
    ]
