"""``metasweep sweep`` on a real local Ray with a real MLflow SQLite store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from metasweep.orchestrator.tracking.runs import LOST
from tests.refusals import assert_quiet, assert_refused

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


def uri() -> str:
    """The test's store as an absolute URI: MLflow caches one database engine per URI string in
    a process, so a relative one would reach an earlier test's store from this process."""
    return f"sqlite:///{Path('mlflow.db').absolute()}"


def store() -> MlflowClient:
    return MlflowClient(uri())


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


def test_sweep_tracks_every_trial_as_a_child_run_and_extends_when_finished(
    cli, run_cli, migrated_store, tmp_path: Path
) -> None:
    """A sweep's MLflow runs, plots and Optuna study; then, finished, the same sweep extended to
    more trials, and a new sweep warm-started from it (one test for the three keeps the suite
    short)."""
    Path("sweep.yaml").write_text(SWEEP.format(name="s1"))
    migrated_store()
    result = run_cli("sweep", "sweep.yaml", "--set", "tracking.registered_model=s1-sine", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"best_trial", "train.inner_lr", "val/mse", "test/mse", "test/mse_ci95"} <= set(summary)
    assert "s1: 4 trials, best first" in result.stderr  # the per-trial summary
    assert_quiet(result.stderr)
    assert "scoring trial " in result.stderr and " on 30 meta-test tasks, 3 inner steps each" in result.stderr
    # What the driver does after the search, in order.
    said = [
        line for line in result.stderr.splitlines() if line.startswith(("scoring", "drawing", "registering"))
    ]
    assert [line.split()[0] for line in said] == ["scoring", "drawing", "registering"], said
    assert said[1] == "drawing the plots of the sweep's 4 trials and logging them to its MLflow run"
    assert said[2] == "registering the best model as s1-sine"
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

    # The Optuna study outlived the driver, in the sweep's folder; it holds the evaluations only
    # (the progress reports between them are not in it), and each view names the others.
    study_file = Path("runs/sweeps/s1/optuna.db").absolute()
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{study_file}")
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    # Tune tells the searcher a trial's last result as its end, not as an intermediate value.
    assert all(set(t.intermediate_values) <= {20, 40} for t in study.trials)
    assert any(set(t.intermediate_values) == {20, 40} for t in study.trials)  # one ran to 60
    numbers = {t.user_attrs["tune_trial_id"]: t.number for t in study.trials}
    assert parent.data.tags["metasweep.optuna_study"] == "s1"
    assert parent.data.tags["metasweep.optuna_storage"] == f"sqlite:///{study_file}"
    for child in children:
        assert child.data.tags["metasweep.optuna_trial"] == str(
            numbers[child.data.tags["metasweep.trial_id"]]
        )

    # Extended: two more trials, sampled and early-stopped with the four earlier ones in view; no
    # earlier trial runs again; the same parent run gains their child runs; the summary covers all six and the
    # registry step runs again. Lowering the count, or another space, is refused first.
    here = ("--set", f"tracking.uri={uri()}")  # MLflow keeps one engine per URI string in a process
    lower = cli("sweep", "sweep.yaml", "--resume", "s1", "--set", "search.num_samples=3", *here)
    assert_refused(lower, "has 4 trials planned")
    other_space = cli(
        "sweep", "sweep.yaml", "--resume", "s1", "--set", "search.num_samples=6", *here,
        "--set", "search.space={train.inner_lr: {type: loguniform, low: 0.001, high: 0.5}, "
        "train.inner_steps: {type: int, low: 1, high: 2}}",
    )  # fmt: skip
    assert_refused(other_space, "keeps its search space")
    before = {c.info.run_id: (c.info.start_time, c.info.end_time) for c in children}
    extended = run_cli(
        "sweep", "sweep.yaml", "--resume", "s1", "--set", "search.num_samples=6",
        "--set", "tracking.registered_model=s1-sine", timeout=600,
    )  # fmt: skip
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "extending sweep s1 by 2 trials to 6" in extended.stderr
    # Its ASHA judges the two new trials with the four earlier ones at each rung.
    assert "the new trials are judged with 4 earlier trials at each rung" in extended.stderr
    assert "trials scored at each rung (meta-iteration: trials) 20: 6, 40: " in extended.stderr
    assert "s1: 6 trials, best first" in extended.stderr
    assert "drawing the plots of the sweep's 6 trials" in extended.stderr
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent.info.run_id]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6 and all(
        c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children
    )
    for child in children:
        if child.info.run_id in before:
            assert (child.info.start_time, child.info.end_time) == before[child.info.run_id]
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{study_file}")
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    assert [t.params for t in study.trials].count({"train.inner_lr": 0.01, "train.inner_steps": 1}) == 1
    assert len(client.search_model_versions("name = 's1-sine'")) == 2  # registered again
    listed = cli("models", "list", "s1-sine", "--tracking-uri", uri())
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if "s1-sine" in line]
    assert len(rows) == 2 and all("test/mse" in r and "ways" not in r for r in rows), listed.stdout
    values = [float(v) for r in rows for v in re.findall(r"\b\d+\.\d+(?:e-?\d+)?\b", r)]
    assert values and all(v == float(f"{v:.4g}") for v in values), listed.stdout  # rounded, 4 digits
    tags = client.get_run(parent.info.run_id).data.tags
    assert tags["metasweep.num_samples"] == "6"
    best = json.loads(extended.stdout.strip().splitlines()[-1])  # a new champion or the old one
    assert tags["metasweep.best_trial"] == best["best_trial"]
    assert float(tags["best.train.inner_lr"]) == best["train.inner_lr"]

    # A new sweep warm-started from it: its two trials are s1's two best settings, its sampler
    # holds s1's six trials, and its parent run says where they came from.
    best_two = [t.params for t in sorted(study.trials, key=lambda t: t.value)[:2]]
    warmed = run_cli(
        "sweep", "sweep.yaml", "--set", "name=s2", "--set", "search.num_samples=2",
        "--set", "search.initial_points=[]", "--set", "search.warm_start={sweep: s1, top: 2}",
        "--set", "search.scheduler=fifo", timeout=600,
    )  # fmt: skip
    assert warmed.returncode == 0, warmed.stderr[-3000:]
    assert "warm start from s1: 6 of 6 earlier trials, best 2 evaluated first" in warmed.stderr
    s2 = optuna.load_study(
        study_name="s2", storage=f"sqlite:///{Path('runs/sweeps/s2/optuna.db').absolute()}"
    )
    own = [t for t in s2.trials if "metasweep.warm_start_from" not in t.user_attrs]
    assert len(s2.trials) == 8 and sorted(map(str, (t.params for t in own))) == sorted(map(str, best_two))
    s2_parent = [
        r for r in client.search_runs([experiment.experiment_id], "tags.`metasweep.sweep` = 's2'")
        if "mlflow.parentRunId" not in r.data.tags
    ]  # fmt: skip
    assert s2_parent[0].data.tags["metasweep.warm_start"] == "s1"

    # Warm starts that cannot work are refused before anything of sweep s3 exists.
    for settings, expected in [
        (["search.objectives=[{metric: val/mse}, {metric: cost/adapt_ms}]"],
         "search.warm_start: sweep 's1' optimised val/mse (min); this sweep optimises val/mse, "
         "cost/adapt_ms (min, min): their results do not compare"),
        (["search.warm_start.sweep=s3"], "search.warm_start: sweep 's3' is this sweep; name an earlier one"),
    ]:  # fmt: skip
        args = [arg for setting in settings for arg in ("--set", setting)]
        refused = cli(
            "sweep", "sweep.yaml", "--set", "name=s3", "--set", "search.warm_start.sweep=s1", *args, *here
        )
        assert_refused(refused, expected)
        assert not Path("runs/sweeps/s3").exists()
        assert not client.search_runs([experiment.experiment_id], "tags.`metasweep.sweep` = 's3'")
    # Another sweep's study storage holds no study of s1's: no extension, and s2's study untouched.
    s2_db = f"sqlite:///{Path('runs/sweeps/s2/optuna.db').absolute()}"
    other = cli(
        "sweep", "sweep.yaml", "--resume", "s1", "--set", "search.num_samples=8",
        "--set", f"search.study_storage={s2_db}", *here,
    )  # fmt: skip
    assert_refused(other, f"has no Optuna study at {s2_db}", "--set search.num_samples=6` continues it")
    assert len(optuna.load_study(study_name="s2", storage=s2_db).trials) == 8
    study_file.rename(study_file.with_suffix(".moved"))  # a study storage gone missing
    lost = cli("sweep", "sweep.yaml", "--resume", "s1", "--set", "search.num_samples=8", *here)
    assert_refused(lost, "has no Optuna study at sqlite:///", "--set search.num_samples=6` continues it")


