"""One trial, on a Ray worker: settings in, validation metrics and checkpoints reported to Tune."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from metasweep.orchestrator.config import SweepConfig
from metasweep.orchestrator.data.format import EpisodicDataset
from metasweep.orchestrator.errors import TrainingDiverged
from metasweep.orchestrator.problem import Problem
from metasweep.orchestrator.training import CHECKPOINT, Inputs, build_sources, train

ITERATION = "iteration"
"""The result key of the meta-iteration a result was measured at: ASHA's time axis."""
NODE = "node_id"
RATE = "train/it_per_s"
"""Meta-iterations per second since the trial's previous report (or its start)."""
EVALUATED = "evaluated_at"
"""The meta-iteration of an evaluation: only results that carry it hold new validation metrics
(ASHA's time axis). The others are progress reports between evaluations."""
DIVERGED = "diverged"
"""Present in a trial's last result when its training diverged, with the reason."""


def trial(
    params: dict[str, Any], *, sweep: SweepConfig, problem: Problem, dataset: EpisodicDataset | None
) -> None:
    """Train one configuration, reporting validation metrics and a checkpoint to Tune.

    Continues from Tune's checkpoint when the trial is restarted after a failure.

    Args:
        params: the sampled settings, by dotted config name.
        sweep: the sweep's config.
        problem: what the sweep solves, as the driver described it.
        dataset: the episodic dataset from the object store (shared by the node's trials), or
            ``None`` for sinusoid tasks.
    """
    work = Path(tempfile.mkdtemp(prefix="metasweep-trial-"))
    config = sweep.run_config(params).model_copy(update={"output_dir": str(work)})
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            shutil.copy(Path(saved) / CHECKPOINT, work / CHECKPOINT)
    metric, mode = sweep.objective(problem)
    node = ray.get_runtime_context().get_node_id()  # node IPs repeat when nodes share a machine
    worst = math.inf if mode == "min" else -math.inf

    # The previous report: when, at which meta-iteration, with which score; the training losses
    # since the last evaluation.
    last: dict[str, Any] = {"at": time.monotonic(), "iteration": None, "score": worst}
    losses: list[float] = []

    def rate(iteration: int) -> float:
        now = time.monotonic()
        done = iteration - (last["iteration"] or 0)
        per_s = done / max(now - last["at"], 1e-9)
        last.update(at=now, iteration=iteration)
        return per_s

    def step(iteration: int, loss: float) -> None:
        if last["iteration"] is None:  # called first with the iteration training starts from
            last.update(at=time.monotonic(), iteration=iteration)
            return
        losses.append(loss)
        if (
            config.train.evaluates_at(iteration)
            or time.monotonic() - last["at"] < sweep.search.progress_every_s
        ):
            return
        # Between evaluations, so a long first evaluation interval still shows progress: the
        # last score is repeated (Optuna's searcher reads it from every result), without
        # EVALUATED, so ASHA, MLflow and the plots skip it.
        tune.report(
            {ITERATION: iteration, RATE: rate(iteration), metric: last["score"],
             "train/loss": sum(losses) / len(losses), NODE: node}
        )  # fmt: skip

    def report(iteration: int, metrics: dict[str, float]) -> None:
        # Optuna refuses NaN objectives: a diverged evaluation scores the worst possible value.
        score = metrics.get(metric, math.nan)
        last["score"] = score if math.isfinite(score) else worst
        losses.clear()
        # Tune's live table shows the first four metrics of a result: meta-iterations done (its
        # own "iter" counts reports), their rate, the objective, then the training loss.
        result: dict[str, Any] = {
            ITERATION: iteration,
            RATE: rate(iteration),
            metric: last["score"],
            **{k: v for k, v in metrics.items() if k != metric},
            NODE: node,
            EVALUATED: iteration,
        }
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        inputs = Inputs(problem, build_sources(config, dataset))
        train(config, inputs, resume=checkpoint is not None, on_eval=report, on_step=step, test=False)
    except TrainingDiverged as exc:
        # The worst possible score ends the trial (ASHA and Optuna learn from it); retrying
        # would diverge again.
        done = config.train.iterations
        tune.report({metric: worst, DIVERGED: str(exc), ITERATION: done, EVALUATED: done})
    finally:
        shutil.rmtree(work, ignore_errors=True)
