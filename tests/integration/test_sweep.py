"""``metasweep sweep`` on a real local Ray with a real MLflow SQLite store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP = """
name: {name}
algorithm: maml
model: {{name: mlp, hidden: [20, 20]}}
data: {{dataset: sinusoid, shots: 5, queries: 5}}
train: {{iterations: 60, meta_batch_size: 5, eval_every: 20}}
eval: {{inner_steps: 3, val_tasks: 20, test_tasks: 30, batch_size: 10}}
search:
  space:
    train.inner_lr: {{type: loguniform, low: 0.001, high: 0.05}}
    train.inner_steps: {{type: int, low: 1, high: 2}}
  num_samples: 4
  max_concurrent: 2
  grace_period: 20
  reduction_factor: 2
  initial_points: [{{train.inner_lr: 0.01, train.inner_steps: 1}}]
  cpus_per_trial: 1
  progress_every_s: 0.001  # a progress report at almost every meta-iteration between evaluations
tracking: {{experiment: it}}
"""


def store() -> MlflowClient:
    # An absolute URI: MLflow caches one database engine per URI string in a process.
    return MlflowClient(f"sqlite:///{Path('mlflow.db').absolute()}")


def live_trial_runs() -> list:
    """The trial runs in ./mlflow.db while a sweep is running; none yet while its driver is still
    creating or migrating the database (reading then would race the migration)."""
    if not Path("mlflow.db").exists():
        return []
    try:
        client = store()
        experiment = client.get_experiment_by_name("it")
        runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
    except Exception:  # alembic/sqlalchemy errors of a half-created database
        return []
    return [r for r in runs if "metasweep.trial_id" in r.data.tags]


def test_sweep_tracks_every_trial_as_a_child_run(run_cli, tmp_path: Path) -> None:
    Path("sweep.yaml").write_text(SWEEP.format(name="s1"))
    result = run_cli("sweep", "sweep.yaml", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"best_trial", "train.inner_lr", "val/mse", "test/mse", "test/mse_ci95"} <= set(summary)
    assert "s1: 4 trials, best first" in result.stderr  # the per-trial summary
    assert "scoring trial " in result.stderr and " on 30 meta-test tasks, 3 inner steps each" in result.stderr
    # Trials reported progress between evaluations (Tune's result files hold those reports too);
    # the checks below show that neither MLflow's histories nor ASHA took them for evaluations.
    results = [json.loads(line) for f in Path("runs/sweeps/s1").glob("*/result.json") for line in f.open()]
    between = [r for r in results if "evaluated_at" not in r]
    assert between and all(r["iteration"] % 20 for r in between), len(results)

    client = store()
    experiment = client.get_experiment_by_name("it")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    # Links straight to the sweep's pages, in the UI's model-training view.
    page = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    view = "?workflowType=machine_learning"
    assert f"trials: {page}{view}" in result.stderr
    assert f"sweep:  {page}/{parent.info.run_id}{view}" in result.stderr
    assert "metasweep ui --tracking-uri sqlite:///mlflow.db" in result.stderr
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["metasweep.best_trial"] == summary["best_trial"]
    assert parent.data.metrics["test/mse"] == pytest.approx(summary["test/mse"])
    assert "space.train.inner_lr" in parent.data.params and parent.data.params["search.sampler"] == "tpe"
    assert {c.data.tags["metasweep.trial_id"] for c in children} >= {summary["best_trial"]}
    for child in children:
        assert child.data.tags["metasweep.trial_id"] in result.stderr
    table = result.stderr[result.stderr.index("best first") :]
    listed = sorted((c.data.tags["metasweep.trial_id"] for c in children), key=table.index)
    assert listed[0] == summary["best_trial"]  # best first

    # The paper's point is evaluated first, and every child run is a complete, gap-free history.
    params = [
        (float(c.data.params["train.inner_lr"]), int(c.data.params["train.inner_steps"])) for c in children
    ]
    assert (0.01, 1) in params
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["metasweep.node"]
        history = [m.step for m in client.get_metric_history(child.info.run_id, "val/mse")]
        assert history == list(range(20, 20 * len(history) + 1, 20))
        stopped = child.data.tags["metasweep.status"] == "stopped early"
        assert child.info.status == ("KILLED" if stopped else "FINISHED")
        assert (history[-1] < 60) == stopped
        assert "test/mse" not in child.data.metrics, "test tasks must not be seen by trials"


def test_bad_sweeps_exit_2_and_leave_no_run(run_cli, tmp_path: Path) -> None:
    Path("sweep.yaml").write_text(SWEEP.format(name="bad"))
    cases = [
        (
            ["--set", "search.space={train.inner_lrr: {type: uniform, low: 0.1, high: 1}}"],
            "did you mean 'inner_lr'",
        ),
        (
            ["--set", "search.space={train.inner_lr: {type: uniform, low: 1, high: 0.1}}"],
            "low must be below high",
        ),
        (["--set", "search.space={train.inner_steps: {type: uniform, low: 1, high: 3}}"], "is int"),
        (["--set", "search.space={algorithm: {type: categorical, values: []}}"], "non-empty 'values'"),
        (["--resume", "never-ran"], "no sweep 'never-ran'"),
        (["--set", "search.gpus_per_trial=0.5"], "has no GPUs"),
        (["--set", "search.max_concurrent=64"], "fits at most"),
    ]
    for args, expected in cases:
        result = run_cli("sweep", "sweep.yaml", *args, timeout=300)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert expected in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
    if Path("mlflow.db").exists():
        client = store()
        experiment = client.get_experiment_by_name("it")
        assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_sweep_resumes_after_the_driver_is_killed(edit_config, run_cli, tmp_path: Path) -> None:
    """SIGKILL the driver once two trials have finished; --resume completes the sweep, re-runs
    no finished trial, and MLflow keeps one child run per trial with gap-free histories."""
    import os
    import signal
    import subprocess
    import sys

    path = Path("sweep.yaml")
    path.write_text(SWEEP.format(name="r1"))
    for old, new in (
        ("iterations: 60", "iterations: 100"),
        ("grace_period: 20", "scheduler: fifo"),
    ):
        edit_config(path, old, new)
    store()  # create the database here first, so that polling never races its creation
    driver = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "sweep", "sweep.yaml"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 300
    finished: list[str] = []
    while time.time() < deadline and len(finished) < 2:
        time.sleep(2)
        finished = [
            r.data.tags["metasweep.trial_id"] for r in live_trial_runs() if r.info.status == "FINISHED"
        ]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert len(finished) >= 2, "two trials should finish within five minutes"
    # The killed driver's local Ray processes are orphans now; stop them as an operator would.
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, check=False
    )

    resumed = run_cli("sweep", "sweep.yaml", "--resume", "r1", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = store()
    experiment = client.get_experiment_by_name("it")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["metasweep.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 4, "one child run per trial, no duplicates"
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/mse")]
        if child.data.tags["metasweep.trial_id"] in finished:
            assert steps == [20, 40, 60, 80, 100], "a finished trial is not run again"
        assert sorted(set(steps)) == list(range(20, 101, 20)), steps


def trial_workers(sweep: str) -> list[int]:
    """Ray worker processes running a trial of ``sweep`` (Tune runs each trial in
    ``.../<sweep>/working_dirs/<trial>``), so that no other sweep on the machine is touched."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd")
        except (OSError, ValueError):
            continue
        if b"ImplicitFunc" in cmdline and f"/{sweep}/working_dirs/" in cwd:
            pids.append(int(proc.name))
    return pids


