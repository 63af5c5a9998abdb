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

    with launch("models/mnist", k=4, pool_size=10, frontends=2, coders=2) as system:
        system.add_worker()             # a new pool worker, SERVING, then listed for the frontends
        system.remove_worker("worker-2")  # unlisted, one discovery interval, then SIGTERM
        system.frontends[1].kill()      # the frontends share the pool and know nothing of each other

`launch` starts k data workers, and for the coded modes a parity worker, an encoder and a decoder, then
the frontend pointed at them (the fixed layout). With `pool_size` N (at least k + r) it starts N pool
workers instead (role "pool", no parity worker): their targets go to a file (`workers_file`) that the
frontends read again every `POOL_DISCOVERY_S`, so `add_worker` and `remove_worker` change the pool while
it serves. `coders` E > 1 starts E encoders and E decoders, listed in files alike; `frontends` F starts F
independent frontends on the same backends. Each service gets free loopback ports (gRPC and Prometheus)
and a log file under `log_dir` (a temporary folder unless given). It returns once every process
answers SERVING on the grpc.health.v1 service, or raises `LaunchError` with the tail of the failing
process's log.
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
from coded_invnet.tools.system import POOL_DISCOVERY_S, System
from services.frontend.discovery import FILE_SCHEME, write_targets

Settings = Mapping[str, object]


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
    pool_size: int | None = None,
    frontends: int = 1,
    coders: int = 1,
    parities: int = 1,
) -> Iterator[System]:
    """Start the system, yield it once every service is SERVING, stop everything on exit.
    `pool_size`: N pool workers (targets file, run-time changes) instead of the fixed layout;
    `frontends`: independent frontends on the same backends; `coders`: encoders and decoders each.
    `parities`: r parity batches per group (r > 1: coded-invnet in a pool, `pool_size` k + r unless given).
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
        coded = mode in DECODABLE_MODES
        if parities > 1 and pool_size is None:
            pool_size = k + parities  # one parity worker is all the fixed layout has
        code = {"parities": parities} if coded else {}  # the encoder, decoder and frontend know r
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
        r = parities * coded
        if pool_size is not None and pool_size < k + r:
            raise LaunchError(f"pool_size {pool_size}: a group needs k + r = {k + r} workers")
        pool = {**worker_extra, "role": "pool"}

        def start_worker(name: str) -> ServiceProcess:
            return start(name, "worker", pool, data_niceness)

        data = {**worker_extra, "role": "data"}
        if pool_size is None:
            workers = [start(f"worker-{i}", "worker", data, data_niceness) for i in range(k)]
        else:
            workers = [start_worker(f"worker-{i}") for i in range(pool_size)]
        parity = encoder = decoder = None
        encoders: list[ServiceProcess] = []
        decoders: list[ServiceProcess] = []
        if coded:
            if pool_size is None:
                parity = start("parity-worker", "worker", {**worker_extra, "role": "parity"}, parity_niceness)
            for i in range(coders):
                suffix = f"-{i}" if i else ""
                encoders.append(
                    start("encoder" + suffix, "encoder", {**model_common, **code}, parity_niceness)
                )
                decoders.append(start("decoder" + suffix, "decoder", {**model_common, **code}))
            encoder, decoder = encoders[0], decoders[0]
        backends: dict[str, object] = {
            "workers": _targets(logs / "workers.txt", workers, pool_size is not None),
            **({"parity_worker": parity.target} if parity else {}),
        }
        if coded:
            backends["encoder"] = _targets(logs / "encoders.txt", encoders, coders > 1)
            backends["decoder"] = _targets(logs / "decoders.txt", decoders, coders > 1)
        if pool_size is not None or coders > 1:
            backends["discovery_interval_s"] = POOL_DISCOVERY_S
        # Backends first: the frontend's warm-up asks a worker to describe its model, which a worker
        # still loading answers with an empty description.
        wait_serving(started, ready_timeout_s)
        front = {**frontend_tls, **common, **code, **backends, **(frontend_settings or {})}
        every_frontend = [
            start("frontend" + (f"-{i}" if i else ""), "frontend", front) for i in range(frontends)
        ]
        wait_serving(every_frontend, ready_timeout_s)
        client_tls = TlsOptions(certificates.ca) if certificates else None
        yield System(
            every_frontend[0], workers, parity, encoder, decoder, logs, mode, k, client_tls,
            frontends=every_frontend, coders=[*encoders, *decoders],
            workers_file=logs / "workers.txt" if pool_size is not None else None,
            start_worker=start_worker if pool_size is not None else None, ready_timeout_s=ready_timeout_s,
        )  # fmt: skip


def _targets(path: Path, services: list[ServiceProcess], listed: bool) -> str | list[str]:
    """The services' addresses, or (listed) a file of them the frontends read again."""
    if not listed:
        return [s.target for s in services]
    write_targets(path, [s.target for s in services])
    return FILE_SCHEME + str(path.resolve())


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
    parser.add_argument(
        "--pool-size", type=int, help="N pool workers (>= k + r) instead of k + 1 fixed slots"
    )
    parser.add_argument("--frontends", type=int, default=1, help="independent frontends sharing the backends")
    parser.add_argument("--coders", type=int, default=1, help="encoders and decoders (coded modes), each")
    parser.add_argument(
        "--parities", type=int, default=1, help="r parity batches per group (r > 1: coded-invnet, a pool)"
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
            pool_size=args.pool_size,
            frontends=args.frontends,
            coders=args.coders,
            parities=args.parities,
        ) as system:
            for name, service in system.services.items():
                print(
                    f"{name:14s} {service.target:22s} metrics :{service.metrics_port:<6d} pid {service.pid}"
                )
            if system.workers_file is not None:
                every = f"the frontends re-read it every {POOL_DISCOVERY_S:g} s"
                print(f"pool: {system.workers_file} lists the workers ({every})")
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
