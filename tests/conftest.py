"""Shared fixtures: `model_dir` holds every ONNX model of the contract for k = serving_models.K."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_models import K, model_dir_for


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_for(K, tmp_path_factory.mktemp("models"))