def test_bad_sweeps_exit_2_and_leave_no_run(cli, run_cli, tmp_path: Path) -> None:
    Path("sweep.yaml").write_text(SWEEP.format(name="bad"))
    refused_before_ray = [
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
        (["--set", "search.warm_start.sweep=never-ran"], "no Optuna study of sweep 'never-ran'"),
        (["--set", "data.dataset=missing.parquet", "--set", "model.name=conv4"], "does not exist"),
    ]
    # The sweep's own local Ray says what it has: a process of its own. (More trials at once than
    # that Ray fits is refused in test_cluster.py, beside a cluster the sweep must not attach to.)
    refused_by_ray = [(["--set", "search.gpus_per_trial=0.5"], "has no GPUs")]
    for args, expected in refused_before_ray + refused_by_ray:
        run = cli if (args, expected) in refused_before_ray else run_cli
        result = run("sweep", "sweep.yaml", *args)
        assert_refused(result, expected)
        if (args, expected) in refused_before_ray:  # refused before the store was needed
            assert not Path("mlflow.db").exists(), args
    if Path("mlflow.db").exists():
        client = store()
        experiment = client.get_experiment_by_name("it")
        assert experiment is None or not client.search_runs([experiment.experiment_id])


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


def kill_tagged(tag: str) -> None:
    """SIGKILL every process whose environment holds ``METASWEEP_TEST_TAG=tag``: a driver and the
    local Ray it started (raylet, GCS, workers), and nothing else on the machine."""
    marker = f"METASWEEP_TEST_TAG={tag}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_a_killed_trial_and_a_killed_driver_lose_nothing(
    edit_config, cli, run_cli, migrated_store, tmp_path: Path
) -> None:
    """One sweep, two faults (one sweep for both keeps the suite short). Once the first trial has
    reported three evaluations, its Ray worker is SIGKILLed: Tune restarts it from its last
    checkpoint. Once it has finished, the driver and its local Ray are SIGKILLed: --resume
    completes the sweep. MLflow keeps one child run per trial; the crashed trial's history has no
    gap and no repeat (so it was not run again after the driver's death either), and every
    other's has every evaluation step."""
    name = f"faults-{tmp_path.name}"
    path = Path("sweep.yaml")
    path.write_text(SWEEP.format(name=name))
    for old, new in (
        ("num_samples: 4", "num_samples: 3"),
        ("max_concurrent: 2", "max_concurrent: 1"),
        ("iterations: 60", "iterations: 300"),
        ("meta_batch_size: 5", "meta_batch_size: 25"),
        ("grace_period: 20", "scheduler: fifo"),
    ):
        edit_config(path, old, new)
    migrated_store()  # the database exists first, so that polling never races its creation
    driver = subprocess.Popen(
        [sys.executable, "-m", "metasweep", "sweep", "sweep.yaml"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "METASWEEP_TEST_TAG": name},
    )  # fmt: skip
    try:
        steps: list[int] = []
        deadline = time.time() + 300
        while time.time() < deadline and len(steps) < 3:
            time.sleep(1)
            children = live_trial_runs()
            if children:
                crashed = children[0]
                steps = [m.step for m in store().get_metric_history(crashed.info.run_id, "val/mse")]
        assert len(steps) >= 3, "the trial should report three evaluations within five minutes"
        workers = trial_workers(name)
        assert workers, "no trial worker to kill"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

        def finished() -> list:
            return [r for r in live_trial_runs() if r.info.status == "FINISHED"]

        while time.time() < deadline and not finished():
            time.sleep(1)
        assert [r.info.run_id for r in finished()] == [crashed.info.run_id], (
            "the crashed trial finishes first"
        )
        # The driver dies once the next trial has started: after its snapshot of the sweep or
        # before, which decides whether the resumed driver runs that trial or another.
        while time.time() < deadline and len(live_trial_runs()) < 2:
            time.sleep(0.2)
    finally:
        kill_tagged(name)
        driver.wait()

    # Its trials have not ended: extending it now is refused (resuming it is what finishes them).
    early = cli(
        "sweep",
        "sweep.yaml",
        "--resume",
        name,
        "--set",
        "search.num_samples=5",
        "--set",
        f"tracking.uri={uri()}",
    )
    assert_refused(early, "have not ended")
    resumed = run_cli("sweep", "sweep.yaml", "--resume", name, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = store()
    experiment = client.get_experiment_by_name("it")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # A trial the killed driver started after Tune's last snapshot is not resumed: its run is
    # ended as lost, and its Optuna trial failed, so that nothing stays running for good.
    lost = [c for c in children if c.data.tags["metasweep.status"] == LOST]
    assert all(c.info.status == "KILLED" for c in lost), [c.info.status for c in lost]
    children = [c for c in children if c not in lost]
    trial_ids = [c.data.tags["metasweep.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 3, "one child run per trial, no duplicates"
    study_file = Path(f"runs/sweeps/{name}/optuna.db").absolute()
    states = [t.state for t in optuna.load_study(study_name=name, storage=f"sqlite:///{study_file}").trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3, states
    assert optuna.trial.TrialState.RUNNING not in states, states
    assert len(lost) <= states.count(optuna.trial.TrialState.FAIL), states  # asked, maybe never run
    every_step = list(range(20, 301, 20))
    for child in children:
        assert child.info.status == "FINISHED"
        history = [m.step for m in client.get_metric_history(child.info.run_id, "val/mse")]
        if child.info.run_id == crashed.info.run_id:
            assert child.info.start_time == crashed.info.start_time
            assert history == every_step, "the crashed trial continued its own run, once"
        assert sorted(set(history)) == every_step, history


def test_a_diverging_trial_scores_worst_and_the_sweep_goes_on(
    edit_config, run_cli, migrated_store, tmp_path: Path
) -> None:
    path = Path("sweep.yaml")
    path.write_text(SWEEP.format(name="d1"))
    migrated_store()
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
