"""Client channels: every RPC gets a deadline, retries on UNAVAILABLE come from the channel's service
config (no hand-written retry loops), and message size limits match the servers'.

The default deadline is set by a client interceptor on calls made without one, not by the service
config's `timeout`: grpcio's Python channels apply that one wrongly (calls fail at once with
DEADLINE_EXCEEDED; grpc/grpc#34547, #40633). Streams are long-lived, so they get no default deadline:
callers bound each streamed batch themselves (the frontend's straggler deadline).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from coded_invnet.serving.config import BACKEND_MAX_MESSAGE_BYTES, ServingConfig

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_MESSAGE_BYTES = BACKEND_MAX_MESSAGE_BYTES
RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    return json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}]})


def channel_options(
    timeout_s: float = DEFAULT_TIMEOUT_S, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> list[tuple[str, str | int]]:
    """Options for grpc.insecure_channel / grpc.aio.insecure_channel. `timeout_s` is not among them
    (see the module doc): use create_channel / create_sync_channel for the default deadline."""
    return [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Notice a silently dead peer (SIGSTOP, lost node) on idle connections too.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A killed worker comes back within seconds (a restarted process or pod): reconnect soon after,
        # not after gRPC's default backoff, which grows to 120 s.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]


@dataclass(frozen=True)
class TlsOptions:
    """How a client channel does TLS: the CA that signed the server's certificate (None: the system's
    roots), a client certificate and key for mutual TLS, and the name the server's certificate must
    carry when it is not the target's host (e.g. a target given by IP address)."""

    ca_file: str | os.PathLike[str] | None = None
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TlsOptions: cert_file and key_file come together")

    @classmethod
    def from_config(cls, cfg: ServingConfig) -> TlsOptions:
        """A service's client side: CODED_TLS_CA, CODED_TLS_CLIENT_CERT/KEY, CODED_TLS_SERVER_NAME."""
        return cls(cfg.tls_ca, cfg.tls_client_cert, cfg.tls_client_key, cfg.tls_server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )

    def options(self) -> list[tuple[str, str | int]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def client_tls(cfg: ServingConfig) -> TlsOptions | None:
    """The TLS a service uses towards the servers it calls: on when CODED_TLS_CA is set."""
    return None if cfg.tls_ca is None else TlsOptions.from_config(cfg)


class DefaultDeadline(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Gives unary-request calls made without a timeout the default one (grpc.aio channels)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(
            details.method, self.timeout_s, details.metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_deadline(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_deadline(client_call_details), request)


class SyncDefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """The same for blocking grpc channels."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def _with_deadline(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return _SyncCallDetails(details, self.timeout_s)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_deadline(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_deadline(client_call_details), request)


class _SyncCallDetails(grpc.ClientCallDetails):
    def __init__(self, original: grpc.ClientCallDetails, timeout_s: float) -> None:
        self.method = original.method
        self.timeout = timeout_s
        self.metadata = original.metadata
        self.credentials = original.credentials
        self.wait_for_ready = getattr(original, "wait_for_ready", None)
        self.compression = getattr(original, "compression", None)


def create_channel(
    target: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tls: TlsOptions | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `target` ("host:port" or "dns:///name:port"): plaintext, or TLS with `tls`."""
    options = channel_options(timeout_s, max_message_bytes)
    interceptors: list[Any] = [DefaultDeadline(timeout_s)]  # grpc-stubs lag grpc.aio's interceptor types
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=options + tls.options(), interceptors=interceptors
    )


def create_sync_channel(
    target: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    tls: TlsOptions | None = None,
) -> grpc.Channel:
    """The blocking counterpart of create_channel."""
    options = channel_options(timeout_s, max_message_bytes)
    if tls is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, tls.credentials(), options=options + tls.options())
    return grpc.intercept_channel(channel, SyncDefaultDeadline(timeout_s))