def test_a_crashed_trial_continues_from_its_checkpoint(edit_config, tmp_path: Path) -> None:
    """SIGKILL the Ray worker of a running trial: Tune restarts it from its last checkpoint and
    MLflow keeps one child run whose history has no gap and no repeat."""
    import os
    import signal
    import subprocess
    import sys

    path = Path("sweep.yaml")
    path.write_text(SWEEP.format(name=f"crash-{tmp_path.name}"))
    for old, new in (
        ("num_samples: 4", "num_samples: 1"),
        ("max_concurrent: 2", "max_concurrent: 1"),
        ("iterations: 60", "iterations: 4000"),
        ("meta_batch_size: 5", "meta_batch_size: 25"),
        ("grace_period: 20", "scheduler: fifo"),
    ):
        edit_config(path, old, new)
    store()  # create the database here first, so that polling never races its creation
    driver = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "sweep", "sweep.yaml"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    steps: list[int] = []
    deadline = time.time() + 300
    while time.time() < deadline and len(steps) < 3:
        time.sleep(1)
        children = live_trial_runs()
        if children:
            steps = [m.step for m in store().get_metric_history(children[0].info.run_id, "val/mse")]
    assert len(steps) >= 3, "the trial should report three evaluations within five minutes"
    workers = trial_workers(f"crash-{tmp_path.name}")
    assert workers, "no trial worker to kill"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr[-3000:]

    client = store()
    experiment = client.get_experiment_by_name("it")
    children = [
        r for r in client.search_runs([experiment.experiment_id]) if "metasweep.trial_id" in r.data.tags
    ]
    assert len(children) == 1, "the retried trial continues its own child run"
    assert children[0].info.status == "FINISHED"
    history = [m.step for m in client.get_metric_history(children[0].info.run_id, "val/mse")]
    assert history == list(range(20, 4001, 20)), history


def test_a_diverging_trial_scores_worst_and_the_sweep_goes_on(edit_config, run_cli, tmp_path: Path) -> None:
    path = Path("sweep.yaml")
    path.write_text(SWEEP.format(name="d1"))
    for old, new in (
        ("{type: loguniform, low: 0.001, high: 0.05}", "{type: categorical, values: [0.01, 50.0]}"),
        ("    train.inner_steps: {type: int, low: 1, high: 2}\n", ""),
        ("num_samples: 4", "num_samples: 2"),
        (
            "[{train.inner_lr: 0.01, train.inner_steps: 1}]",
            "[{train.inner_lr: 50.0}, {train.inner_lr: 0.01}]",
        ),
    ):
        edit_config(path, old, new)
    result = run_cli("sweep", "sweep.yaml", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["train.inner_lr"] == 0.01
