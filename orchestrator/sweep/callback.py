"""Tune's trial events, mirrored into MLflow child runs from the driver.

Tune pickles its callbacks with the experiment state and ``Tuner.restore`` brings those copies
back, so the callback holds no tracker: it logs through the tracker of the search running now,
set by :func:`tracking_to` around ``Tuner.fit()`` (a context variable, so two sweeps in one process
never share one).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ray import tune

from metasweep.orchestrator.sweep.trial import DIVERGED, EVALUATED, ITERATION, NODE
from metasweep.orchestrator.tracking.runs import NODES_TAG, SweepTracker

_TRACKER: ContextVar[SweepTracker] = ContextVar("metasweep_sweep_tracker")

# How a trial that ended without an error ended, and the status of its MLflow child run.
RUN_STATUS = {"finished": "FINISHED", "stopped early": "KILLED", "diverged": "FAILED"}


@contextmanager
def tracking_to(tracker: SweepTracker) -> Iterator[None]:
    """Send the events of the search run inside to ``tracker``."""
    token = _TRACKER.set(tracker)
    try:
        yield
    finally:
        _TRACKER.reset(token)


def outcome(last: Mapping[str, Any], iterations: int) -> str:
    """How a trial that ended without an error ended, from its last reported result:
    ``diverged``, ``finished`` (all ``iterations``) or ``stopped early`` (by ASHA)."""
    if DIVERGED in last:
        return "diverged"
    return "finished" if int(last.get(ITERATION, 0)) >= iterations else "stopped early"


def ended(result: Any, iterations: int) -> str:
    """How a trial ended, from its Tune ``Result``: ``failed``, or its :func:`outcome`."""
    return "failed" if result.error is not None else outcome(result.metrics or {}, iterations)


class TrackingCallback(tune.Callback):
    """Mirrors Tune's trial events into MLflow child runs, from the driver.

    Args:
        iterations: meta-iterations of a full trial (to tell finished from stopped early).
        seed: the config's seed, recorded on trials that do not search it.
    """

    def __init__(self, iterations: int, seed: int):
        self.iterations = iterations
        self.seed = seed
        self.last_iteration: dict[str, int] = {}
        self.nodes: dict[str, list[str]] = {}

    @property
    def tracker(self) -> SweepTracker:
        """The tracker of the search running now (:func:`tracking_to`)."""
        try:
            return _TRACKER.get()
        except LookupError:
            raise RuntimeError("TrackingCallback used outside tracking_to(tracker)") from None

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.tracker.start_trial(
            trial.trial_id,
            dict(trial.config),
            {"metasweep.seed": str(trial.config.get("seed", self.seed)), "metasweep.status": "running"},
        )

    on_trial_restore = on_trial_start

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if EVALUATED not in result and DIVERGED not in result:
            return  # a progress report between evaluations: for Tune's live table only
        step = int(result.get(ITERATION, 0))
        logged = self.last_iteration.get(trial.trial_id, 0)
        self.last_iteration[trial.trial_id] = max(step, logged)
        if step <= logged and DIVERGED not in result:
            # A trial restarted from a checkpoint older than its last report (it died between
            # reporting and Tune recording the checkpoint) repeats a step: logged once already.
            return
        if DIVERGED in result:
            self.tracker.tag_trial(trial.trial_id, {"metasweep.error": str(result[DIVERGED])[:500]})
            return
        # Tune's timestamp is when the trial reported, which may be long before the driver gets
        # to log it (a tracking-server outage, a busy driver).
        self.tracker.log_trial_metrics(trial.trial_id, result, step, timestamp=result.get("timestamp"))
        if trial.trial_id not in self.nodes:  # the first report this driver sees of it
            self.nodes[trial.trial_id] = self.tracker.trial_nodes(trial.trial_id)
        visited = self.nodes[trial.trial_id]
        node_id = str(result.get(NODE, ""))
        if node_id and (not visited or visited[-1] != node_id):
            visited.append(node_id)  # a trial restarted after a node failure moves on
            self.tracker.tag_trial(
                trial.trial_id,
                {
                    "metasweep.node": str(result.get("node_ip", "")),
                    "metasweep.node_id": node_id,
                    NODES_TAG: ",".join(visited),
                },
            )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Tune's own record of the last result survives a driver restart; a callback restored
        # with the sweep may not have seen it (a trial that finished just before the driver
        # stopped is restored as it was).
        ended = outcome(getattr(trial, "last_result", None) or {}, self.iterations)
        self.tracker.tag_trial(trial.trial_id, {"metasweep.status": ended})
        self.tracker.end_trial(trial.trial_id, RUN_STATUS[ended])

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.tracker.tag_trial(trial.trial_id, {"metasweep.status": "restarting from its checkpoint"})

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.tracker.tag_trial(trial.trial_id, {"metasweep.status": "failed"})
        self.tracker.end_trial(trial.trial_id, "FAILED")
