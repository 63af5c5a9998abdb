"""Exit 0 when the service in this container answers SERVING on grpc.health.v1, else 1: the image's
HEALTHCHECK (Kubernetes uses its native gRPC probe instead).

    python -m coded_invnet.tools.healthcheck [--target 127.0.0.1:8001] [--timeout 3]

The default target is this container's own port, CODED_PORT, on loopback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coded_invnet.serving.config import ServingConfig

PORT_ENV = "CODED_PORT"


def is_serving(target: str, timeout_s: float) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s, wait_for_ready=False
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.healthcheck", description=__doc__.split("\n")[0]
    )
    own_port = os.environ.get(PORT_ENV, str(ServingConfig.port))
    parser.add_argument("--target", default=f"127.0.0.1:{own_port}", help="host:port of the gRPC server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    serving = is_serving(args.target, args.timeout)
    print("SERVING" if serving else f"not serving: {args.target}")
    sys.exit(0 if serving else 1)


if __name__ == "__main__":
    main()
