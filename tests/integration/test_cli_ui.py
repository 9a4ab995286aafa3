"""``metasweep ui`` stops cleanly: SIGTERM or SIGINT to its PID ends MLflow's server and every
worker it forked, and frees the port (issue 11, item 2); a server that dies by itself ends
``ui`` with exit code 2 and a message saying so."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_ui(folder: Path, port: int, wait_for_port) -> tuple[subprocess.Popen[str], int]:
    """``metasweep ui`` on ``port`` for a store in ``folder``, once it listens; its output (and
    its server's) goes to ``folder/ui.log``: a pipe that nobody reads fills up and blocks them."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the store exists: ui never creates one
    with (folder / "ui.log").open("w") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "metasweep", "ui", "--port", str(port), "--tracking-uri", uri],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    wait_for_port(port, ui, "metasweep ui", timeout=120)
    return ui, port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_ui_by_pid_leaves_no_server_behind(
    sig: signal.Signals, free_port, wait_for_port, tmp_path: Path
) -> None:
    ui, port = start_ui(tmp_path, free_port(), wait_for_port)
    children = psutil.Process(ui.pid).children(recursive=True)
    assert children, "metasweep ui started no server"

    ui.send_signal(sig)
    ui.wait(timeout=60)
    deadline = time.time() + 30
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children) or not port_free(port):
        assert time.time() < deadline, [c.cmdline() for c in children if c.is_running()]
        time.sleep(0.5)
    assert "Traceback" not in (tmp_path / "ui.log").read_text()
    assert ui.returncode == 0  # stopped as asked


def test_a_ui_whose_server_dies_says_so_and_exits_2(free_port, wait_for_port, tmp_path: Path) -> None:
    ui, port = start_ui(tmp_path, free_port(), wait_for_port)
    server = psutil.Process(ui.pid).children()[0]  # MLflow's own process; its workers stay
    server.kill()
    ui.wait(timeout=60)
    stderr = (tmp_path / "ui.log").read_text()
    assert ui.returncode == 2, stderr[-2000:]
    assert "metasweep: error: the MLflow UI stopped by itself with exit code -9" in stderr
    assert "Traceback" not in stderr
    deadline = time.time() + 30
    while not port_free(port):  # its orphaned workers went with the group
        assert time.time() < deadline, f"port {port} still taken"
        time.sleep(0.5)
