"""One gRPC server per service: error mapping, message limits, grpc.health.v1 (NOT_SERVING until the
model is loaded and warmed up), Prometheus endpoint, and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from coded_invnet.rpc.grpc_errors import ErrorMappingInterceptor
from coded_invnet.serving.config import ServingConfig, describe, load_config
from coded_invnet.serving.errors import ConfigError
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.structured_logging import configure_logging

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a taken port is an error, not a silently shared one
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ]


def server_credentials(cfg: ServingConfig) -> grpc.ServerCredentials:
    """TLS from CODED_TLS_CERT/KEY; with CODED_TLS_REQUIRE_CLIENT_CERT=on, only clients presenting a
    certificate signed by CODED_TLS_CA get through the handshake."""
    assert cfg.tls_cert is not None and cfg.tls_key is not None  # paired: config.check_tls
    mutual = cfg.tls_require_client_cert == "on"
    return grpc.ssl_server_credentials(
        [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
        root_certificates=cfg.tls_ca.read_bytes() if mutual and cfg.tls_ca else None,
        require_client_auth=mutual,
    )


class ServiceHost:
    """A grpc.aio server with the shared plumbing; the service adds its servicers to `server`."""

    def __init__(self, cfg: ServingConfig, service_names: Sequence[str], metrics: ServingMetrics) -> None:
        self.cfg = cfg
        self.service_names = ("", *service_names)  # "": the whole server
        self.metrics = metrics
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor()], options=server_options(cfg.message_limit)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, server_credentials(cfg))
        except RuntimeError as error:  # grpc's way of saying the address is taken or invalid
            hint = "" if cfg.tls_cert is None else "; or CODED_TLS_CERT/CODED_TLS_KEY are not a PEM pair"
            raise ConfigError(f"CODED_HOST/CODED_PORT {address}: cannot bind ({error}){hint}") from None
        self.metrics_port: int | None = None
        self._warm_up: asyncio.Task[None] | None = None
        self._cleanups: list[Callable[[], Awaitable[object]]] = []
        self._stopped = False

    def add_cleanup(self, cleanup: Callable[[], Awaitable[object]]) -> None:
        """Run `cleanup()` on stop, after the server stopped answering (last added, first run)."""
        self._cleanups.append(cleanup)

    async def start(self, warm_up: Callable[[], Awaitable[object]]) -> None:
        """Start answering at once (NOT_SERVING); flip to SERVING once `warm_up()` is done."""
        for name in self.service_names:
            await self.health.set(name, NOT_SERVING)
        if self.cfg.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.cfg.metrics_port, self.cfg.host)
        await self.server.start()
        log.info(
            "started",
            extra={"port": self.port, "metrics_port": self.metrics_port, "config": describe(self.cfg)},
        )
        self._warm_up = asyncio.create_task(self._warm_up_then_serve(warm_up), name="warm-up")

    async def _warm_up_then_serve(self, warm_up: Callable[[], Awaitable[object]]) -> None:
        try:
            await warm_up()
        except Exception:
            log.exception("warm-up failed; staying NOT_SERVING")
            return
        for name in self.service_names:
            await self.health.set(name, SERVING)
        log.info("serving", extra={"port": self.port})

    async def stop(self) -> None:
        """Drain in-flight RPCs for the grace period, stop, then run the clean-ups; once."""
        if self._stopped:
            return
        self._stopped = True
        if self._warm_up is not None:
            self._warm_up.cancel()
            await asyncio.gather(self._warm_up, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.cfg.shutdown_grace_s)
        for cleanup in reversed(self._cleanups):
            await cleanup()
        self.metrics.close()
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop: in-flight RPCs drain for the grace period."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        stopped = asyncio.ensure_future(self.server.wait_for_termination())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if signalled.done():
            log.info("signal received; shutting down", extra={"grace_s": self.cfg.shutdown_grace_s})
        await self.stop()  # before `stopped` is cancelled: cancelling that wait stops the server at once
        stopped.cancel()
        signalled.cancel()


Serve = Callable[[ServingConfig], Coroutine[Any, Any, None]]


def run_service(
    service: str,
    serve: Serve,
    argv: Sequence[str] | None = None,
) -> None:
    """Entry point of `python -m services.<service>.server`: config (exit 2 naming a bad setting), JSON
    logs, then serve until signalled, on uvloop: grpc.aio wakes the event loop once per completed
    operation, and libuv's loop costs less per wake-up than asyncio's own (docs/RESULTS.md, serving
    cost)."""
    try:
        cfg = load_config(service, sys.argv[1:] if argv is None else argv)
        configure_logging(service, cfg.log_level)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(cfg))
    except ConfigError as error:
        print(f"{service}: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
