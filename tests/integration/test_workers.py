"""Runs of several data-parallel workers on a real local Ray (Ray Train, gloo on this CPU):
``metasweep train`` with ``train.workers: 2`` ends where one worker does, and a sweep's trial of
two workers survives one of them being killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.refusals import assert_refused

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SINUSOID = """
name: {name}
algorithm: maml
seed: 7
model: {{name: mlp, hidden: [20, 20]}}
data: {{dataset: sinusoid, shots: 5, queries: 5}}
train: {{iterations: 20, meta_batch_size: 6, eval_every: 10, inner_steps: 2, inner_lr: 0.05}}
eval: {{inner_steps: 2, val_tasks: 10, test_tasks: 10, batch_size: 10}}
"""

CONV4 = """
name: {name}
algorithm: maml
seed: 7
model: {{name: conv4, filters: 8}}
data: {{dataset: images.parquet, ways: 2, shots: 1, queries: 2}}
# SGD: Conv-4's convolution biases sit before per-task BatchNorm, so their meta-gradient is zero
# up to rounding, which Adam would scale into full steps that differ with the order of the sums.
train: {{iterations: 20, meta_batch_size: 4, eval_every: 10, inner_steps: 2, inner_lr: 0.3,
        meta_optimizer: sgd, meta_lr: 0.1}}
