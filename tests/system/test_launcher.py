"""The local launcher: processes on free ports, all SERVING, restartable, all gone after exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import random_images

from coded_invnet.client import Client
from coded_invnet.tools.launcher import LaunchError, launch


def test_launch_serves_restarts_and_stops_everything(model_dir: Path, tmp_path: Path) -> None:
    with launch(model_dir, "none", 2, log_dir=tmp_path, settings={"shutdown_grace_s": 1}) as system:
        assert set(system.services) == {"frontend", "worker-0", "worker-1"}
        assert system.parity_worker is system.encoder is system.decoder is None
        processes = list(system.services.values())
        ports = {p.port for p in processes} | {p.metrics_port for p in processes}
        assert len(ports) == 2 * len(processes)
        assert all(p.alive() for p in processes)
        system.workers[1].kill()
        assert not system.workers[1].alive()
        system.restart("worker-1")
        assert system.workers[1].alive()
        with Client(system.frontend.target, timeout_s=10) as client:
            assert len(client.predict_batch(random_images(4))) == 4
        assert (tmp_path / "frontend.log").stat().st_size > 0
    assert not any(p.alive() for p in processes)
    assert all(p.process.returncode == 0 for p in processes), "SIGTERM should stop every service cleanly"


def test_launch_reports_a_service_that_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="worker-0 exited"), launch(tmp_path / "no-models", "none", 2):
        pass


@pytest.mark.parametrize("flags", [[], ["--tls", "--fault-api"]], ids=["plaintext", "tls"])
def test_command_line_runs_until_ctrl_c_and_leaves_nothing_behind(
    model_dir: Path, tmp_path: Path, flags: list[str]
) -> None:
    command = [
        sys.executable,
        "-m",
        "coded_invnet.tools.launcher",
        "--model-dir",
        str(model_dir),
        "--mode",
        "none",
    ]
    launcher = subprocess.Popen(
        [*command, "--k", "2", "--log-dir", str(tmp_path), *flags], stdout=subprocess.PIPE, text=True
    )
    assert launcher.stdout is not None
    try:
        lines = []
        for line in launcher.stdout:
            lines.append(line)
            if line.startswith("all SERVING"):
                break
        pids = [int(line.rsplit("pid", 1)[1]) for line in lines if " pid " in line]
        assert len(pids) == 3, lines
        ca_files = [Path(line.split()[-1]) for line in lines if line.startswith("TLS:")]
        assert len(ca_files) == ("--tls" in flags), lines
        assert all(ca.is_file() for ca in ca_files)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(30) == 0
    finally:
        if launcher.poll() is None:  # the test failed: still clean up
            launcher.terminate()
            launcher.wait(30)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(ca.parent.exists() for ca in ca_files)  # the throwaway certificates are gone


@pytest.mark.parametrize("session", ["per-service", "shared"])
def test_session_layout_decides_the_scheduler_group(model_dir: Path, tmp_path: Path, session: str) -> None:
    """per-service: a session per service (with autogroup, a scheduler group each); shared: the
    launcher's session, each service still in a process group of its own (Ctrl-C reaches only the
    launcher); data workers run below the frontend's priority."""
    with launch(model_dir, "none", 2, log_dir=tmp_path, session=session) as system:
        frontend, worker = system.frontend.pid, system.workers[0].pid
        sessions = {os.getsid(p.pid) for p in system.services.values()}
        if session == "shared":
            assert sessions == {os.getsid(0)}
        else:
            assert len(sessions) == len(system.services) and os.getsid(0) not in sessions
        assert all(os.getpgid(p.pid) == p.pid for p in system.services.values())
        assert os.getpriority(os.PRIO_PROCESS, worker) > os.getpriority(os.PRIO_PROCESS, frontend)


def test_launch_refuses_an_unknown_session(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="session"), launch(tmp_path, "none", 2, session="one"):
        pass
