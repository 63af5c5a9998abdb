"""Health check of the service beside it: `python -m coded_invnet.serving.health_check` exits 0 when the
service on 127.0.0.1:CODED_PORT answers SERVING on grpc.health.v1, else 1 (a Kubernetes exec probe).

It speaks the service's own TLS (CODED_TLS_CA, and CODED_TLS_CLIENT_CERT/KEY where the service requires
client certificates; CODED_TLS_SERVER_NAME is the name the certificate is checked for), which the
kubelet's native gRPC probe cannot.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coded_invnet.serving.channels import TlsOptions, create_sync_channel
from coded_invnet.serving.config import ServingConfig, load_shared_config
from coded_invnet.serving.errors import ConfigError

LOOPBACK = "127.0.0.1"


def probe_tls(cfg: ServingConfig) -> TlsOptions | None:
    """TLS towards the service's own port: on when the service serves TLS."""
    return None if cfg.tls_cert is None else TlsOptions.from_config(cfg)


def check(cfg: ServingConfig, service: str = "", timeout_s: float = 2.0) -> str:
    """The status name the local service reports (SERVING, NOT_SERVING, ...), or the call's error code."""
    with create_sync_channel(f"{LOOPBACK}:{cfg.port}", timeout_s=timeout_s, tls=probe_tls(cfg)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        except grpc.RpcError as error:
            return str(error.code().name)  # type: ignore[attr-defined]  # a failed call is also a grpc.Call
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coded_invnet.serving.health_check", description=__doc__)
    parser.add_argument("--service", default="", help="grpc.health.v1 service name (default: the server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        status = check(load_shared_config(), args.service, args.timeout)
    except ConfigError as error:
        raise SystemExit(f"health check: configuration error: {error}") from None
    print(status)
    raise SystemExit(0 if status == "SERVING" else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
