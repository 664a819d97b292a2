"""Fine-tuned models as the gateway serves them: an `ft:` name registered by a succeeded job resolves to its
student GGUF (a result file), run by llama.cpp like any local model; or, for a job trained upstream (its
base model an `openai` or `azure` entry), to that entry with the upstream's fine-tuned model as
`upstream_model` (and, for Azure, as the deployment), so its completions go to the same upstream."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stillroom.config import ModelConfig
from stillroom.providers.registry import FineTunedModel
from stillroom.store import files as file_store
from stillroom.store import jobs as store
from stillroom.store.blobs import FileStorage
from stillroom.store.db import Engine
from stillroom.training.held import upstream_state
from stillroom.training.student import student_model_config


def fine_tuned_model_resolver(
    engine: Engine, storage: FileStorage, base_models: Mapping[str, ModelConfig]
) -> Callable[[str], FineTunedModel | None]:
    """For ProviderRegistry: the model entry (and owner) of a registered `ft:` name, None for any other name."""

    def resolve(name: str) -> FineTunedModel | None:
        row = store.get_model(engine, name)
        if row is None:
            return None
        base = base_models.get(row.base_model)
        if base is not None and base.provider != "local":
            return _upstream_model(engine, row, base)
        gguf = file_store.get_file(engine, row.project_id, row.gguf_file)
        if gguf is None:  # its file was deleted: the model can no longer be served
            return None
        config = student_model_config(name, storage.local_path(gguf.storage_key), n_ctx=base.n_ctx if base else 2048)
        return FineTunedModel(config, row.project_id)

    return resolve


def _upstream_model(engine: Engine, row: store.ModelRow, base: ModelConfig) -> FineTunedModel | None:
    job = store.get_job(engine, row.project_id, row.job_id)
    served = upstream_state(job).get("fine_tuned_model") if job is not None else None
    if not served:  # its job was deleted: the upstream's name is not known any more
        return None
    changes = {"name": row.name, "upstream_model": served}
    if base.provider == "azure":
        changes["deployment"] = served
    return FineTunedModel(base.model_copy(update=changes), row.project_id)


def fine_tuned_model_cards(engine: Engine, project_id: str | None = None) -> list[dict[str, Any]]:
    """`/models` entries for the registered fine-tuned models (of one project, given `project_id`)."""
    return [
        {"id": row.name, "object": "model", "created": row.created_at, "owned_by": row.project_id}
        for row in store.list_models(engine, project_id)
    ]
