"""Shared serving infrastructure: config, error mapping, health transitions, metrics, channels, logging,
and graceful SIGTERM shutdown of a real server process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_models import REPO_ROOT, batch, images, outputs, service_config, wait_serving

from coded_invnet.proto import coded_pb2_grpc
from coded_invnet.serving import errors
from coded_invnet.serving.channels import create_channel, create_sync_channel
from coded_invnet.serving.config import ENV_VARS, ServingConfig, load_config
from coded_invnet.serving.errors import ConfigError, InvalidInput, Overloaded
from coded_invnet.serving.lifecycle import ServiceHost, run_service
from coded_invnet.serving.metrics import ServingMetrics
from coded_invnet.serving.structured_logging import JsonFormatter
from coded_invnet.serving.tensors import decode_array
from services.worker.server import start as start_worker

IDENTITY: Callable[[bytes], bytes] = bytes


# --- config ---------------------------------------------------------------------------------------


def test_config_reads_flags_over_env_over_defaults() -> None:
    cfg = load_config(
        "worker", ["--port", "9000"], {"CODED_PORT": "7000", "CODED_K": "4", "CODED_ROLE": "parity"}
    )
    assert (cfg.port, cfg.k, cfg.role, cfg.metrics_port) == (9000, 4, "parity", 8002)
    assert cfg.model_path() == Path("models/mnist/worker.onnx")
    assert (
        load_config("encoder", [], {"CODED_MODE": "parm", "CODED_K": "4"}).model_path().name
        == "parm_encoder_k4.onnx"
    )
    assert load_config("frontend", [], {"CODED_WORKERS": "a:1, b:2"}).workers == ("a:1", "b:2")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CODED_K": "ten"}, "CODED_K='ten': not a valid int"),
        ({"CODED_K": "1"}, "CODED_K='1': must be >= 2"),
        ({"CODED_MODE": "raid"}, "CODED_MODE='raid': must be one of none, replication, parm, coded-invnet"),
        ({"CODED_PORT": "70000"}, "CODED_PORT='70000'"),
        (
            {"CODED_FAULT_FAILURE_PROBABILITY": "1.5"},
            "CODED_FAULT_FAILURE_PROBABILITY='1.5': must be in [0, 1]",
        ),
    ],
)
def test_config_fails_fast_naming_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("worker", [], environ)
    assert message in str(caught.value)


def test_env_vars_listed_per_service() -> None:
    assert {
        "CODED_PORT",
        "CODED_METRICS_PORT",
        "CODED_MODEL_DIR",
        "CODED_K",
        "CODED_MODE",
        "CODED_ROLE",
    } <= set(ENV_VARS["worker"])
    assert "CODED_ROLE" not in ENV_VARS["encoder"] and "CODED_MODEL_DIR" not in ENV_VARS["frontend"]
    assert all(name.startswith("CODED_") for names in ENV_VARS.values() for name in names)


def test_main_exits_2_with_the_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    async def never(cfg: ServingConfig) -> None:
        raise AssertionError("must not start")

    with pytest.raises(SystemExit) as caught:
        run_service("worker", never, ["--ort-threads", "-1"])
    assert caught.value.code == 2
    assert "--ort-threads='-1'" in capsys.readouterr().err


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="worker.onnx not found"):
        asyncio.run(start_worker(service_config("worker", tmp_path)))


# --- tensors --------------------------------------------------------------------------------------


def test_tensor_validation() -> None:
    data = np.arange(6, dtype="<f4").tobytes()
    assert decode_array("t", "FP32", [2, 3], data).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(InvalidInput, match="negative dimension"):
        decode_array("t", "FP32", [-2, -3], data)
    with pytest.raises(Overloaded, match="limit 16"):
        decode_array("t", "FP32", [2, 3], data, max_bytes=16)
    assert decode_array("t", "FP32", [0, 3], b"", allow_empty=True).shape == (0, 3)
    with pytest.raises(InvalidInput, match="Inf"):
        decode_array("t", "FP64", [1], np.array([np.inf]).tobytes())


# --- error mapping, health, channels --------------------------------------------------------------

RAISED: dict[str, tuple[Exception, grpc.StatusCode]] = {
    "invalid": (errors.InvalidInput("bad shape"), grpc.StatusCode.INVALID_ARGUMENT),
    "missing": (errors.NotFound("no model 'x'"), grpc.StatusCode.NOT_FOUND),
    "full": (errors.Overloaded("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    "down": (errors.Unavailable("worker down"), grpc.StatusCode.UNAVAILABLE),
    "late": (errors.DeadlineExceeded("too late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    "bug": (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL),
}


class ProbeService:
    """A generic /test.Svc service on a ServiceHost: raising, flaky and slow methods."""

    def __init__(self) -> None:
        self.calls = 0

    async def raise_named(self, request: bytes, context: Any) -> bytes:
        raise RAISED[request.decode()][0]

    async def stream_then_raise(self, request: bytes, context: Any) -> Any:
        yield b"first"
        raise RAISED[request.decode()][0]

    async def flaky(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        if self.calls < 3:
            raise errors.Unavailable("try again")
        return b"ok"

    async def slow(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(5)
        return b"late"

    def handler(self) -> grpc.GenericRpcHandler:
        unary = {"Raise": self.raise_named, "Flaky": self.flaky, "Slow": self.slow}
        methods = {
            name: grpc.unary_unary_rpc_method_handler(f, IDENTITY, IDENTITY) for name, f in unary.items()
        }
        methods["Stream"] = grpc.unary_stream_rpc_method_handler(self.stream_then_raise, IDENTITY, IDENTITY)
        return grpc.method_handlers_generic_handler("test.Svc", methods)


def test_errors_map_to_status_codes_and_health_flips_after_warm_up(caplog: pytest.LogCaptureFixture) -> None:
    warmed = threading.Event()

    async def scenario() -> None:
        cfg = service_config("worker", Path("."), metrics_port=0)
        host = ServiceHost(cfg, ["test.Svc"], ServingMetrics("test"))
        service = ProbeService()
        host.server.add_generic_rpc_handlers((service.handler(),))
        await host.start(lambda: asyncio.to_thread(lambda: warmed.wait(10) or None))
        channel = create_channel(f"127.0.0.1:{host.port}", timeout_s=0.5)
        try:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", "test.Svc"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            warmed.set()
            await wait_serving(channel, "test.Svc", timeout_s=5)

            for name, (error, code) in RAISED.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary("/test.Svc/Raise")(name.encode())
                assert caught.value.code() == code, name
                expected = "internal error" if code == grpc.StatusCode.INTERNAL else str(error)
                assert expected in (caught.value.details() or "")
                call = channel.unary_stream("/test.Svc/Stream")(name.encode())
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    assert [message async for message in call] == [b"first"]
                assert caught.value.code() == code, name
            assert "secret detail" in caplog.text  # INTERNAL: details in the log, not to the client

            # The channel's service config retries UNAVAILABLE and sets a default deadline.
            assert await channel.unary_unary("/test.Svc/Flaky")(b"") == b"ok"
            assert service.calls == 3
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.Svc/Slow")(b"")
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            blocking = create_sync_channel(f"127.0.0.1:{host.port}", timeout_s=0.3)
            with pytest.raises(grpc.RpcError) as sync_caught:
                await asyncio.to_thread(blocking.unary_unary("/test.Svc/Slow"), b"")
            assert sync_caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
            blocking.close()

            assert host.metrics_port
            with urllib.request.urlopen(f"http://127.0.0.1:{host.metrics_port}/metrics", timeout=5) as reply:
                assert b"# TYPE nv_inference_request_success_total counter" in reply.read()
        finally:
            await channel.close()
            await host.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())


def test_warm_up_failure_stays_not_serving() -> None:
    async def broken_warm_up() -> None:
        raise RuntimeError("model file corrupt")

    async def scenario() -> None:
        host = ServiceHost(service_config("worker", Path(".")), [], ServingMetrics("test"))
        await host.start(broken_warm_up)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            await asyncio.sleep(0.2)
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await host.stop()

    asyncio.run(scenario())


def test_worker_metrics_count_successes_and_failures(model_dir: Path) -> None:
    async def scenario() -> None:
        host = await start_worker(service_config("worker", model_dir, metrics_port=0))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            await wait_serving(channel)
            stub = coded_pb2_grpc.WorkerStub(channel)
            outputs(await stub.Infer(batch(0, 0, x=images(3)), timeout=5))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Infer(batch(0, 0, x=np.zeros((1, 2), np.float32)), timeout=5)
        with urllib.request.urlopen(f"http://127.0.0.1:{host.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        await host.stop()
        labels = '{model="worker.onnx",version="1"}'
        assert f"nv_inference_request_success_total{labels} 1.0" in text
        assert f"nv_inference_count_total{labels} 3.0" in text
        failures = (
            'nv_inference_request_failure_total{model="worker.onnx",reason="INVALID_ARGUMENT",version="1"}'
        )
        assert f"{failures} 1.0" in text
        assert "nv_inference_compute_infer_duration_us_total" in text

    asyncio.run(scenario())


def test_json_log_lines() -> None:
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "started %s", ("now",), None)
    record.port = 8001
    entry = json.loads(JsonFormatter("worker").format(record))
    assert (entry["service"], entry["level"], entry["msg"], entry["port"]) == (
        "worker",
        "INFO",
        "started now",
        8001,
    )


# --- SIGTERM --------------------------------------------------------------------------------------


def json_lines(text: bytes) -> list[dict[str, Any]]:
    """Our JSON log entries; gRPC's C core may interleave plain-text lines of its own."""
    return [json.loads(line) for line in text.splitlines() if line.startswith(b"{")]


