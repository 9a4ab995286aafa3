"""One trial, on a Ray worker: settings in, validation metrics and checkpoints reported to Tune."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray import tune

from metasweep.orchestrator.config import SweepConfig
from metasweep.orchestrator.errors import TrainingDiverged
from metasweep.orchestrator.problem import Problem
from metasweep.orchestrator.sweep.workers import Placement, Replicas, train_on_workers
from metasweep.orchestrator.training import CHECKPOINT, Inputs, build_sources, train

ITERATION = "iteration"
"""The result key of the meta-iteration a result was measured at: ASHA's time axis."""
NODE = "node_id"
RATE = "train/it_per_s"
"""Meta-iterations per second since the trial's previous report (or its start)."""
EVALUATED = "evaluated_at"
"""The meta-iteration of an evaluation: only results that carry it hold new validation metrics
(ASHA's time axis). The others are progress reports between evaluations."""
RESTARTS = "workers/restarts"
"""How often the Ray Train workers of a trial of several restarted from its last checkpoint
(after a worker failed)."""
DIVERGED = "diverged"
"""Present in a trial's last result when its training diverged, with the reason."""


def evaluations(frame: Any) -> Any:
    """The rows of a trial's results (Tune's ``metrics_dataframe``, or ``None``) that hold an
    evaluation, not the progress reports between them."""
    if frame is None or EVALUATED not in frame:
        return frame
    return frame[frame[EVALUATED].notna()]


def trial(
    params: dict[str, Any],
    *,
    sweep: SweepConfig,
    problem: Problem,
    dataset: list[Any] | None,
    workers_storage: str,
    janitor: Any = None,
) -> None:
    """Train one configuration, reporting validation metrics and a checkpoint to Tune.

    Continues from Tune's checkpoint when the trial is restarted after a failure. With
    ``search.workers_per_trial`` above 1 the trial is a Ray Train run of that many workers
    (:mod:`metasweep.orchestrator.sweep.workers`), and this function relays what they report.

    Args:
        params: the sampled settings, by dotted config name.
        sweep: the sweep's config.
        problem: what the sweep solves, as the driver described it.
        dataset: ``[ObjectRef]`` of the episodic dataset in the object store (shared by the
            node's trials and workers), or ``None`` for sinusoid tasks.
        workers_storage: where Ray Train keeps the checkpoints of trials of several workers.
        janitor: the sweep's :class:`~metasweep.orchestrator.sweep.workers.GroupJanitor`, which
            frees the workers' placement group of a trial that Tune ended mid-run.
    """
    work = Path(tempfile.mkdtemp(prefix="metasweep-trial-"))
    config = sweep.run_config(params).model_copy(update={"output_dir": str(work)})
    checkpoint = tune.get_checkpoint()
    workers = config.train.workers
    if checkpoint is not None and workers == 1:
        with checkpoint.as_directory() as saved:
            shutil.copy(Path(saved) / CHECKPOINT, work / CHECKPOINT)
    objectives = sweep.objectives(problem)
    node = ray.get_runtime_context().get_node_id()  # node IPs repeat when nodes share a machine
    worst = {metric: math.inf if mode == "min" else -math.inf for metric, mode in objectives}

    # The previous report: when, at which meta-iteration, with which scores; the training losses
    # since the last evaluation.
    last: dict[str, Any] = {"at": time.monotonic(), "iteration": None, "scores": worst, "restarts": 0}
    losses: list[float] = []

    def rate(iteration: int) -> float:
        now = time.monotonic()
        done = iteration - (last["iteration"] or 0)
        per_s = done / max(now - last["at"], 1e-9)
        last.update(at=now, iteration=iteration)
        return per_s

    def step(iteration: int, loss: float) -> None:
        if math.isnan(loss):  # training starts, or its workers restarted, from ``iteration``
            if last["iteration"] is not None:
                last["restarts"] += 1
                losses.clear()
            last.update(at=time.monotonic(), iteration=iteration)
            return
        losses.append(loss)
        if (
            config.train.evaluates_at(iteration)
            or time.monotonic() - last["at"] < sweep.search.progress_every_s
        ):
            return
        # Between evaluations, so a long first evaluation interval still shows progress: the
        # last scores are repeated (Optuna's searcher reads them from a trial's last result),
        # without EVALUATED, so ASHA, MLflow and the plots skip it.
        tune.report(
            {ITERATION: iteration, RATE: rate(iteration), **last["scores"],
             "train/loss": sum(losses) / len(losses), NODE: node}
        )  # fmt: skip

    def report(iteration: int, metrics: dict[str, float], saved: ray.train.Checkpoint | None) -> None:
        # Optuna refuses NaN objectives: a diverged evaluation scores the worst possible value.
        scores = {m: metrics.get(m, math.nan) for m in worst}
        last["scores"] = {m: v if math.isfinite(v) else worst[m] for m, v in scores.items()}
        losses.clear()
        # Tune's live table shows the first four metrics of a result: meta-iterations done (its
        # own "iter" counts reports), their rate, the objectives, then the training loss.
        result: dict[str, Any] = {
            ITERATION: iteration,
            RATE: rate(iteration),
            **last["scores"],
            **{k: v for k, v in metrics.items() if k not in worst},
            NODE: node,
            EVALUATED: iteration,
            **({RESTARTS: last["restarts"]} if workers > 1 else {}),
        }
        tune.report(result, checkpoint=saved)

    try:
        if workers > 1:
            s = sweep.search
            replicas = Replicas(
                config, problem, dataset, lead_dir=None, resume=False, overwrite=False, test=False,
                every_s=s.progress_every_s,
            )  # fmt: skip
            # The last evaluation is reported once Train's run has ended. Tune ends a trial
            # on its last report (ASHA's max_t, the search's end) by ending the trial's
            # process, and Train's controller with it, which would cut the run's own end short:
            # its workers stopped mid-report, their placement group left to the janitor.
            held: list[tuple[int, dict[str, float], tune.Checkpoint | None]] = []

            def on_eval(i: int, m: dict[str, float], saved: ray.train.Checkpoint | None) -> None:
                if i >= config.train.iterations:
                    held.append((i, m, _from_train(saved)))
                else:
                    report(i, m, _from_train(saved))

            train_on_workers(
                replicas,
                Placement(s.cpus_per_worker, s.gpus_per_worker, s.max_failures),
                storage=workers_storage,
                name=tune.get_context().get_trial_id(),
                checkpoint=checkpoint,
                on_eval=on_eval,
                on_step=step,
                janitor=janitor,
            )
            for i, m, saved in held[-1:]:
                report(i, m, saved)
            return
        data = ray.get(dataset[0]) if dataset else None
        inputs = Inputs(problem, build_sources(config, data))
        train(
            config,
            inputs,
            resume=checkpoint is not None,
            on_eval=lambda i, m: report(i, m, tune.Checkpoint.from_directory(str(work))),
            on_step=step,
            test=False,
        )
    except TrainingDiverged as exc:
        # The worst possible score ends the trial (ASHA and Optuna learn from it); retrying
        # would diverge again.
        done = config.train.iterations
        tune.report({**worst, DIVERGED: str(exc), ITERATION: done, EVALUATED: done})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _from_train(saved: ray.train.Checkpoint | None) -> tune.Checkpoint | None:
    """Rank 0's checkpoint in Train's storage, for Tune to copy to the trial's."""
    return None if saved is None else tune.Checkpoint(saved.path, saved.filesystem)
