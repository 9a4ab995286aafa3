"""The registry path against a real ``mlflow server`` on 127.0.0.1 (SQLite backend store,
artifacts served by the server), then the pulled model loaded with no server at all."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.refusals import assert_refused

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP = """
name: served
algorithm: maml
model: {name: mlp, hidden: [20, 20]}
data: {dataset: sinusoid, shots: 5, queries: 5}
train: {iterations: 60, meta_batch_size: 5, eval_every: 30}
eval: {inner_steps: 3, val_tasks: 20, test_tasks: 30, batch_size: 10}
search:
  space:
    train.inner_lr: {type: loguniform, low: 0.005, high: 0.05}
  num_samples: 2
  max_concurrent: 2
  scheduler: fifo
tracking: {experiment: served, registered_model: served-sine}
"""


@pytest.fixture
def mlflow_server(free_port, wait_for_port, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # As cluster/local/start-mlflow.sh runs it: without the GenAI job runner, which would
        # leave its queue's files in /dev/shm.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    wait_for_port(port, server, "mlflow server", timeout=90)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


def test_sweep_registers_on_a_tracking_server_and_pulls_offline(
    run_cli, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mlflow.set_*_uri below also export MLFLOW_*_URI to later subprocesses; scope them to this test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    Path("sweep.yaml").write_text(SWEEP)
    result = run_cli("sweep", "sweep.yaml", "--set", f"tracking.uri={mlflow_server}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered served-sine v1 as @champion" in result.stderr
    assert not Path("mlflow.db").exists(), "nothing may be written to the local default store"

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the sweep and its two trials
    assert client.get_model_version_by_alias("served-sine", "champion").version in ("1", 1)

    pulled = run_cli("models", "pull", "served-sine", "--out", "model", "--tracking-uri", mlflow_server)
    assert pulled.returncode == 0, pulled.stderr
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    try:
        remote = mlflow.pyfunc.load_model("models:/served-sine@champion")
    finally:  # the process's MLflow would keep naming this server, gone after the test
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    local = mlflow.pyfunc.load_model("model")
    x = np.linspace(-5, 5, 8, dtype=np.float32).reshape(-1, 1)
    batch = {"support_x": x[:5], "support_y": np.sin(x[:5]), "query_x": x[5:]}
    np.testing.assert_array_equal(remote.predict(batch), local.predict(batch))


def test_unreachable_tracking_server_fails_before_any_trial(free_port, run_cli) -> None:
    Path("sweep.yaml").write_text(SWEEP)
    started = time.time()
    result = run_cli(
        "sweep", "sweep.yaml", "--set", f"tracking.uri=http://127.0.0.1:{free_port()}", timeout=300
    )
    assert_refused(result, "cannot reach the MLflow tracking server")
    assert not Path("runs/sweeps/served").exists()
    assert time.time() - started < 60, "an unreachable server must fail fast, not after retries"


def test_metasweep_ui_serves_the_store_on_loopback(free_port, wait_for_port, tmp_path: Path) -> None:
    import urllib.request

    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'ui.db'}").search_experiments()  # ui never creates a store
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "ui", "--port", str(port),
         "--tracking-uri", f"sqlite:///{tmp_path / 'ui.db'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, ui, "metasweep ui", timeout=90)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.read() == b"OK"
    finally:
        import os
        import signal

        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
