"""The frontend's settings grouped the way Triton groups a model's batching policy: the queue, the
batching of queries into coding groups, and recovery from stragglers and failures. Read from a
`ServingConfig` (whose flat `CODED_*` fields stay what operators set)."""

from __future__ import annotations

from dataclasses import dataclass

from coded_invnet.serving.config import ServingConfig


@dataclass(frozen=True)
class QueuePolicy:
    """Like Triton's `default_queue_policy`: what may wait, in all and per client."""

    max_size: int  # queries (CODED_MAX_QUEUE)
    max_size_per_client: int  # queries of one connection (CODED_MAX_QUEUE_PER_CLIENT)
    max_request_bytes: int  # input bytes of the requests held at once (CODED_MAX_REQUEST_BYTES_IN_FLIGHT)


@dataclass(frozen=True)
class BatchingPolicy:
    """Like Triton's `dynamic_batching`: how queries become coding groups."""

    max_batch: int  # rows per data batch (CODED_MAX_BATCH); a group holds k of them
    max_delay_s: float  # longest wait for a group to fill while others are in flight (CODED_MAX_DELAY_MS)
    max_inflight_groups: int  # (CODED_MAX_INFLIGHT_GROUPS)
    queue: QueuePolicy


@dataclass(frozen=True)
class RecoveryPolicy:
    """When a group's parity path starts, when it decodes, re-sends and gives up."""

    straggler_timeout_s: float  # (CODED_STRAGGLER_TIMEOUT_MS)
    decode_wait_s: float  # (CODED_DECODE_WAIT_MS)
    parity_delay_s: float  # the hedge's floor (CODED_PARITY_DELAY_MS)
    parity_delay_quantile: float  # (CODED_PARITY_DELAY_QUANTILE)
    backend_timeout_s: float  # each backend call's deadline (CODED_RPC_TIMEOUT_S)


def batching_policy(cfg: ServingConfig) -> BatchingPolicy:
    queue = QueuePolicy(cfg.max_queue, cfg.max_queue_per_client, cfg.request_bytes_budget)
    return BatchingPolicy(cfg.max_batch, cfg.max_delay_ms / 1000, cfg.max_inflight_groups, queue)


def recovery_policy(cfg: ServingConfig) -> RecoveryPolicy:
    return RecoveryPolicy(
        cfg.straggler_timeout_ms / 1000,
        cfg.decode_wait_ms / 1000,
        cfg.parity_delay_ms / 1000,
        cfg.parity_delay_quantile,
        cfg.rpc_timeout_s,
    )
