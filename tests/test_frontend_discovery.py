"""Finding the data workers: a static list, or the A records of one DNS name (a headless Service)."""

from __future__ import annotations

import pytest

from coded_invnet.serving.config import ServingConfig
from coded_invnet.serving.errors import ConfigError, Unavailable
from services.frontend.backends import check_targets, resolve_workers


def test_static_list_is_taken_in_order() -> None:
    workers = ("worker-0.worker:8001", "worker-1.worker:8001", "worker-2.worker:8001")
    assert resolve_workers(workers, 2) == list(workers[:2])


def test_dns_name_resolves_to_its_addresses() -> None:
    assert resolve_workers(("dns:///localhost:8001",), 1)[0] in ("127.0.0.1:8001", "[::1]:8001")


def test_too_few_workers_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="k=3"):
        resolve_workers(("a:1", "b:2"), 3)
    with pytest.raises(Unavailable, match="cannot resolve"):
        resolve_workers(("dns:///no-such-host.invalid:8001",), 1)


def test_coded_modes_need_the_parity_path() -> None:
    with pytest.raises(ConfigError, match="CODED_PARITY_WORKER"):
        check_targets(ServingConfig(service="frontend", mode="coded-invnet", workers=("a:1", "b:2")))
    check_targets(ServingConfig(service="frontend", mode="none", workers=("a:1", "b:2")))
    with pytest.raises(ConfigError, match="CODED_WORKERS"):
        check_targets(ServingConfig(service="frontend", mode="none"))
