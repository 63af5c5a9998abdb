"""Shared fixtures: `model_dir` holds every ONNX model of the contract for k = serving_models.K."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LENIENT_STRAGGLER_TIMEOUT_MS, SYSTEM_MAX_MESSAGE_BYTES, SYSTEM_MAX_QUEUE, K, model_dir_for

from coded_invnet.tools.launcher import System, launch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/system/ runs whole systems of processes: slow (`make test-fast` skips it)."""
    for item in items:
        if "system" in item.path.parts:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_for(K, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def coded_system(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The whole system (coded-invnet, k=K) as local processes, shared by the tests that leave it intact."""
    limits = {
        "max_message_bytes": SYSTEM_MAX_MESSAGE_BYTES,
        "max_queue": SYSTEM_MAX_QUEUE,
        # no fault is injected here: a loaded test machine must not make a slow batch look like a straggler
        "straggler_timeout_ms": LENIENT_STRAGGLER_TIMEOUT_MS,
        "decode_wait_ms": LENIENT_STRAGGLER_TIMEOUT_MS,
    }
    with launch(
        model_dir, "coded-invnet", K, frontend_settings=limits, log_dir=tmp_path_factory.mktemp("logs")
    ) as system:
        yield system


@pytest.fixture(scope="session")
def smoke_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real training run (MNIST subset): base classifier, encoders (r = 1, 2) and ParM for k=2,
    exported."""
    from coded_invnet.tools.export import export_dataset
    from coded_invnet.training import cli

    root = tmp_path_factory.mktemp("smoke")
    common = ["--dataset", "mnist", "--epochs", "1", "--train-limit", "512", "--batch-size", "64"]
    common += ["--models-dir", str(root / "models"), "--checkpoints-dir", str(root / "ckpt")]
    for what in (
        ["base"],
        ["encoder", "--k", "2"],
        ["encoder", "--k", "2", "--parities", "2"],
        ["parm", "--k", "2"],
    ):
        assert cli.main([*what, *common]) == 0
    export_dataset(root / "models" / "mnist")
    return root / "models" / "mnist"