eval: {{inner_steps: 2, val_tasks: 4, test_tasks: 4, batch_size: 4}}
"""


def weights(run: str) -> tuple[int, dict[str, torch.Tensor]]:
    saved = torch.load(Path("runs") / run / "checkpoint.pt", weights_only=True)
    return saved["iteration"], saved["learner"]


@pytest.mark.parametrize("workload", ["conv4", "sinusoid"])
def test_two_workers_train_the_parameters_one_worker_does(
    workload: str, run_cli, make_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 meta-iterations of second-order MAML: the meta-batch split over two Ray Train workers
    (gloo) gives the parameters one process reaches with the whole meta-batch, on Conv-4 and
    on the sinusoid MLP (33 s here; tests/algorithms/test_distributed.py checks both in float64).

    For Conv-4 the one process computes as each worker does: one thread (a worker of one CPU
    runs one) and passes of a worker's two tasks. Second order through per-task BatchNorm of
    two images a class multiplies float32 rounding by about ten a meta-iteration on this toy
    data: one process alone ends 0.03 apart from itself on one thread against two (measured).
    Arithmetic alike, the workers' parameters equal the process's; float64 equality without
    this care is tests/algorithms/test_distributed.py's."""
    if workload == "conv4":
        make_folder(tmp_path / "images", classes=9, per_class=3, size=28)
        imported = run_cli(
            "data", "import", "images", "--out", "images.parquet", "--split-ratios", "0.34,0.33,0.33",
            "--no-progress",
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
    template = SINUSOID if workload == "sinusoid" else CONV4
    Path("run.yaml").write_text(template.format(name="one"))
    alike: list[str] = []
    if workload == "conv4":
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        alike = ["--set", "train.memory.task_chunk=2"]
    one = run_cli("train", "run.yaml", "--no-progress", *alike)
    assert one.returncode == 0, one.stderr[-3000:]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    two = run_cli("train", "run.yaml", "--set", "name=two", "--set", "train.workers=2", "--no-progress")
    assert two.returncode == 0, two.stderr[-3000:]

    (done_one, alone), (done_two, shared) = weights("one"), weights("two")
    assert done_one == done_two == 20
    assert alone.keys() == shared.keys()
    for name, value in alone.items():
        torch.testing.assert_close(shared[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # Moved from the initial weights, so that equal means trained alike.
    fresh = run_cli(
        "train", "run.yaml", "--set", "name=fresh", "--set", "train.iterations=0", "--no-progress"
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    start = weights("fresh")[1]
    assert any(not torch.allclose(start[k], v) for k, v in alone.items() if v.is_floating_point())
    assert (Path("runs/two") / "metrics.jsonl").read_text().count("\n") == 3  # two evaluations, the end


def test_more_workers_than_cpus_are_refused_before_ray_starts(run_cli) -> None:
    Path("run.yaml").write_text(SINUSOID.format(name="many"))
    workers = (os.cpu_count() or 1) + 1
    result = run_cli(
        "train", "run.yaml", "--set", f"train.workers={workers}", "--set", "train.meta_batch_size=30"
    )
    assert_refused(result, f"train.workers={workers} but this machine has")
    assert not Path("runs").exists()


SWEEP = """
name: wsweep
algorithm: maml
model: {{name: mlp, hidden: [20, 20]}}
data: {{dataset: sinusoid, shots: 5, queries: 5}}
train: {{iterations: {iterations}, meta_batch_size: 4, eval_every: {every}, meta_lr: 0.01}}
eval: {{inner_steps: 1, val_tasks: 10, test_tasks: 10, batch_size: 10}}
search:
  space:
    train.inner_lr: {{type: loguniform, low: 0.001, high: 0.05}}
  num_samples: 3
  # The second trial, adapting with next to no step, scores worse than the first at one of ASHA's
  # rungs (200, 400, 800) and is stopped there, mid-run: the third's workers need its CPUs.
  initial_points: [{{train.inner_lr: 0.05}}, {{train.inner_lr: 0.001}}]
  max_concurrent: 1
  workers_per_trial: 2
  cpus_per_trial: 2
  scheduler: asha
  grace_period: 200
tracking: {{experiment: workers, registered_model: wsine}}
"""


def train_workers(private: str) -> list[psutil.Process]:
    """This suite's Ray Train workers (their TMPDIR is the suite's)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(process.info["cmdline"] or ()) and (
                process.environ().get("TMPDIR") == private
            ):
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def test_a_trial_of_two_workers_resumes_from_its_checkpoint_when_a_worker_dies(
    migrated_store, tmp_path: Path
) -> None:
    """One worker of the first trial killed after its first checkpoint: Train restarts the
    workers from it, the trial finishes, MLflow has one child run per trial (not one per worker)
    and counts the restart, and the best model is registered.

    Every trial's workers are placed, whoever ended the trial before them: the first ran to
    its end, which once ended the trial's process (and Train's controller) before the
    controller freed its workers' placement group; ASHA stopped the second mid-run, which ends
    the controller the same way. Ray keeps such a group's CPUs until the sweep ends, and the
    next trial waited for ever (440 s, a timeout once) until the last report waited for the
    run's end and the sweep's janitor freed the groups of dead controllers. (With the janitor
    left out, the driver was still waiting for the third trial's workers after 160 s; with it,
    the whole test takes about 100 s here alone.)"""
    Path("sweep.yaml").write_text(SWEEP.format(iterations=1000, every=100))
    migrated_store()
    uri = f"sqlite:///{Path('mlflow.db').absolute()}"
    # Train's controller collects the workers' reports every 2 s by default, and a report waits
    # for it: a tenth of that makes this sweep of short trials a fifth shorter (118 s against 95 s
    # without the kill, measured) and tests the same.
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "sweep", "sweep.yaml", "--set", f"tracking.uri={uri}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        storage = Path("runs/sweeps/wsweep/workers")
        while not list(storage.glob("*/checkpoint_*")):
            assert driver.poll() is None and time.monotonic() < deadline, (
                "no checkpoint reached Train's storage"
            )
            time.sleep(0.2)
        workers = train_workers(os.environ["TMPDIR"])
        assert len(workers) == 2, [w.info["cmdline"] for w in workers]
        workers[-1].send_signal(signal.SIGKILL)
        output, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, output[-4000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("workers")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if "metasweep.trial_id" in r.data.tags]
    assert len(trials) == 3, output[-4000:]  # one child run per trial, however many workers
    (killed,) = [r for r in trials if r.data.metrics["workers/restarts"] == 1]
    (stopped,) = [r for r in trials if r.data.params["train.inner_lr"] == "0.001"]
    (third,) = [r for r in trials if r is not killed and r is not stopped]
    history = client.get_metric_history(killed.info.run_id, "val/mse")
    assert [m.step for m in history] == list(range(100, 1001, 100))  # each evaluation once
    assert killed.info.status == "FINISHED"
    assert stopped.info.status == "KILLED", output[-4000:]  # ASHA stopped it below 1000
    assert max(m.step for m in client.get_metric_history(stopped.info.run_id, "val/mse")) < 1000
    # The third trial's workers were placed and evaluated, whether ASHA stopped it or not.
    assert third.info.status in {"FINISHED", "KILLED"}
    assert client.get_metric_history(third.info.run_id, "val/mse")
    assert len(client.search_model_versions("name='wsine'")) == 1
