"""Multi-objective asynchronous successive halving (MOASHA) as a Ray Tune ``TrialScheduler``.

ASHA's rungs with a multi-objective promotion rule (Schmucker et al., 2021, "Multi-objective
Asynchronous Successive Halving", arXiv:2106.12639): a trial that reaches a rung is compared with
every trial that reached it before, on all objectives at once. The points are ordered by
non-dominated sorting (Deb et al., 2002: NSGA-II's fronts), ties within a front broken by
crowding distance (the more isolated point first, so the front's spread survives), and the trial
goes on only if it is in the first ``1 / reduction_factor`` of that order. As in ASHA, the first
trial at a rung always goes on, and no decision waits for other trials. A sweep with
``search.objectives`` and ``scheduler: asha`` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def signs(modes: Sequence[str]) -> np.ndarray:
    """``1`` for each objective to minimise, ``-1`` for each to maximise: values times these are
    all minimised, as :func:`pareto_fronts` takes them."""
    return np.array([1.0 if mode == "min" else -1.0 for mode in modes])


def pareto_fronts(points: np.ndarray) -> np.ndarray:
    """The non-dominated front of each point, 0 for the non-dominated ones (all objectives
    minimised).

    Args:
        points: ``(n, objectives)``.

    Returns:
        ``(n,)`` integers: point ``i`` is in front ``k`` when only points of fronts below ``k``
        dominate it, and one of front ``k - 1`` does.
    """
    n = len(points)
    # dominates[i, j]: i is no worse than j on every objective and better on one.
    no_worse = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    better = np.any(points[:, None, :] < points[None, :, :], axis=2)
    dominates: np.ndarray = no_worse & better
    # Deb et al.'s fast non-dominated sort: peel off the points no remaining point dominates.
    dominated_by = dominates.sum(axis=0)
    fronts = np.full(n, -1)
    current = np.flatnonzero(dominated_by == 0)
    front = 0
    while len(current):
        fronts[current] = front
        dominated_by = dominated_by - dominates[current].sum(axis=0)
        dominated_by[fronts >= 0] = -1
        current = np.flatnonzero(dominated_by == 0)
        front += 1
    return fronts


def crowding_distances(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within its own set (``inf`` at the extremes of
    each objective): the sum over objectives of the normalised gap between its neighbours."""
    n, objectives = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for m in range(objectives):
        order = np.argsort(points[:, m], kind="stable")
        values = points[order, m]
        span = values[-1] - values[0]
        distance[order[0]] = distance[order[-1]] = math.inf
        if span > 0:
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def promotion_order(points: np.ndarray) -> np.ndarray:
    """Indices of ``points`` (minimised), best first: by front, then by crowding distance within
    the front (larger first), then by position (earlier first)."""
    fronts = pareto_fronts(points)
    crowding = np.zeros(len(points))
    for front in np.unique(fronts):
        members = np.flatnonzero(fronts == front)
        crowding[members] = crowding_distances(points[members])
    return np.lexsort((np.arange(len(points)), -crowding, fronts))


class MOASHAScheduler(FIFOScheduler):
    """Stop a trial at a rung unless it ranks in the first ``1 / reduction_factor`` of the trials
    that reached that rung, ranked on every objective at once (:func:`promotion_order`).

    Args:
        metrics: the objectives, as result keys.
        modes: ``"min"`` or ``"max"`` for each.
        time_attr: the result key of the time axis; results without it (or without every
            objective) change nothing.
        max_t: a trial's whole budget on that axis; rungs lie below it.
        grace_period: the first rung.
        reduction_factor: the rungs grow by it, and ``1 / reduction_factor`` of a rung goes on.

    State: the points recorded at each rung, by trial id; picklable (Tune saves it with the
    experiment). Not thread-safe, as Tune's schedulers need not be.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        modes: Sequence[Literal["min", "max"]],
        *,
        time_attr: str,
        max_t: float,
        grace_period: float = 1,
        reduction_factor: float = 2,
    ) -> None:
        super().__init__()
        if len(metrics) < 2 or len(metrics) != len(modes):
            raise ValueError(f"MOASHA needs two or more metrics, each with a mode; got {metrics}, {modes}")
        if grace_period <= 0 or max_t < grace_period or reduction_factor <= 1:
            raise ValueError("need 0 < grace_period <= max_t and reduction_factor > 1")
        self.metrics, self.time_attr, self.max_t = tuple(metrics), time_attr, max_t
        self.signs = signs(modes)
        self.reduction_factor = reduction_factor
        rungs, t = [], float(grace_period)
        while t < max_t:
            rungs.append(t)
            t *= reduction_factor
        self.rungs: dict[float, dict[str, np.ndarray]] = {rung: {} for rung in rungs}
        self.stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # its objectives are its own; Tune's single metric does not replace them

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return self._decide(trial.trial_id, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._decide(trial.trial_id, result)  # a trial that ended at a rung still counts there

    def record(self, trial_id: str, result: dict[str, Any]) -> None:
        """Note ``trial_id``'s point at the highest rung ``result`` reaches that it has no point
        at yet, as the trial's own report would have, deciding nothing about it (the earlier
        trials of an extended sweep)."""
        self._place(trial_id, result)

    def _decide(self, trial_id: str, result: dict[str, Any]) -> str:
        placed = self._place(trial_id, result)
        if placed is None or not placed[0]:  # below the rungs, or the first trial at its rung
            return TrialScheduler.CONTINUE
        others, point = placed
        order = promotion_order(np.stack([*others, point]))
        position = int(np.flatnonzero(order == len(others))[0])
        keep = math.ceil((len(others) + 1) / self.reduction_factor)
        if position >= keep:
            self.stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _place(self, trial_id: str, result: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray] | None:
        """Record the trial's point at its highest new rung; the points recorded there before it
        and its own, or ``None`` when it reached no new rung (or lacks an objective)."""
        if self.time_attr not in result or any(m not in result for m in self.metrics):
            return None
        t = float(result[self.time_attr])
        point = self.signs * np.array([float(result[m]) for m in self.metrics])
        if not np.isfinite(point).all():
            point = np.where(np.isfinite(point), point, math.inf)  # worst on what diverged
        for rung in sorted(self.rungs, reverse=True):  # the highest rung it reached, once
            recorded = self.rungs[rung]
            if t < rung or trial_id in recorded:
                continue
            others = list(recorded.values())
            recorded[trial_id] = point
            return others, point
        return None

    def rung_sizes(self) -> dict[float, int]:
        """How many trials have a point at each rung, lowest rung first."""
        return {rung: len(points) for rung, points in sorted(self.rungs.items())}

    def debug_string(self) -> str:
        sizes = ", ".join(f"{rung:g}: {n}" for rung, n in self.rung_sizes().items())
        return f"MOASHA on {', '.join(self.metrics)}: {self.stopped} stopped; trials per rung {sizes}"
