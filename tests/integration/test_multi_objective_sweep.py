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


def test_a_multi_objective_sweep_tags_its_front_and_picks_the_champion_on_it(run_cli, migrated_store) -> None:
    Path("sweep.yaml").write_text(SWEEP)
    migrated_store()
    uri = f"sqlite:///{Path('mlflow.db').absolute()}"
    result = run_cli("sweep", "sweep.yaml", "--set", f"tracking.uri={uri}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "early stopping: MOASHA on val/mse, cost/inner_steps: " in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("it")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "metasweep.trial_id" not in r.data.tags)
    trials = [r for r in runs if "metasweep.trial_id" in r.data.tags]
    assert len(trials) == 6
    # Each trial's last evaluation (MLflow keeps a metric's latest value), the front among the
    # trials that keep the constraint, and its best error: computed here, not by metasweep.
    points = {
        r.data.tags["metasweep.trial_id"]: (r.data.metrics["val/mse"], r.data.metrics["cost/inner_steps"])
        for r in trials
    }
    assert {steps for _, steps in points.values()} <= set(map(float, range(1, 9)))
    for trial, (_, steps) in points.items():  # the adaptation steps are the trial's own
        assert steps == float(
            next(r for r in trials if r.data.tags["metasweep.trial_id"] == trial).data.params[
                "eval.inner_steps"
            ]
        )
    feasible = {t: p for t, p in points.items() if p[1] <= 6}
    front = {t for t, p in feasible.items() if not any(dominates(q, p) for q in feasible.values())}
    tagged = {r.data.tags["metasweep.trial_id"] for r in trials if r.data.tags.get(FRONT_TAG) == "true"}
    assert tagged == front and front
    champion = min(front, key=lambda t: feasible[t][0])
    assert summary["best_trial"] == champion
    assert f"champion: trial {champion}: the lowest val/mse" in result.stderr
    assert f"of the {len(front)} trials on the Pareto front of val/mse, cost/inner_steps" in result.stderr
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
