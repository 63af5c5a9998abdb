"""The running services of one `launcher.launch`: the handles tests and tools use (kill, restart, grow
and shrink the worker pool)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coded_invnet.rpc.channels import TlsOptions
from coded_invnet.tools.processes import LaunchError, ServiceProcess, wait_serving
from services.frontend.discovery import write_targets

POOL_DISCOVERY_S = 1.0  # how often the frontends read the launcher's targets files


@dataclass
class System:
    """The running services of one `launch`."""

    frontend: ServiceProcess
    workers: list[ServiceProcess]
    parity_worker: ServiceProcess | None
    encoder: ServiceProcess | None
    decoder: ServiceProcess | None
    log_dir: Path
    mode: str
    k: int
    client_tls: TlsOptions | None = None  # for clients of the frontend: None when the system is plaintext
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    frontends: list[ServiceProcess] = field(default_factory=list)  # frontend first
    coders: list[ServiceProcess] = field(default_factory=list)  # every encoder and decoder
    workers_file: Path | None = None  # the pool's targets (pool_size set)
    start_worker: Callable[[str], ServiceProcess] | None = None
    ready_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        every = [*self.workers, self.parity_worker, *self.coders, self.encoder, self.decoder]
        every += [self.frontend, *self.frontends]
        self.services = {s.name: s for s in every if s is not None}
        self.frontends = self.frontends or [self.frontend]

    def restart(self, name: str, ready_timeout_s: float = 60.0) -> None:
        """Restart service `name` (e.g. a killed "worker-3") on its old ports; return once it is SERVING."""
        service = self.services[name]
        service.restart()
        wait_serving([service], ready_timeout_s)

    def add_worker(self) -> ServiceProcess:
        """Start one more pool worker; list it for the frontends once it is SERVING."""
        if self.start_worker is None:
            raise LaunchError("add_worker needs a pool (launch(..., pool_size=N))")
        number = 1 + max(int(name.rpartition("-")[2]) for name in self.services if name.startswith("worker-"))
        worker = self.start_worker(f"worker-{number}")
        wait_serving([worker], self.ready_timeout_s)
        self.workers.append(worker)
        self.services[worker.name] = worker
        self._list_workers()
        return worker

    def remove_worker(self, name: str, grace_s: float = 5.0) -> None:
        """Take pool worker `name` out as a scale-down does: unlist it, give the frontends one discovery
        interval to see that, then SIGTERM (it drains its in-flight batches within `grace_s`)."""
        worker = self.services[name]
        self.workers.remove(worker)
        self._list_workers()
        time.sleep(POOL_DISCOVERY_S)
        worker.terminate(grace_s)

    def _list_workers(self) -> None:
        if self.workers_file is not None:
            write_targets(self.workers_file, [w.target for w in self.workers])
