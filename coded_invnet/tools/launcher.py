"""Start the whole serving system as local processes on loopback ports, and stop it cleanly.

Command line (prints the ports, runs until Ctrl-C or SIGTERM)::

    python -m coded_invnet.tools.launcher --model-dir models/mnist --mode coded-invnet --k 10

Python API (used by the tests, the demo, the chaos runner and the benchmarks)::

    from coded_invnet.tools.launcher import launch

    with launch("models/mnist", mode="coded-invnet", k=10) as system:
        system.frontend.target          # "127.0.0.1:PORT", for the client SDK or tritonclient
        system.workers[3].kill()        # SIGKILL data worker 3 (pid: system.workers[3].pid)
        system.workers[1].pause()       # SIGSTOP: a straggler; .resume() sends SIGCONT
        system.parity_worker, system.encoder, system.decoder  # None in modes "none"/"replication"
        system.services                 # every ServiceProcess by name: "frontend", "worker-0", ...
        system.restart("worker-3")      # start it again on its old ports, wait until SERVING
    # on exit: SIGTERM to every process, SIGKILL to those still alive after `stop_grace_s`

`launch` starts k data workers, and for the coded modes a parity worker, an encoder and a decoder, then
the frontend pointed at them; each gets free loopback ports (gRPC and Prometheus) and a log file under
`log_dir` (a temporary folder unless given). It returns once every process answers SERVING on the
grpc.health.v1 service, or raises `LaunchError` with the tail of the failing process's log.
Extra settings go to every process (`settings`) or to one service (`frontend_settings`,
`worker_settings`) as config field names, e.g. ``frontend_settings={"straggler_timeout_ms": 30}``.
The workers' fault injection API (SetFaults/GetFaults) is off unless `fault_api=True` (`--fault-api`).
`session` is the layout the scheduler sees: "per-service" (default) starts each service in its own
process session, so that Ctrl-C in the launcher's terminal reaches only the launcher, which stops the
services in order; with the kernel's autogroup scheduling each session is also its own scheduler group,
so under contention each service gets a group's fair share. "shared" keeps every service in the
launcher's session (in a process group of its own, so Ctrl-C still reaches only the launcher): one
scheduler group for the whole system and its local load generator, as one cgroup or one pod's share
would be.
Nice levels order the services where they share a scheduler group (the "shared" session, or a kernel
without autogroup; a service alone in its session is not affected): the frontend first, then the data
workers (`data_niceness`), then the parity path (`parity_niceness`: parity worker and encoder, the
insurance). The frontend is the one stage every query passes through several times (request, group,
results, answer); among a dozen runnable workers as an equal it waited for the CPU at each of those
steps, groups left with a few rows each, and every worker paid its per-batch cost on batches of 5 rows
instead of 20 (docs/RESULTS.md, serving cost).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from coded_invnet.coding import CODING_MODES
from coded_invnet.rpc.channels import TlsOptions
from coded_invnet.serving.config import DECODABLE_MODES, ServingConfig
from coded_invnet.tools.certificates import Certificates, make_certificates
from coded_invnet.tools.processes import (
    HOST,
    SESSIONS,
    LaunchError,
    ServiceProcess,
    free_port,
    spawn,
    wait_serving,
)

Settings = Mapping[str, object]


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

    def __post_init__(self) -> None:
        every = [*self.workers, self.parity_worker, self.encoder, self.decoder, self.frontend]
        self.services = {s.name: s for s in every if s is not None}

    def restart(self, name: str, ready_timeout_s: float = 60.0) -> None:
        """Restart service `name` (e.g. a killed "worker-3") on its old ports; return once it is SERVING."""
        service = self.services[name]
        service.restart()
        wait_serving([service], ready_timeout_s)


def _flags(settings: Settings) -> list[str]:
    known = set(ServingConfig.__dataclass_fields__)
    flags: list[str] = []
    for name, value in settings.items():
        if name not in known:
            raise LaunchError(f"unknown setting {name!r}; see coded_invnet.serving.config")
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        flags += ["--" + name.replace("_", "-"), text]
    return flags


def _start(
    name: str,
    service: str,
    settings: Settings,
    log_dir: Path,
    niceness: int = 0,
    tls: TlsOptions | None = None,
    session: str = SESSIONS[0],
) -> ServiceProcess:
    port, metrics_port = free_port(), free_port()
    all_settings = {"host": HOST, "port": port, "metrics_port": metrics_port, **settings}
    log_path = log_dir / f"{name}.log"
    command = [sys.executable, "-m", f"services.{service}.server", *_flags(all_settings)]
    if niceness:
        command = ["nice", "-n", str(niceness), *command]  # nice execs: the pid stays the service's
    process = spawn(command, log_path, session)
    return ServiceProcess(name, port, metrics_port, process, log_path, command, tls, session)


@contextmanager
def launch(
    model_dir: str | os.PathLike[str] = "models/mnist",
    mode: str = "coded-invnet",
    k: int = 10,
    *,
    settings: Settings | None = None,
    frontend_settings: Settings | None = None,
    worker_settings: Settings | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    ready_timeout_s: float = 120.0,
    stop_grace_s: float = 5.0,
    data_niceness: int = 10,
    parity_niceness: int = 15,
    fault_api: bool = False,
    tls: bool = False,
    session: str = SESSIONS[0],
) -> Iterator[System]:
    """Start the system, yield it once every service is SERVING, stop everything on exit.
    `fault_api`: the workers answer SetFaults/GetFaults (for benchmarks and tests that inject faults).
    `tls`: every port serves TLS with throwaway certificates (deleted on exit); the backends accept only
    the frontend's client certificate; clients of the frontend use `system.client_tls`.
    `session`: "per-service" or "shared" (see the module doc)."""
    if session not in SESSIONS:
        raise LaunchError(f"session {session!r}: must be one of {', '.join(SESSIONS)}")
    with ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="coded-invnet-"))
        logs = Path(log_dir)
        logs.mkdir(parents=True, exist_ok=True)
        certificates = None
        if tls:
            certificates = make_certificates(
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coded-invnet-tls-")))
            )
        backend_tls, frontend_tls, probe_tls = _tls_settings(certificates)
        common: dict[str, object] = {"mode": mode, "k": k, **(settings or {})}
        # one onnxruntime thread per model process: many processes share few cores
        model_common = {"model_dir": str(model_dir), "ort_threads": 1, **backend_tls, **common}
        started: list[ServiceProcess] = []

        @stack.callback
        def stop_all() -> None:
            for service in reversed(started):
                service.terminate(stop_grace_s)

        def start(name: str, service: str, extra: Settings, niceness: int = 0) -> ServiceProcess:
            started.append(_start(name, service, extra, logs, niceness, probe_tls, session))
            return started[-1]

        worker_extra = {**model_common, "fault_api": "on" if fault_api else "off", **(worker_settings or {})}
        data = {**worker_extra, "role": "data"}
        workers = [start(f"worker-{i}", "worker", data, data_niceness) for i in range(k)]
        parity = encoder = decoder = None
        if mode in DECODABLE_MODES:
            parity = start("parity-worker", "worker", {**worker_extra, "role": "parity"}, parity_niceness)
            encoder = start("encoder", "encoder", model_common, parity_niceness)
            decoder = start("decoder", "decoder", model_common)
        backends = {
            "workers": [w.target for w in workers],
            **({"parity_worker": parity.target} if parity else {}),
            **({"encoder": encoder.target} if encoder else {}),
            **({"decoder": decoder.target} if decoder else {}),
        }
        # Backends first: the frontend's warm-up asks worker 0 to describe its model, which a worker
        # still loading answers with an empty description.
        wait_serving(started, ready_timeout_s)
        frontend = start(
            "frontend", "frontend", {**frontend_tls, **common, **backends, **(frontend_settings or {})}
        )
        wait_serving([frontend], ready_timeout_s)
        client_tls = TlsOptions(certificates.ca) if certificates else None
        yield System(frontend, workers, parity, encoder, decoder, logs, mode, k, client_tls)


def _tls_settings(certificates: Certificates | None) -> tuple[Settings, Settings, TlsOptions | None]:
    """The backends' settings, the frontend's, and the launcher's own client TLS (its health checks).
    Every port serves the one server certificate; the backends take calls only from holders of the
    client certificate (the frontend and the launcher)."""
    if certificates is None:
        return {}, {}, None
    server = {
        "tls_cert": certificates.server_cert,
        "tls_key": certificates.server_key,
        "tls_ca": certificates.ca,
    }
    client = {"tls_client_cert": certificates.client_cert, "tls_client_key": certificates.client_key}
    probe = TlsOptions(certificates.ca, certificates.client_cert, certificates.client_key)
    return {**server, "tls_require_client_cert": "on"}, {**server, **client}, probe


def _interrupt_once(*_: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="models/mnist")
    parser.add_argument("--mode", default="coded-invnet", choices=CODING_MODES)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--log-dir", default="results/logs", help="one log file per service")
    parser.add_argument(
        "--fault-api", action="store_true", help="let callers inject faults into the workers (SetFaults)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every port (throwaway certificates; mutual TLS to backends)",
    )
    parser.add_argument(
        "--session",
        default=SESSIONS[0],
        choices=SESSIONS,
        help="per-service: a process session (scheduler group) per service; shared: the launcher's",
    )
    args = parser.parse_args(argv)
    # run the clean-up of `launch` on SIGTERM, and on Ctrl-C even where SIGINT came in ignored
    # (background jobs of a non-interactive shell); a second Ctrl-C must not cut the clean-up short
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        with launch(
            args.model_dir,
            args.mode,
            args.k,
            log_dir=args.log_dir,
            fault_api=args.fault_api,
            tls=args.tls,
            session=args.session,
        ) as system:
            for name, service in system.services.items():
                print(
                    f"{name:14s} {service.target:22s} metrics :{service.metrics_port:<6d} pid {service.pid}"
                )
            if system.client_tls is not None:
                print(f"TLS: clients verify the frontend with the CA {system.client_tls.ca_file}")
            print(
                f"all SERVING; clients: {system.frontend.target}; logs: {system.log_dir}; Ctrl-C stops",
                flush=True,
            )
            while True:  # short sleeps, not signal.pause(): a signal just before pause() would be missed
                time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopped")


if __name__ == "__main__":
    main()
