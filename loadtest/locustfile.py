"""Locust gRPC users for the frontend's KServe v2 API, after Locust's own gRPC example: an interceptor on the
channel fires a request event per call. Locust users run on gevent, so this file uses sync gRPC (with
grpc's gevent integration) where the rest of the project uses grpc.aio.

Scenarios (--scenario): steady (load only), stragglers (one worker delayed 100 ms with probability 0.1
through its admin RPC, as in the paper), pod-kill (a data worker killed every --kill-every seconds:
Kubernetes pods when a cluster is configured, else the local processes named by --kill-pids).
Commands: loadtest/README.md.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from locust import User, events, task
from locust.env import Environment

from coded_invnet.client.core import build_request, parse_response
from coded_invnet.proto import coded_pb2, coded_pb2_grpc, inference_pb2_grpc
from coded_invnet.tools.openloop import add_tls_arguments, tls_from_arguments

grpc_gevent.init_gevent()

STRAGGLER_FAULTS = coded_pb2.FaultConfig(
    delay_kind=coded_pb2.DELAY_FIXED, delay_ms=100.0, delay_probability=0.1, seed=1
)
ADMIN_TIMEOUT_S = 5.0


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports every unary call to Locust (name, time, size, error), as Locust's gRPC example does."""

    def __init__(self, environment: Environment) -> None:
        self._environment = environment

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        start = time.perf_counter()
        call, exception, length = None, None, 0
        try:
            call = continuation(details, request)
            length = call.result().ByteSize()
        except grpc.RpcError as error:
            exception = error
        self._environment.events.request.fire(
            request_type="grpc",
            name=details.method,
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=length,
            response=call,
            context=None,
            exception=exception,
        )
        return call


def options(environment: Environment) -> Any:
    """Locust's parsed command line, with this file's options (add_options)."""
    if environment.parsed_options is None:
        raise SystemExit("run this file with the locust command (it parses the options)")
    return environment.parsed_options


@cache
def test_images(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from coded_invnet.data import load_dataset

    test = load_dataset(dataset).test
    return test.images, test.labels


class FrontendUser(User):
    """Sends one MNIST test image per ModelInfer and checks the answer's class is a valid label."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise SystemExit("--host: the frontend's host:port")
        self._options = options(environment)
        tls = tls_from_arguments(self._options)
        if tls is None:
            transport = grpc.insecure_channel(self.host)
        else:
            transport = grpc.secure_channel(self.host, tls.credentials(), options=tls.options())
        channel = grpc.intercept_channel(transport, LocustInterceptor(environment))
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._images, _ = test_images(self._options.dataset)

    @task
    def classify(self) -> None:
        image = self._images[random.randrange(len(self._images))]
        try:
            request = build_request(image, self._options.model)
            response = self._stub.ModelInfer(request, timeout=self._options.deadline)
        except grpc.RpcError:
            return  # already reported by the interceptor
        (prediction,) = parse_response(response, latency_ms=0.0)
        assert 0 <= prediction.label < len(prediction.probabilities)


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    parser.add_argument("--scenario", choices=["steady", "stragglers", "pod-kill"], default="steady")
    parser.add_argument("--model", default="mnist", help="model name on the frontend")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--deadline", type=float, default=5.0, help="deadline of each request (s)")
    parser.add_argument("--straggler-worker", default="", help="stragglers: the worker to delay (host:port)")
    parser.add_argument("--kill-every", type=float, default=10.0, help="pod-kill: seconds between kills")
    parser.add_argument("--kill-pids", default="", help="pod-kill, no cluster: worker PIDs a,b,..")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "coded-invnet"))
    add_tls_arguments(parser)


def set_worker_faults(target: str, faults: coded_pb2.FaultConfig) -> None:
    with grpc.insecure_channel(target) as channel:
        try:
            coded_pb2_grpc.WorkerStub(channel).SetFaults(faults, timeout=ADMIN_TIMEOUT_S)
        except grpc.RpcError as error:  # e.g. PERMISSION_DENIED: the worker's fault API is off
            raise SystemExit(f"SetFaults on {target}: {error.code().name} {error.details()}") from None


def kill_workers_periodically(options: Any) -> None:
    from coded_invnet.tools.chaos import cluster_pod_killer

    pod_killer = cluster_pod_killer(options.namespace)
    pids = [int(pid) for pid in options.kill_pids.split(",") if pid]
    if pod_killer is None and not pids:
        raise SystemExit("--scenario pod-kill needs a cluster (KUBECONFIG or in-cluster) or --kill-pids")
    while True:
        gevent.sleep(options.kill_every)
        if pod_killer is not None:
            pod_killer.delete_pod(random.randrange(pod_killer.slots))
        elif pids:
            os.kill(pids.pop(random.randrange(len(pids))), signal.SIGKILL)


@events.test_start.add_listener
def start_faults(environment: Environment, **_: Any) -> None:
    parsed = options(environment)
    if parsed.scenario == "stragglers":
        if not parsed.straggler_worker:
            raise SystemExit("--scenario stragglers needs --straggler-worker host:port")
        set_worker_faults(parsed.straggler_worker, STRAGGLER_FAULTS)
    elif parsed.scenario == "pod-kill":
        environment.runner.greenlet.spawn(kill_workers_periodically, parsed)  # type: ignore[union-attr]


@events.test_stop.add_listener
def stop_faults(environment: Environment, **_: Any) -> None:
    parsed = options(environment)
    if parsed.scenario == "stragglers":
        set_worker_faults(parsed.straggler_worker, coded_pb2.FaultConfig())
