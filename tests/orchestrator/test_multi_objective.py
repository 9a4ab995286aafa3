"""Multi-objective sweeps' settings and their champion (issue 12): ``search.objectives`` and
``tracking.champion_constraints`` refused with one message and exit code 2 where they cannot work,
before anything exists; the Pareto front and the champion of finished trials, worked by hand;
the adaptation cost every evaluation reports; the summary's table with several objectives.

tests/integration/test_multi_objective_sweep.py runs such a sweep on real Ray, Optuna and MLflow."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from metasweep.algorithms import Conv4, ProtoNet
from metasweep.algorithms.testing import image_episode
from metasweep.orchestrator.cli.run import trial_table
from metasweep.orchestrator.config import Bound, SweepConfig, load_config_dict
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.sweep.driver import SweepResult, TrialRow
from metasweep.orchestrator.sweep.pareto import choose, front_plot, front_table
from metasweep.orchestrator.sweep.trial import DIVERGED, EVALUATED, ITERATION
from metasweep.orchestrator.training import (
    adaptation_cost,
    held_out_episodes,
    new_state,
    prepare,
    resolve_device,
)
from tests.refusals import assert_refused

SWEEP = str(Path(__file__).resolve().parents[2] / "examples" / "sweep_sinusoid_maml.yaml")
TWO = "search.objectives=[{metric: val/mse}, {metric: cost/adapt_ms}]"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["search.objectives=[{metric: val/mse}]"],
         "objectives has one objective (val/mse); give two or more, or set metric for one"),
        (["search.objectives=[{metric: val/mse}, {metric: val/mse}]"], "objectives names val/mse twice"),
        ([TWO, "search.metric=val/loss"], "metric=val/loss and objectives both set"),
        ([TWO, "search.sampler=cmaes"], "sampler=cmaes optimises one objective"),
        (["search.objectives=[{metric: val/mse}, {metric: cost/adapt}]"],
         "search.objectives[1].metric: cost/adapt is not a metric a regression run reports; did you "
         "mean cost/adapt_ms?"),
        (["search.objectives=[{metric: val/accuracy}, {metric: cost/adapt_ms}]"],
         "val/accuracy is not a metric a regression run reports"),
        (["search.metric=val/acuracy"], "search.metric: val/acuracy is not a metric"),
        (["tracking.champion_constraints={cost/adapt_ms: {}}"], "a constraint needs min, max or both"),
        (["tracking.champion_constraints={cost/adapt_ms: {min: 5, max: 1}}"], "min=5 is above max=1"),
        (["tracking.champion_constraints={cost/memory: {max: 1}}"],
         "tracking.champion_constraints.cost/memory: cost/memory is not a metric"),
        (["tracking.champion_constraints={cost/adapt_ms: {max: 5}}"],
         "tracking.champion_constraints.cost/adapt_ms: cost/adapt_ms is not an objective of this sweep "
         "(val/mse); constrain an objective, or add cost/adapt_ms to search.objectives"),
        ([TWO, "tracking.champion_constraints={val/loss: {max: 5}}"],
         "val/loss is not an objective of this sweep (val/mse, cost/adapt_ms)"),
        (["search.objectives=[{metric: val/mse, mode: up}, {metric: cost/adapt_ms}]"],
         "search.objectives.0.mode: Input should be 'min' or 'max' (got 'up')"),
        (["search.objectives=[{metric: val/mse, mode: min}, {metric: val/mse, mode: max}]"],
         "objectives names val/mse twice, as max and min: a metric is minimised or maximised"),
        (["search.objectives=[{metric: val/mse}, {metric: cost/adapt_ms, mode: max}]"],
         "search.objectives[1].mode=max would maximise cost/adapt_ms, which a better meta-learner "
         "lowers; drop mode (cost/adapt_ms is minimised)"),
    ],
)  # fmt: skip
def test_objectives_that_cannot_work_exit_2_before_anything_exists(
    cli: Any, settings: list[str], expected: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = cli("sweep", SWEEP, *args)
    assert_refused(result, expected)
    assert not Path("runs").exists() and not Path("mlflow.db").exists()


def test_objectives_take_their_metrics_own_direction() -> None:
    sweep = load_config_dict(
        {"search": {"objectives": [
            {"metric": "val/mse"}, {"metric": "cost/adapt_ms"}, {"metric": "train/loss", "mode": "min"}
        ]}},
        [],
        SweepConfig,
    )  # fmt: skip
    assert sweep.multi_objective
    assert sweep.objectives(sweep.problem(None)) == (
        ("val/mse", "min"), ("cost/adapt_ms", "min"), ("train/loss", "min")
    )  # fmt: skip
    assert sweep.objective(sweep.problem(None)) == ("val/mse", "min")
    single = load_config_dict({}, [], SweepConfig)
    assert not single.multi_objective and single.objectives(single.problem(None)) == (("val/mse", "min"),)


def trial_result(
    trial_id: str, rows: list[dict[str, float]], error: bool = False, diverged: bool = False
) -> Any:
    """A Tune ``Result`` as the champion's choice reads it: evaluations, and a progress report
    after the last (which carries no new score)."""
    frame = pd.DataFrame(
        [*({**r, EVALUATED: r[ITERATION]} for r in rows), {ITERATION: 999, "val/accuracy": 0.0}]
    )
    last = {"trial_id": trial_id, **rows[-1], **({DIVERGED: "nan"} if diverged else {})}
    return SimpleNamespace(
        metrics_dataframe=frame, metrics=last, error=RuntimeError() if error else None, config={}
    )


ACC, COST = ("val/accuracy", "max"), ("cost/adapt_ms", "min")


def point(accuracy: float, ms: float, iteration: int = 100) -> dict[str, float]:
    return {ITERATION: iteration, "val/accuracy": accuracy, "cost/adapt_ms": ms}


def test_the_front_and_the_champion_come_from_each_trials_last_evaluation() -> None:
    results = [
        trial_result("a", [point(0.2, 1.0, 50), point(0.90, 9.0)]),  # front: most accurate
        trial_result("b", [point(0.80, 3.0)]),  # front
        trial_result("c", [point(0.70, 4.0)]),  # dominated by b
        trial_result("d", [point(0.50, 1.0)]),  # front: cheapest
        trial_result("e", [point(0.99, 0.1)], error=True),  # failed: never a candidate
        trial_result("f", [point(0.95, 0.5)], diverged=True),
    ]
    choice = choose(results, [ACC, COST], {}, "s")
    assert choice.champion.trial_id == "a"
    assert [t.trial_id for t in choice.front] == ["a", "b", "d"]
    standing = {t.trial_id: t.front for t in choice.trials}
    assert standing == {"a": 0, "b": 0, "d": 0, "c": 1, "e": None, "f": None}
    assert choice.why == (
        "trial a: the highest val/accuracy (0.9; cost/adapt_ms 9) of the 3 trials on "
        "the Pareto front of val/accuracy, cost/adapt_ms, among the 4 trials"
    )


def test_constraints_choose_among_the_trials_that_keep_them() -> None:
    results = [
        trial_result("a", [point(0.90, 9.0)]),
        trial_result("b", [point(0.80, 3.0)]),
        trial_result("c", [point(0.70, 4.0)]),
    ]
    limits = {"cost/adapt_ms": Bound(max=5)}
    choice = choose(results, [ACC, COST], limits, "s")
    assert choice.champion.trial_id == "b"
    assert {t.trial_id: t.feasible for t in choice.trials} == {"a": False, "b": True, "c": True}
    assert choice.why.endswith("among the 2 trials that keep cost/adapt_ms <= 5")
    # One objective, with limits on it: the best of the trials that keep them.
    one = choose(results, [ACC], {"val/accuracy": Bound(max=0.85)}, "s")
    assert one.champion.trial_id == "b"
    one = choose(results, [ACC], {"val/accuracy": Bound(min=0.65, max=0.75)}, "s")
    assert one.champion.trial_id == "c"
    assert one.why == (
        "trial c: the highest val/accuracy (0.7) of the 1 trial that keeps "
        "val/accuracy >= 0.65 and val/accuracy <= 0.75"
    )


def test_no_trial_keeping_the_constraints_is_a_clear_error() -> None:
    results = [trial_result("a", [point(0.90, 9.0)])]
    with pytest.raises(UserError, match=r"none of the 1 trials that reported keeps .*cost/adapt_ms <= 5"):
        choose(results, [ACC, COST], {"cost/adapt_ms": Bound(max=5)}, "s")
    with pytest.raises(UserError, match="no trial reported a result"):
        choose([trial_result("e", [point(0.9, 1.0)], error=True)], [ACC, COST], {}, "s")


def test_the_front_is_written_as_a_table_and_drawn(tmp_path: Path) -> None:
    results = [
        trial_result(t, [point(a, c)]) for t, a, c in [("a", 0.9, 9.0), ("b", 0.8, 3.0), ("c", 0.7, 4.0)]
    ]
    choice = choose(results, [ACC, COST], {}, "s")
    table = front_table(choice, [ACC, COST], 100, tmp_path / "front.csv").read_text().splitlines()
    assert table[0] == "trial,val/accuracy,cost/adapt_ms,pareto_front,keeps_constraints,champion,outcome"
    assert table[1:] == [
        "a,0.9,9,0,True,True,finished",
        "b,0.8,3,0,True,False,finished",
        "c,0.7,4,1,True,False,finished",
    ]
    plot = front_plot(choice, [ACC, COST], "front", tmp_path / "front.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_evaluation_reports_what_adapting_to_one_task_costs() -> None:
    config = load_config_dict({"model": {"name": "mlp", "hidden": [8]}, "eval": {"inner_steps": 3}})
    inputs = prepare(config)
    learner = new_state(config, inputs.problem, resolve_device("cpu")).learner
    cost = adaptation_cost(learner, held_out_episodes(config, inputs.sources).val[0], config)
    assert set(cost) == {"cost/adapt_ms", "cost/inner_steps"}
    assert 0 < cost["cost/adapt_ms"] < 10_000 and cost["cost/inner_steps"] == 3.0
    # A learner without an inner loop adapts in no steps (ProtoNet: the prototypes).
    protonet = ProtoNet(Conv4(1, 28, 5, 4))
    episode = image_episode(tasks=2, shots=1, queries=2, seed=0)
    cost = adaptation_cost(protonet, episode, SimpleNamespace(eval_inner_steps=None))
    assert 0 < cost["cost/adapt_ms"] < 10_000 and cost["cost/inner_steps"] == 0.0


def test_the_trial_table_shows_every_objective_and_the_front_at_80_columns() -> None:
    params = {"train.inner_lr": 0.012345678, "eval.inner_steps": 3, "train.meta_lr": 0.001}
    result = SweepResult(
        name="sine", objective="val/mse", best_trial="a1b2c3d4", best_params=params, best_metrics={},
        test_metrics={}, trials=2, parent_run_id="0" * 32, tracking_uri="sqlite:///mlflow.db",
        table=[
            TrialRow("a1b2c3d4", params, 0.5, 600, "finished", others=(12.5,), on_front=True),
            TrialRow("e5f6a7b8", params, 0.7, 100, "stopped early", others=(14.25,)),
        ],
        others=("cost/adapt_ms",),
    )  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(trial_table(result))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    words = set(text.split())
    assert {"val/", "mse", "cost/", "adapt_ms", "front", "yes", "12.5000", "14.2500", "0.5000"} <= words, text
