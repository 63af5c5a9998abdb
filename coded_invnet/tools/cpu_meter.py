"""CPU accounting for the serving benchmark: CPU seconds of every service process and of the whole
machine from /proc, worker rows per model run from the services' metrics, and py-spy flame graphs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from coded_invnet.tools.launcher import System
from coded_invnet.tools.processes import ServiceProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROFILE_SECONDS = 8


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every core; idle and I/O wait excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def service_kind(name: str) -> str:
    if name.startswith("worker-"):
        return "data workers"
    return {"parity-worker": "parity path", "encoder": "parity path"}.get(name, name)


class CpuMeter:
    """CPU seconds spent by each service of a system, this process and the rest of the machine between
    `start()` and `stop()`, summed over every such interval."""

    def __init__(self, services: Mapping[str, ServiceProcess]) -> None:
        self._services = services
        self.spent: dict[str, float] = {}
        self._at: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {name: process_cpu_s(s.pid) for name, s in self._services.items()}
        return {**now, "load generator": time.process_time(), "machine": machine_busy_s()}

    def start(self) -> None:
        self._at = self._now()

    def stop(self) -> None:
        for name, value in self._now().items():
            self.spent[name] = self.spent.get(name, 0.0) + value - self._at[name]

    @contextmanager
    def measuring(self) -> Iterator[None]:
        self.start()
        try:
            yield
        finally:
            self.stop()

    def per_unit_ms(self, units: int) -> dict[str, float]:
        """CPU ms per unit (request or image): each kind of service, all services, the load generator,
        other processes."""
        kinds: dict[str, float] = {}
        for name in self._services:
            kinds[service_kind(name)] = kinds.get(service_kind(name), 0.0) + self.spent.get(name, 0.0)
        services = sum(kinds.values())
        generator = self.spent.get("load generator", 0.0)
        other = self.spent.get("machine", 0.0) - services - generator
        report = dict(sorted(kinds.items())) | {"all services": services, "load generator": generator}
        report["other processes"] = max(other, 0.0)
        return {name: round(seconds / max(units, 1) * 1e3, 4) for name, seconds in report.items()}


def metric_total(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def worker_rows_and_runs(system: System) -> tuple[float, float]:
    rows = sum(metric_total(w.metrics_port, "nv_inference_count_total") for w in system.workers)
    runs = sum(metric_total(w.metrics_port, "nv_inference_exec_count_total") for w in system.workers)
    return rows, runs


@contextmanager
def flame_graphs(system: System, out_prefix: Path | None, seconds: float) -> Iterator[None]:
    """py-spy flame graphs (SVG) of the frontend and data worker 0 while the body runs; nothing when
    ``out_prefix`` is None."""
    spies: list[subprocess.Popen[bytes]] = []
    if out_prefix is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out_prefix.parent.mkdir(parents=True, exist_ok=True)
        for service in (system.frontend, system.workers[0]):
            out = f"{out_prefix}-{service.name}.svg"
            command = [py_spy, "record", "--nonblocking", "--duration", str(int(seconds))]
            command += ["--output", out, "--pid", str(service.pid)]
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for spy in spies:
            spy.wait()
