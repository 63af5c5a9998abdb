"""Prometheus metrics with Triton's names (nv_inference_*) plus coded_decode_*.

Durations follow Triton: cumulative microsecond counters (divide by the request count for a mean);
the decode latency is also a histogram for percentiles. prometheus_client exposes counters with the
usual `_total` suffix (e.g. `nv_inference_request_success_total`). Each instance owns its registry,
so several services can live in one process (tests) without clashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

MODEL_LABELS = ("model", "version")
DECODE_BUCKETS_US = (50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000)


@dataclass(frozen=True)
class RequestTiming:
    rows: int  # queries in the batch
    request_us: float
    queue_us: float
    compute_us: float


class ServingMetrics:
    def __init__(self, model: str, version: str = "1", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.labels = (model, version)
        self._http_server: WSGIServer | None = None

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, MODEL_LABELS + extra, registry=self.registry)

        self.request_success = counter("nv_inference_request_success", "Successful inference requests")
        self.request_failure = counter("nv_inference_request_failure", "Failed requests", ("reason",))
        self.inference_count = counter("nv_inference_count", "Inferences performed (one per query)")
        self.exec_count = counter("nv_inference_exec_count", "Model executions (one per batch)")
        self.request_duration = counter("nv_inference_request_duration_us", "Cumulative request time, us")
        self.queue_duration = counter("nv_inference_queue_duration_us", "Cumulative queue time, us")
        self.compute_duration = counter("nv_inference_compute_infer_duration_us", "Cumulative compute, us")
        self.decode_total = Counter(
            "coded_decode", "Reconstructed (decoded) batches", ("mode",), registry=self.registry
        )
        self.parity_paths = Counter(
            "coded_parity_path",
            "Coding groups by whether their parity path ran (started) or was not needed (skipped)",
            ("mode", "outcome"),
            registry=self.registry,
        )
        self.backend_batches = Counter(
            "coded_backend_batches",
            "Batches the frontend sent, by backend kind (worker, encoder, decoder) and address",
            ("backend", "address"),
            registry=self.registry,
        )
        self.decode_duration = Histogram(
            "coded_decode_duration_us", "Decode latency, us", ("mode",), buckets=DECODE_BUCKETS_US,
            registry=self.registry,
        )  # fmt: skip

        # the labelled series, looked up once: `labels()` takes a lock and hashes its values on every call,
        # six times per request or batch otherwise
        self._success = self.request_success.labels(*self.labels)
        self._inferences = self.inference_count.labels(*self.labels)
        self._executions = self.exec_count.labels(*self.labels)
        self._request_us = self.request_duration.labels(*self.labels)
        self._queue_us = self.queue_duration.labels(*self.labels)
        self._compute_us = self.compute_duration.labels(*self.labels)

    def record_success(self, timing: RequestTiming) -> None:
        self._success.inc()
        self._inferences.inc(timing.rows)
        self._executions.inc()
        self._request_us.inc(timing.request_us)
        self._queue_us.inc(timing.queue_us)
        self._compute_us.inc(timing.compute_us)

    def record_failure(self, reason: str, request_us: float) -> None:
        self.request_failure.labels(*self.labels, reason).inc()
        self._request_us.inc(request_us)

    def record_decode(self, mode: str, duration_us: float) -> None:
        self.decode_total.labels(mode).inc()
        self.decode_duration.labels(mode).observe(duration_us)

    def record_backend_batch(self, backend: str, address: str) -> None:
        self.backend_batches.labels(backend, address).inc()

    def record_parity_path(self, mode: str, started: bool) -> None:
        self.parity_paths.labels(mode, "started" if started else "skipped").inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port (port 0: any free)."""
        self._http_server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http_server.server_port)

    def close(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
