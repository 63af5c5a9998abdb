"""Client channels: every unary RPC gets a deadline and retries on UNAVAILABLE from the channel's
service config (no hand-written retry loops); message size limits match the servers'.

Streams are long-lived, so the config gives them retries but no deadline: callers bound each
streamed batch themselves (the frontend's straggler deadline).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from coded_invnet.proto import coded_pb2

# Triton's stream method, named by string: importing inference_pb2 here would clash with tritonclient.
STREAMING_METHODS: tuple[tuple[str, str], ...] = (
    ("inference.GRPCInferenceService", "ModelStreamInfer"),
    *(
        (service.full_name, method.name)
        for service in coded_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.client_streaming or method.server_streaming
    ),
)


def service_config(
    timeout_s: float,
    max_attempts: int = 3,
    streaming_methods: Sequence[tuple[str, str]] = STREAMING_METHODS,
) -> str:
    retry = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    streams = [{"service": service, "method": method} for service, method in streaming_methods]
    return json.dumps(
        {
            "methodConfig": [
                {"name": [{}], "timeout": f"{timeout_s:.3f}s", "retryPolicy": retry},
                {"name": streams, "retryPolicy": retry},
            ]
        }
    )


def channel_options(timeout_s: float, max_message_bytes: int) -> list[tuple[str, str | int]]:
    return [
        ("grpc.service_config", service_config(timeout_s)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Notice a silently dead peer (SIGSTOP, lost node) on idle connections too.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def create_channel(
    target: str, *, timeout_s: float = 10.0, max_message_bytes: int = 64 * 1024 * 1024
) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to `target` ("host:port" or "dns:///name:port")."""
    return grpc.aio.insecure_channel(target, options=channel_options(timeout_s, max_message_bytes))
