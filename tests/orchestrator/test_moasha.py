"""MOASHA's promotion rule: non-dominated fronts against a brute-force reference, crowding at the
extremes, the scheduler's decisions rung by rung, and a real Tune run on local Ray on a synthetic
two-objective trainable whose Pareto front is known."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.schedulers import TrialScheduler

from metasweep.orchestrator.sweep.moasha import (
    MOASHAScheduler,
    crowding_distances,
    pareto_fronts,
    promotion_order,
)


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a <= b).all() and (a < b).any())


points = st.integers(1, 12).flatmap(
    lambda n: st.lists(st.lists(st.integers(0, 4), min_size=2, max_size=3), min_size=n, max_size=n).filter(
        lambda rows: len({len(r) for r in rows}) == 1
    )
)


@settings(max_examples=200, deadline=None)
@given(points)
def test_fronts_are_what_dominance_says(rows: list[list[int]]) -> None:
    p = np.array(rows, dtype=float)
    fronts = pareto_fronts(p)
    for i in range(len(p)):
        by = [j for j in range(len(p)) if dominates(p[j], p[i])]
        # Dominated only by lower fronts, and (below front 0) by one of the front just below.
        assert all(fronts[j] < fronts[i] for j in by)
        assert (fronts[i] == 0) == (not by)
        if fronts[i] > 0:
            assert any(fronts[j] == fronts[i] - 1 for j in by)


def test_crowding_puts_each_objectives_extremes_first() -> None:
    front = np.array([[0.0, 4.0], [1.0, 2.0], [2.0, 1.5], [4.0, 0.0]])
    distance = crowding_distances(front)
    assert math.isinf(distance[0]) and math.isinf(distance[3])
    # (1, 2) sits between (0, 4) and (2, 1.5): 2/4 + 2.5/4; (2, 1.5) between (1, 2) and (4, 0).
    assert distance[1] == pytest.approx(2 / 4 + 2.5 / 4)
    assert distance[2] == pytest.approx(3 / 4 + 2 / 4)
    assert list(promotion_order(np.vstack([front, [[5.0, 5.0]]]))) == [0, 3, 2, 1, 4]


def result(t: int, accuracy: float, cost: float) -> dict[str, float]:
    return {"evaluated_at": t, "val/accuracy": accuracy, "cost/adapt_ms": cost}


def test_a_rung_keeps_what_no_earlier_trial_dominates_and_stops_what_they_do() -> None:
    scheduler = MOASHAScheduler(
        ["val/accuracy", "cost/adapt_ms"], ["max", "min"], time_attr="evaluated_at", max_t=8,
        grace_period=2, reduction_factor=2,
    )  # fmt: skip
    assert sorted(scheduler.rungs) == [2, 4]

    def decide(trial: str, r: dict[str, float]) -> str:
        return scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial), r)

    assert decide("a", result(1, 0.5, 5.0)) == TrialScheduler.CONTINUE  # below the first rung
    assert decide("a", result(2, 0.5, 5.0)) == TrialScheduler.CONTINUE  # first at the rung
    assert decide("b", result(2, 0.4, 6.0)) == TrialScheduler.STOP  # a dominates it
    assert decide("c", result(2, 0.9, 9.0)) == TrialScheduler.CONTINUE  # a trade-off: front 0, extreme
    assert decide("d", result(2, 0.6, 4.0)) == TrialScheduler.CONTINUE  # dominates a: front 0
    assert decide("e", result(2, 0.45, 5.5)) == TrialScheduler.STOP  # front 2 of five: keeps 3
    assert decide("a", result(3, 0.55, 5.0)) == TrialScheduler.CONTINUE  # recorded at rung 2 already
    assert decide("missing", {"evaluated_at": 4, "val/accuracy": 1.0}) == TrialScheduler.CONTINUE
    assert scheduler.stopped == 2
    with pytest.raises(ValueError, match="two or more metrics"):
        MOASHAScheduler(["val/accuracy"], ["max"], time_attr="t", max_t=4)


TUNE_RUN = """
import json, sys
import ray
from ray import tune
from metasweep.orchestrator.sweep.moasha import MOASHAScheduler
from metasweep.orchestrator.sweep.workers import start_local_ray


def synthetic(config):
    x, y = config["xy"]
    for t in range(1, 17):
        slack = 1 + 1 / t
        tune.report({"t": t, "f1": (x + y) * slack, "f2": ((1 - x) ** 2 + y) * slack})


grid = json.loads(sys.argv[1])
scheduler = MOASHAScheduler(
    ["f1", "f2"], ["min", "min"], time_attr="t", max_t=16, grace_period=2, reduction_factor=2
)
start_local_ray()
try:
    results = tune.Tuner(
        synthetic,
        param_space={"xy": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0),
    ).fit()
finally:
    ray.shutdown()
print(json.dumps([[r.config["xy"], r.metrics["t"]] for r in results]))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_moasha_on_tune_runs_only_pareto_optimal_trials_to_the_end(tmp_path) -> None:
    """Eight trials one at a time, rungs at 2, 4 and 8 of 16, on a synthetic trainable: two
    objectives of ``x`` in [0, 1], both minimised, f1 = x and f2 = (1 - x) ** 2 on the Pareto front
    for ``y = 0``, ``y`` lifting both off it, each converging from above as ``t`` grows in the
    same order at every ``t``, so the front is the same at every rung. Every dominated trial
    stops at its first rung (an earlier trial is ahead of it there), and the trials that run to
    the end lie on the front. Pareto-optimal trials may stop too: a rung keeps half, whatever the
    front. Tune runs in a process of its own, away from the Ray state of earlier tests."""
    # Pareto-optimal (y = 0) at both extremes and between; dominated ones (y > 0) among them.
    grid = [[0.0, 0.0], [0.5, 0.6], [1.0, 0.0], [0.4, 0.5], [0.5, 0.0], [0.6, 0.7], [0.3, 0.8], [0.7, 0.9]]
    script = tmp_path / "tune_run.py"
    script.write_text(TUNE_RUN)
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(grid), str(tmp_path / "tune")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    reached = {tuple(xy): t for xy, t in json.loads(done.stdout.strip().splitlines()[-1])}
    assert len(reached) == len(grid)
    finished = [xy for xy, t in reached.items() if t == 16]
    assert finished and all(y == 0.0 for _, y in finished)
    assert all(t == 2 for (_, y), t in reached.items() if y > 0)
