"""``metasweep ui`` stops cleanly: SIGTERM or SIGINT to its PID ends MLflow's server and every
worker it forked, and frees the port (issue 11, item 2)."""

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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_ui_by_pid_leaves_no_server_behind(
    sig: signal.Signals, free_port, wait_for_port, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the store exists: ui never creates one
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "ui", "--port", str(port), "--tracking-uri", uri],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, ui, "metasweep ui", timeout=120)
    children = psutil.Process(ui.pid).children(recursive=True)
    assert children, "metasweep ui started no server"

    ui.send_signal(sig)
    ui.wait(timeout=60)
    deadline = time.time() + 30
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children) or not port_free(port):
        assert time.time() < deadline, [c.cmdline() for c in children if c.is_running()]
        time.sleep(0.5)
    assert "Traceback" not in (ui.stderr.read() if ui.stderr else "")