def test_sigterm_drains_in_flight_requests_then_exits(model_dir: Path) -> None:
    async def scenario() -> None:
        env = {
            **os.environ,
            "CODED_HOST": "127.0.0.1",
            "CODED_PORT": "0",
            "CODED_METRICS_PORT": "-1",
            "CODED_MODEL_DIR": str(model_dir),
            "CODED_K": "2",
            "CODED_ORT_THREADS": "1",
            "CODED_FAULT_DELAY": "fixed",
            "CODED_FAULT_DELAY_MS": "600",
            "CODED_SHUTDOWN_GRACE_S": "5",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.worker.server",
            cwd=REPO_ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        logs: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(30):
                while not any(entry["msg"] == "started" for entry in logs):
                    logs.extend(json_lines(await process.stderr.readline()))
            port = next(entry["port"] for entry in logs if entry["msg"] == "started")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await wait_serving(channel)
                in_flight = asyncio.ensure_future(
                    coded_pb2_grpc.WorkerStub(channel).Infer(batch(1, 0, x=images(2)), timeout=10)
                )
                await asyncio.sleep(0.2)
                process.send_signal(signal.SIGTERM)
                assert outputs(await in_flight)["logits"].shape == (2, 10)
            assert await asyncio.wait_for(process.wait(), 10) == 0
            logs.extend(json_lines(await process.stderr.read()))
            assert [e["msg"] for e in logs if e["msg"] in ("signal received; shutting down", "stopped")] == [
                "signal received; shutting down",
                "stopped",
            ]
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    asyncio.run(scenario())


def test_taken_port_is_a_config_error(model_dir: Path) -> None:
    async def scenario() -> None:
        first = await start_worker(service_config("worker", model_dir))
        try:
            with pytest.raises(ConfigError, match=f"127.0.0.1:{first.port}: cannot bind"):
                await start_worker(service_config("worker", model_dir, port=first.port))
        finally:
            await first.stop()

    asyncio.run(scenario())
