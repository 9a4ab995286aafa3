"""The sweep's early stopping: ASHA on one objective, MOASHA on several, none with ``fifo``.

An extended sweep runs its new trials as a new Tune experiment, with a new scheduler. Left empty,
that scheduler would judge the new trials against each other only: the first to reach a rung
would always go on, however far below the earlier trials it scored there. :func:`carry_rungs`
gives it the earlier trials' scores at each rung first, so a new trial goes on only if it ranks
where it would have ranked had the sweep asked for all its trials at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any, Literal

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from metasweep.orchestrator.config import SweepConfig
from metasweep.orchestrator.sweep.moasha import MOASHAScheduler
from metasweep.orchestrator.sweep.trial import EVALUATED, evaluations


class ASHA(ASHAScheduler):
    """Ray Tune's ASHA (one bracket), with :meth:`record` for the earlier trials of a sweep and
    ``stopped``, the trials it stopped before their end (Tune's own count includes the trials
    that reached ``max_t``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped = 0

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result[self._time_attr] < self._max_t:
            self.stopped += 1
        return action

    def record(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Note ``trial_id``'s score at the highest rung ``result`` reaches that it has no score
        at yet, as the trial's own report would have, deciding nothing about it."""
        metric = self._metric
        if metric is None or self._time_attr not in result or metric not in result:
            return
        (bracket,) = self._brackets  # a trial's bracket is drawn when it starts; there is one
        # The bracket reads only the trial's id.
        trial: Any = SimpleNamespace(trial_id=trial_id)
        bracket.on_result(trial, result[self._time_attr], self._metric_op * result[metric])

    def rung_sizes(self) -> dict[float, int]:
        """How many trials have a score at each rung below ``max_t``, lowest rung first (a trial
        that reaches ``max_t`` has ended: Tune's last rung there decides nothing)."""
        (bracket,) = self._brackets
        rungs = reversed(bracket._rungs)
        return {float(t): len(recorded) for t, recorded in rungs if t < self._max_t}


def make_scheduler(
    config: SweepConfig, objectives: tuple[tuple[str, Literal["min", "max"]], ...]
) -> ASHA | MOASHAScheduler | FIFOScheduler:
    """The scheduler ``config.search.scheduler`` names, on the sweep's objectives; its time axis
    is the meta-iteration of each evaluation (progress reports between them carry no score)."""
    if config.search.scheduler == "fifo":
        return FIFOScheduler()
    grace_period = min(config.search.grace_period, config.train.iterations)
    if len(objectives) > 1:  # ASHA's rungs, promotion by non-dominated sorting
        return MOASHAScheduler(
            [m for m, _ in objectives],
            [d for _, d in objectives],
            time_attr=EVALUATED,
            max_t=config.train.iterations,
            grace_period=grace_period,
            reduction_factor=config.search.reduction_factor,
        )
    ((metric, mode),) = objectives
    return ASHA(
        time_attr=EVALUATED,
        metric=metric,
        mode=mode,
        max_t=config.train.iterations,
        grace_period=grace_period,
        reduction_factor=config.search.reduction_factor,
    )


def carry_rungs(scheduler: Any, earlier: Iterable[Any]) -> int:
    """Record the earlier trials' evaluations at the rungs of ``scheduler`` (an extended sweep's).

    Args:
        scheduler: from :func:`make_scheduler`; a FIFO scheduler has no rungs and takes nothing.
        earlier: Tune results of trials that ended (their ``metrics_dataframe`` holds every report).

    Returns:
        How many earlier trials reached a rung's time axis with a score.
    """
    if not isinstance(scheduler, ASHA | MOASHAScheduler):
        return 0
    carried = 0
    for result in earlier:
        frame = evaluations(result.metrics_dataframe)
        if frame is None or EVALUATED not in frame or not len(frame):
            continue
        # Kept apart from the new trials' ids: Tune numbers each experiment's trials afresh.
        trial_id = f"earlier:{(result.metrics or {}).get('trial_id', carried)}"
        for row in frame.to_dict("records"):
            scheduler.record(trial_id, {k: v for k, v in row.items() if not _missing(v)})
        carried += 1
    return carried


def stopping_summary(scheduler: Any) -> str | None:
    """How many trials ``scheduler`` stopped and how many scored at each rung (an extended
    sweep's earlier trials included), or ``None`` for a scheduler without rungs."""
    if isinstance(scheduler, ASHA):
        stopped, what = scheduler.stopped, f"ASHA on {scheduler._metric}"
    elif isinstance(scheduler, MOASHAScheduler):
        stopped, what = scheduler.stopped, f"MOASHA on {', '.join(scheduler.metrics)}"
    else:
        return None
    sizes = ", ".join(f"{rung:g}: {n}" for rung, n in scheduler.rung_sizes().items())
    trials = "trial" if stopped == 1 else "trials"
    return f"{what} stopped {stopped} {trials}; trials scored at each rung (meta-iteration: trials) {sizes}"


def _missing(value: Any) -> bool:
    """A cell the trial did not report (the frame's columns are the union of all reports')."""
    return value is None or (isinstance(value, float) and math.isnan(value))
