"""An extended sweep's rungs: a scheduler given the earlier trials' results by ``carry_rungs``
decides about each new trial as one that had seen every trial run would, for ASHA and MOASHA,
where an empty one lets the first new trial at each rung through whatever it scored."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from metasweep.orchestrator.config import SweepConfig
from metasweep.orchestrator.sweep.moasha import MOASHAScheduler
from metasweep.orchestrator.sweep.schedulers import ASHA, carry_rungs, make_scheduler, stopping_summary

SPACE = {"train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}
MSE, STEPS = ("val/mse", "min"), ("cost/inner_steps", "min")


def scheduler(objectives: tuple[tuple[str, Any], ...], kind: str = "asha") -> Any:
    config = SweepConfig.model_validate(
        {
            "name": "s",
            "train": {"iterations": 80, "eval_every": 10},
            "search": {"space": SPACE, "scheduler": kind, "grace_period": 20, "reduction_factor": 2},
        }
    )
    return make_scheduler(config, objectives)


def history(scores: list[list[float]]) -> list[dict[str, float]]:
    """A trial's reports: an evaluation every 10 meta-iterations (``scores[k]`` at ``10 (k+1)``),
    each after a progress report that carries no score."""
    rows: list[dict[str, float]] = []
    for k, values in enumerate(scores):
        rows.append({"iteration": 10 * k + 5, "trial_id": math.nan})
        rows.append({"iteration": 10 * (k + 1), "evaluated_at": 10 * (k + 1), "val/mse": values[0]})
        if len(values) > 1:
            rows[-1]["cost/inner_steps"] = values[1]
    return rows


def ended(trial_id: str, rows: list[dict[str, float]]) -> SimpleNamespace:
    """What Tune's ``Result`` of an ended trial offers: its last metrics and every report."""
    return SimpleNamespace(metrics={"trial_id": trial_id}, metrics_dataframe=pd.DataFrame(rows))


def run(sched: Any, trial_id: str, rows: list[dict[str, float]]) -> list[str]:
    """Feed a trial's reports as Tune would, until it is stopped; the decision at each report."""
    trial = SimpleNamespace(trial_id=trial_id)
    sched.on_trial_add(None, trial)
    decisions = []
    for row in rows:
        reported = {k: v for k, v in row.items() if k != "trial_id"}
        decisions.append(sched.on_trial_result(None, trial, reported))
        if decisions[-1] == TrialScheduler.STOP:
            break
    return decisions


def reached(decisions: list[str], rows: list[dict[str, float]]) -> float:
    """The last meta-iteration a trial was evaluated at before it stopped or ended."""
    return max(r.get("evaluated_at", 0) for r in rows[: len(decisions)])


def test_a_new_trial_below_the_earlier_ones_is_stopped_at_the_first_rung() -> None:
    earlier = [ended(f"t{i}", history([[s]] * 8)) for i, s in enumerate([0.1, 0.2, 0.3, 0.4])]
    poor = history([[0.5]] * 8)

    empty = scheduler((MSE,))
    assert reached(run(empty, "new", poor), poor) == 80  # the first at each rung goes on

    carried = scheduler((MSE,))
    assert carry_rungs(carried, earlier) == 4
    assert carried.rung_sizes() == {20.0: 4, 40.0: 4}
    decisions = run(carried, "new", poor)
    assert decisions[-1] == TrialScheduler.STOP and reached(decisions, poor) == 20
    good = history([[0.05]] * 8)
    assert reached(run(carried, "good", good), good) == 80
    summary = stopping_summary(carried)
    assert summary == (
        "ASHA on val/mse stopped 1 trial; trials scored at each rung (meta-iteration: trials) 20: 6, 40: 5"
    )


def test_moasha_judges_a_new_trial_with_the_earlier_ones() -> None:
    earlier = [ended(f"t{i}", history([[mse, 1.0]] * 8)) for i, mse in enumerate([0.1, 0.2])]
    dominated = history([[0.3, 2.0]] * 8)
    assert reached(run(scheduler((MSE, STEPS)), "new", dominated), dominated) == 80
    carried = scheduler((MSE, STEPS))
    assert carry_rungs(carried, earlier) == 2
    assert run(carried, "new", dominated)[-1] == TrialScheduler.STOP
    assert carried.stopped == 1  # what was carried is not counted as stopped


def test_fifo_has_no_rungs_to_carry() -> None:
    fifo = scheduler((MSE,), kind="fifo")
    assert isinstance(fifo, FIFOScheduler) and not isinstance(fifo, ASHA | MOASHAScheduler)
    assert carry_rungs(fifo, [ended("t0", history([[0.1]]))]) == 0
    assert stopping_summary(fifo) is None
    assert carry_rungs(scheduler((MSE,)), [SimpleNamespace(metrics=None, metrics_dataframe=None)]) == 0


# Each trial: a score per evaluation, on one or two objectives.
trials = st.integers(1, 2).flatmap(
    lambda m: st.lists(
        st.lists(st.lists(st.integers(0, 6).map(float), min_size=m, max_size=m), min_size=1, max_size=8),
        min_size=2,
        max_size=9,
    )
)


@settings(max_examples=150, deadline=None)
@given(trials, st.integers(1, 8))
def test_carried_rungs_decide_as_one_scheduler_over_every_trial(
    scores: list[list[list[float]]], k: int
) -> None:
    """Trials run one after another: the first ``k`` in the earlier experiment, the rest in the
    extension. Every trial's decisions in the extension are those a scheduler that saw every
    trial would have made."""
    k = min(k, len(scores) - 1)
    objectives = (MSE, STEPS) if len(scores[0][0]) == 2 else (MSE,)
    histories = [history(s) for s in scores]

    whole = scheduler(objectives)
    decided = [run(whole, f"t{i}", h) for i, h in enumerate(histories)]

    earlier = scheduler(objectives)  # the earlier experiment: its trials end where they stopped
    ends = [run(earlier, f"t{i}", h) for i, h in enumerate(histories[:k])]
    extension = scheduler(objectives)
    carry_rungs(
        extension,
        [ended(f"t{i}", h[: len(d)]) for i, (h, d) in enumerate(zip(histories, ends, strict=False))],
    )
    assert [run(extension, f"n{i}", h) for i, h in enumerate(histories[k:], k)] == decided[k:]
    assert extension.rung_sizes() == whole.rung_sizes()


@pytest.mark.parametrize("objectives", [(MSE,), (MSE, STEPS)])
def test_the_scheduler_follows_the_objectives(objectives: tuple[tuple[str, Any], ...]) -> None:
    chosen = scheduler(objectives)
    assert isinstance(chosen, ASHA if len(objectives) == 1 else MOASHAScheduler)
    assert chosen.rung_sizes() == {20.0: 0, 40.0: 0}
