"""A multi-objective ``metasweep sweep`` on a real local Ray, Optuna study and MLflow SQLite store
(issue 12): the error against the adaptation steps a deployed model pays, with MOASHA stopping
trials and a constraint on the champion. The front the sweep tags is checked against one
computed here from the child runs' own metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from metasweep.orchestrator.sweep.pareto import FRONT_TAG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP = """
name: mo
algorithm: maml
model: {name: mlp, hidden: [20, 20]}
data: {dataset: sinusoid, shots: 5, queries: 5}
train: {iterations: 60, meta_batch_size: 5, eval_every: 20, inner_steps: 1}
eval: {inner_steps: 3, val_tasks: 20, test_tasks: 30, batch_size: 10}
search:
  space:
    train.inner_lr: {type: loguniform, low: 0.001, high: 0.05}
    eval.inner_steps: {type: int, low: 1, high: 8}
  objectives: [{metric: val/mse}, {metric: cost/inner_steps}]
  num_samples: 6
  max_concurrent: 2
  grace_period: 20
  reduction_factor: 2
  cpus_per_trial: 1
tracking:
  experiment: it
  champion_constraints: {cost/inner_steps: {max: 6}}
"""


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def check_front(client: MlflowClient, stderr: str, summary: dict, expected: int) -> tuple:
    """The sweep's parent run, its front and its champion, once its ``expected`` child runs are
    checked against what the sweep tagged: the front among the trials that keep the constraint is
    computed here from each one's last evaluation (MLflow keeps a metric's latest value), not by
    metasweep."""
    experiment = client.get_experiment_by_name("it")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "metasweep.trial_id" not in r.data.tags)
    trials = [r for r in runs if "metasweep.trial_id" in r.data.tags]
    assert len(trials) == expected
    points = {
        r.data.tags["metasweep.trial_id"]: (r.data.metrics["val/mse"], r.data.metrics["cost/inner_steps"])
        for r in trials
    }
    for r in trials:  # the adaptation steps are the trial's own
        assert points[r.data.tags["metasweep.trial_id"]][1] == float(r.data.params["eval.inner_steps"])
    feasible = {t: p for t, p in points.items() if p[1] <= 6}
    front = {t for t, p in feasible.items() if not any(dominates(q, p) for q in feasible.values())}
    assert {r.data.tags[FRONT_TAG] for r in trials} <= {"true", "false"}  # every trial says
    tagged = {r.data.tags["metasweep.trial_id"] for r in trials if r.data.tags[FRONT_TAG] == "true"}
    assert tagged == front and front
    champion = min(front, key=lambda t: feasible[t][0])
    assert summary["best_trial"] == champion
    assert f"champion: trial {champion}: the lowest val/mse" in stderr
    assert f"on the Pareto front of val/mse, cost/inner_steps, among the {len(feasible)} " in stderr
    return parent, front, champion


def test_a_multi_objective_sweep_tags_its_front_and_picks_the_champion_on_it(run_cli, migrated_store) -> None:
    Path("sweep.yaml").write_text(SWEEP)
    migrated_store()
    uri = f"sqlite:///{Path('mlflow.db').absolute()}"
    result = run_cli("sweep", "sweep.yaml", "--set", f"tracking.uri={uri}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "early stopping: MOASHA on val/mse, cost/inner_steps stopped " in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    client = MlflowClient(uri)
    parent, front, champion = check_front(client, result.stderr, summary, 6)
    assert "that keep cost/inner_steps <= 6" in parent.data.tags["metasweep.champion"]
    assert {"test/mse", "val/mse", "cost/adapt_ms", "cost/inner_steps"} <= set(parent.data.metrics)

    # The front as a table and a plot on the parent run.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert artifacts == {"pareto/pareto_front.csv", "pareto/pareto_front.png"}
    table = client.download_artifacts(parent.info.run_id, "pareto/pareto_front.csv", ".")
    with Path(table).open() as f:
        rows = list(csv.DictReader(f))
    assert {row["trial"] for row in rows if row["pareto_front"] == "0"} == front
    assert [row["trial"] for row in rows if row["champion"] == "True"] == [champion]

    # The Optuna study is a two-objective one, each finished trial with both values.
    study = optuna.load_study(
        study_name="mo", storage=f"sqlite:///{Path('runs/sweeps/mo/optuna.db').absolute()}"
    )
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 6 and all(len(t.values) == 2 for t in done)

    # Extended by two trials: MOASHA runs the new ones, the front and champion cover all eight
    # (a trial the new ones dominate leaves the front, and its tag says so).
    result = run_cli(
        "sweep", "sweep.yaml", "--resume", "mo", "--set", f"tracking.uri={uri}",
        "--set", "search.num_samples=8", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "extending sweep mo by 2 trials to 8" in result.stderr
    assert "the new trials are judged with 6 earlier trials at each rung" in result.stderr  # MOASHA's
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    check_front(client, result.stderr, summary, 8)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 8
