"""The local runner's guard: a worker without the `train` extra fails jobs saying which extra to install."""

from __future__ import annotations

import pytest

from stillroom.training.runner import TRAINING_MODULES, check_training_extra
from stillroom.training.worker import JobFailed


def test_a_missing_training_library_fails_the_job_naming_the_train_extra() -> None:
    with pytest.raises(JobFailed) as caught:
        check_training_extra(("json", "stillroom_no_such_training_library"))
    assert caught.value.error["code"] == "missing_dependency"
    message = str(caught.value.error["message"])
    assert "stillroom_no_such_training_library not installed" in message
    assert "json" not in message  # installed modules are not named
    assert "pip install -e '.[train]'" in message


def test_the_installed_train_extra_passes() -> None:
    assert "torch" in TRAINING_MODULES
    check_training_extra()
