"""Service processes of a local system: start, signal, restart, wait until SERVING (the launcher's
parts that deal with one process at a time)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coded_invnet.rpc.channels import TlsOptions, create_sync_channel

HOST = "127.0.0.1"
SESSIONS = ("per-service", "shared")  # process sessions: see coded_invnet.tools.launcher

_HANDED_OUT: set[int] = set()  # ports given to services started from this process


class LaunchError(RuntimeError):
    """A service did not start or did not become healthy in time."""


@dataclass
class ServiceProcess:
    """One running service: its name, ports, process and log file."""

    name: str
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]
    tls: TlsOptions | None = None  # how the launcher reaches it (health checks)
    session: str = SESSIONS[0]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies without any clean-up (a crashed node)."""
        self._signal(signal.SIGKILL)
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its connections open (a straggler)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def terminate(self, grace_s: float) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL after grace_s."""
        if not self.alive():
            return
        self._signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        """Start the same command again (same ports, log appended) after the process died or was killed."""
        if self.alive():
            self.kill()
        self.process = spawn(self.command, self.log_path, self.session, append=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.process.send_signal(sig)


def free_port() -> int:
    """A port free right now on loopback and not handed out before by this process: the OS may offer
    a port again once its probe socket is closed, and one process launching several systems asks for
    a hundred ports (two services on one port happened about once in five such runs)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def spawn(command: list[str], log_path: Path, session: str, append: bool = False) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, or in its own process group of the launcher's session
    (either way out of the terminal's foreground group: Ctrl-C reaches only the launcher)."""
    own_session = session == "per-service"
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
            process_group=None if own_session else 0,
        )


def wait_serving(services: list[ServiceProcess], timeout_s: float) -> None:
    """Block until every service answers SERVING on grpc.health.v1, or raise LaunchError."""
    deadline = time.monotonic() + timeout_s
    for service in services:
        with create_sync_channel(service.target, tls=service.tls) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if not service.alive():
                    raise LaunchError(
                        f"{service.name} exited with code {service.process.returncode}; its log "
                        f"({service.log_path}) ends:\n{service.log_tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LaunchError(
                        f"{service.name} was not SERVING within {timeout_s:.0f} s; its log ends:\n"
                        f"{service.log_tail()}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=min(1.0, left))
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(0.1)
