"""The local trainer as a worker runs it: job hyperparameters in, `TrainResult` out, cancellation mapped.
Its libraries come with the `train` extra; without them a job fails while its files are validated, saying so,
as does a job on a Hugging Face model folder whose student could not be written as GGUF (`hf_gguf.py`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stillroom.errors import BadRequestError
from stillroom.training.worker import JobCancelled, JobFailed, RunContext, RunResult

TRAINING_MODULES = ("torch", "transformers", "peft", "accelerate", "gguf")


def check_training_extra(modules: Sequence[str] = TRAINING_MODULES) -> None:
    """JobFailed (`missing_dependency`) naming the `train` extra when one of `modules` is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise JobFailed(
            "missing_dependency",
            f"This worker cannot train: {', '.join(missing)} not installed. The local trainer comes with the "
            "train extra: pip install -e '.[train]' (or 'stillroom[train]'), then restart stillroom serve/worker.",
        )


def check_model_folder(folder: Path) -> None:
    """JobFailed (`model_not_available`) unless a Hugging Face model folder's student can be written as GGUF."""
    from stillroom.training.hf_gguf import check_hf_base

    try:
        check_hf_base(folder)
    except BadRequestError as exc:
        raise JobFailed("model_not_available", exc.message, "model") from None


class LocalTrainer:
    """Runs `stillroom.training.trainer.train` in this (the worker's) process, or with `processes` > 1 on that many
    processes started by `accelerate launch` (`training/launch.py`; `launch_args` go to it too). `max_steps`
    caps every run."""

    def __init__(self, *, max_steps: int | None = None, processes: int = 1, launch_args: Sequence[str] = ()) -> None:
        self.max_steps = max_steps
        self.processes = processes
        self.launch_args = tuple(launch_args)

    def _config(self, context: RunContext) -> Any:
        from stillroom.training.trainer import TrainConfig

        asked = context.job.method["supervised"]["hyperparameters"]
        resolved = context.job.hyperparameters or {}

        def value(name: str) -> Any:
            chosen = resolved.get(name, asked.get(name))
            return None if chosen == "auto" else chosen

        return TrainConfig(
            base_model=context.base_model.model_path(),
            training_file=context.training_path,
            validation_file=context.validation_path,
            output_dir=context.output_dir,
            n_epochs=value("n_epochs"),
            batch_size=value("batch_size"),
            learning_rate_multiplier=value("learning_rate_multiplier"),
            seed=context.job.seed,
            max_steps=self.max_steps,
        )

    def resolve_hyperparameters(self, context: RunContext) -> dict[str, Any]:
        from stillroom.training.trainer import resolve_hyperparameters

        check_training_extra()
        config = self._config(context)
        if config.base_model.is_dir():
            check_model_folder(config.base_model)
        return resolve_hyperparameters(context.n_examples, config)

    def run(self, context: RunContext) -> RunResult:
        from stillroom.training.trainer import TrainingCancelled, train

        check_training_extra()
        config = self._config(context)
        try:
            if self.processes > 1:
                from stillroom.training.launch import train_launched

                result = train_launched(
                    config,
                    processes=self.processes,
                    launch_args=self.launch_args,
                    on_event=context.on_event,
                    should_stop=context.should_stop,
                )
            else:
                result = train(config, on_event=context.on_event, should_stop=context.should_stop)
        except TrainingCancelled as exc:
            raise JobCancelled(str(exc)) from exc
        return RunResult(
            hyperparameters=result.hyperparameters,
            trained_tokens=result.trained_tokens,
            metrics_csv=result.metrics_csv,
            adapter_dir=result.adapter_dir,
            gguf_path=result.gguf_path,
        )
