"""The injected straggler the benchmarks and load tests use, and the deadline of the fault-admin calls:
defined once for `coded_invnet.tools.bench` and `loadtest/locustfile.py`."""

from __future__ import annotations

from coded_invnet.proto import coded_pb2

ADMIN_TIMEOUT_S = 5.0  # SetFaults / GetFaults
STRAGGLER_DELAY_MS = 100.0
STRAGGLER_PROBABILITY = 0.1  # of a batch being delayed


def straggler(
    delay_ms: float = STRAGGLER_DELAY_MS, probability: float = STRAGGLER_PROBABILITY, seed: int = 1
) -> coded_pb2.FaultConfig:
    """A worker that delays a share of its batches by a fixed time."""
    return coded_pb2.FaultConfig(
        delay_kind=coded_pb2.DELAY_FIXED, delay_ms=delay_ms, delay_probability=probability, seed=seed
    )
