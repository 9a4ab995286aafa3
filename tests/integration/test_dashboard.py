"""``metasweep dashboard``: a sweep's Optuna study in a real Optuna Dashboard on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest

from tests.refusals import assert_refused

pytestmark = [pytest.mark.integration, pytest.mark.cli]


def test_the_dashboard_serves_the_sweeps_study_on_loopback_and_stops(free_port, wait_for_port) -> None:
    folder = Path("runs/sweeps/dash")
    folder.mkdir(parents=True)
    url = f"sqlite:///{(folder / 'optuna.db').absolute()}"  # where a sweep keeps it
    optuna.create_study(study_name="other", storage=url)
    study = optuna.create_study(study_name="dash", storage=url)
    study.optimize(
        lambda t: (t.suggest_float("train.inner_lr", 0.001, 0.1, log=True) - 0.01) ** 2, n_trials=3
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "dashboard", "dash", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(port, server, "Optuna Dashboard", 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as answer:
            studies = {s["study_name"]: s for s in json.loads(answer.read())["study_summaries"]}
        assert set(studies) == {"other", "dash"}
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{studies['dash']['study_id']}", timeout=30
        ) as answer:
            trials = json.loads(answer.read())["trials"]
        assert [t["number"] for t in trials] == [0, 1, 2]
        listening = {
            c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port
        }
        assert listening == {"127.0.0.1"}
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr[-2000:]
    opened = f"http://127.0.0.1:{port}/dashboard/studies/{studies['dash']['study_id']}"
    assert f"Optuna Dashboard for sweep dash at {opened}" in stderr and "Optuna Dashboard stopped" in stderr


def test_a_sweep_without_a_kept_study_is_refused_and_nothing_is_created(cli) -> None:
    result = cli("dashboard", "nope", "--port", "1")
    assert_refused(result, "no Optuna study of sweep 'nope' in sqlite:///", "--study-storage")
    assert not Path("runs").exists()
    bad_name = cli("dashboard", "../x")
    assert_refused(bad_name, "is not a valid name")
