"""Shared fixtures: `model_dir` holds every ONNX model of the contract for k = serving_models.K."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from frontend_helpers import SYSTEM_MAX_MESSAGE_BYTES, SYSTEM_MAX_QUEUE
from serving_models import K, model_dir_for

from coded_invnet.launcher import System, launch


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_for(K, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def coded_system(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The whole system (coded-invnet, k=K) as local processes, shared by the tests that leave it intact."""
    limits = {"max_message_bytes": SYSTEM_MAX_MESSAGE_BYTES, "max_queue": SYSTEM_MAX_QUEUE}
    with launch(
        model_dir, "coded-invnet", K, frontend_settings=limits, log_dir=tmp_path_factory.mktemp("logs")
    ) as system:
        yield system
