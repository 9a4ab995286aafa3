"""The one module that talks to Ray Tune (and, through Tune, to Optuna).

A trial is :func:`trial`: settings in, metrics reported to Tune, a checkpoint at every
evaluation. The driver (:func:`run_sweep`) owns the Optuna search, the ASHA scheduler and the
MLflow logging (through :class:`TrackingCallback`), and scores the best trial on meta-test after
the search, so test tasks never influence which trial wins.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.config import (
    INNER_LOOP_FIELDS,
    SINUSOID,
    SWEEP_STORAGE,
    ParamSpec,
    RunConfig,
    SweepConfig,
    to_yaml,
)
from orchestrator.datasets import absolute, path_exists
from orchestrator.errors import TrainingDiverged, UserError
from orchestrator.tracking import Registration, SweepTracker, log_and_register, tracking_uri
from orchestrator.training import CHECKPOINT, evaluate_again, load_checkpoint, train

log = logging.getLogger(__name__)

ITERATION = "iteration"
NODE = "node_id"
DIVERGED = "diverged"


# --------------------------------------------------------------------------------------------
# The trial: runs on a Ray worker
# --------------------------------------------------------------------------------------------


def trial(params: dict[str, Any], sweep: dict[str, Any], dataset: Any = None) -> None:
    """Train one configuration, reporting validation metrics and a checkpoint to Tune.

    Continues from Tune's checkpoint when the trial is restarted after a failure.

    Args:
        params: the sampled hyperparameters, by dotted config name.
        sweep: the sweep config as plain JSON data.
        dataset: the episodic dataset from the object store (shared by the node's trials), or
            ``None`` for sinusoid tasks.
    """
    if dataset is not None:
        from orchestrator.datasets import share_dataset

        share_dataset(dataset)
    config = SweepConfig.model_validate(sweep).run_config(params)
    work = Path(tempfile.mkdtemp(prefix="metasweep-trial-"))
    config = config.model_copy(update={"output_dir": str(work)})
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            shutil.copy(Path(saved) / CHECKPOINT, work / CHECKPOINT)

    metric, mode = SweepConfig.model_validate(sweep).objective
    node = ray.get_runtime_context().get_node_id()  # node IPs repeat when nodes share a machine
    worst = math.inf if mode == "min" else -math.inf

    def report(iteration: int, metrics: dict[str, float]) -> None:
        # Optuna refuses NaN objectives: a diverged evaluation scores the worst possible value.
        score = metrics.get(metric, math.nan)
        result: dict[str, Any] = {
            **metrics,
            metric: score if math.isfinite(score) else worst,
            ITERATION: iteration,
            NODE: node,
        }
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        train(config, resume=checkpoint is not None, on_eval=report, show_progress=False, test=False)
    except TrainingDiverged as exc:
        # The worst possible score ends the trial (ASHA and Optuna learn from it); retrying
        # would diverge again.
        tune.report({metric: worst, DIVERGED: str(exc), ITERATION: config.train.iterations})
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptunaSpace:
    """A define-by-run Optuna space: inner-loop fields are sampled only for algorithms with one.

    A plain class (not a closure) because Tune pickles the searcher with its space to resume.
    """

    algorithm: str
    space: dict[str, ParamSpec]

    def __call__(self, trial: optuna.Trial) -> None:
        algorithm = self.algorithm
        if "algorithm" in self.space:
            algorithm = _suggest(trial, "algorithm", self.space["algorithm"])
        for key, spec in self.space.items():
            if key == "algorithm" or (algorithm == "protonet" and key in INNER_LOOP_FIELDS):
                continue
            _suggest(trial, key, spec)


def _suggest(trial: optuna.Trial, key: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(key, list(spec.values or ()))
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high))
    return trial.suggest_float(key, spec.low, spec.high, log=spec.type == "loguniform")


def make_sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    """The configured, seeded Optuna sampler."""
    s = config.search
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed)
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    return optuna.samplers.QMCSampler(seed=s.seed)


@dataclass(frozen=True)
class SweepResult:
    """What a finished sweep found."""

    name: str
    best_trial: str
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    test_metrics: dict[str, float]
    trials: int
    parent_run_id: str
    tracking_uri: str
    registration: Registration | None = None
    table: list[TrialRow] = field(default_factory=list)


@dataclass(frozen=True)
class TrialRow:
    """One trial in the sweep's closing summary."""

    trial_id: str
    params: dict[str, Any]
    metric: float | None
    iteration: int
    outcome: str


# A trial that ended without an error: its outcome, and the status of its MLflow child run.
_RUN_STATUS = {"finished": "FINISHED", "stopped early": "KILLED", "diverged": "FAILED"}


def _outcome(last: dict[str, Any], iterations: int) -> str:
    """How a trial that ended without an error ended, from its last reported result."""
    if DIVERGED in last:
        return "diverged"
    return "finished" if int(last.get(ITERATION, 0)) >= iterations else "stopped early"


def _trial_rows(results: Any, metric: str, mode: str, iterations: int) -> list[TrialRow]:
    """Every trial of a Tune ResultGrid, best first (by ``metric``; failures last)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        outcome = "failed" if result.error is not None else _outcome(metrics, iterations)
        value = metrics.get(metric)
        rows.append(
            TrialRow(
                trial_id=str(metrics.get("trial_id", "?")),
                params=dict(result.config or {}),
                metric=float(value) if value is not None and outcome != "diverged" else None,
                iteration=int(metrics.get(ITERATION, 0)),
                outcome=outcome,
            )
        )
    sign = 1.0 if mode == "min" else -1.0
    return sorted(rows, key=lambda r: (r.metric is None, sign * (r.metric or 0.0)))


_TRACKERS: dict[str, SweepTracker] = {}
"""The driver's live tracker per sweep name. Tune pickles the callbacks with the experiment and
``Tuner.restore`` brings back those copies, so a callback looks its tracker up here by name
instead of carrying one: a resumed sweep logs through the resumed driver's tracker."""


class TrackingCallback(tune.Callback):
    """Mirrors Tune's trial events into MLflow child runs, from the driver."""

    def __init__(self, sweep: str, iterations: int, seed: int):
        self.sweep = sweep
        self.iterations = iterations
        self.seed = seed
        self.last_iteration: dict[str, int] = {}
        self.nodes: dict[str, list[str]] = {}

    @property
    def tracker(self) -> SweepTracker:
        return _TRACKERS[self.sweep]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.start_trial(
            trial.trial_id,
            dict(trial.config),
            {"metasweep.seed": str(trial.config.get("seed", self.seed)), "metasweep.status": "running"},
        )

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
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
        visited = self.nodes.setdefault(trial.trial_id, [])
        node_id = str(result.get(NODE, ""))
        if node_id and (not visited or visited[-1] != node_id):
            visited.append(node_id)  # a trial restarted after a node failure moves on
            self.tracker.tag_trial(
                trial.trial_id,
                {
                    "metasweep.node": str(result.get("node_ip", "")),
                    "metasweep.node_id": node_id,
                    "metasweep.nodes": ",".join(visited),
                },
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune's own record of the last result survives a driver restart; a callback restored
        # with the sweep may not have seen it (a trial that finished just before the driver
        # stopped is restored as it was).
        outcome = _outcome(getattr(trial, "last_result", None) or {}, self.iterations)
        self.tracker.tag_trial(trial.trial_id, {"metasweep.status": outcome})
        self.tracker.end_trial(trial.trial_id, _RUN_STATUS[outcome])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.tag_trial(trial.trial_id, {"metasweep.status": "restarting from its checkpoint"})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.tag_trial(trial.trial_id, {"metasweep.status": "failed"})
        self.tracker.end_trial(trial.trial_id, "FAILED")


def run_sweep(
    config: SweepConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    storage: str | Path | None = None,
    verbose: int = 1,
    resource_check: bool = True,
) -> SweepResult:
    """Search ``config.search.space`` with Optuna on Ray Tune and track it in MLflow.

    Args:
        config: the validated sweep config; ``config.name`` names the sweep.
        address: a running Ray cluster, or ``None`` for a local one.
        resume: continue the sweep ``config.name`` (finished trials are not re-run).
        storage: where Tune keeps trial checkpoints (default ``runs/sweeps``): a path, or a URI
            (``s3://...``) that every node of a cluster reaches.
        verbose: Tune's verbosity (1 shows the live table of trials).
        resource_check: refuse resources no node has now (turn off for autoscaling clusters,
            whose GPU nodes start when trials ask for them).

    Returns:
        The best trial, its parameters, validation and test metrics.

    Raises:
        UserError: an unreachable cluster or tracking store, a sweep that exists (or, with
            ``resume``, does not), or resources no trial can get.
    """
    # Tune warns when checkpoints at every evaluation snapshot its state often; that is intended.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    storage = absolute(str(storage or SWEEP_STORAGE))
    sweep_dir = f"{storage}/{config.name}"
    exists = path_exists(sweep_dir)
    if resume and not exists:
        raise UserError(f"no sweep {config.name!r} under {storage} to resume")
    if not resume and exists:
        raise UserError(
            f"sweep {config.name!r} already exists under {storage}; resume it with --resume "
            "or give a new name with --set name=..."
        )
    uri = tracking_uri(config.tracking.uri)
    tracker = SweepTracker(uri, config.tracking.experiment, config.name, resume=resume)
    dataset = _load_for_workers(config)
    owns_ray = _start_ray(address)
    try:
        if resource_check:
            _check_resources(config)
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    tracker.open(resume)
    try:
        metric, mode = config.objective
        tracker.log_sweep(_sweep_params(config), to_yaml(config))
        trainable = tune.with_resources(
            tune.with_parameters(trial, sweep=config.model_dump(mode="json"), dataset=dataset),
            {"cpu": config.search.cpus_per_trial, "gpu": config.search.gpus_per_trial},
        )
        _TRACKERS[config.name] = tracker
        callback = TrackingCallback(config.name, config.train.iterations, config.seed)
        run_config = tune.RunConfig(
            name=config.name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=config.search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[callback],
            verbose=verbose,
        )
        if resume:
            tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(
                        space=OptunaSpace(config.algorithm, dict(config.search.space)),
                        metric=metric,
                        mode=mode,
                        sampler=make_sampler(config),
                        points_to_evaluate=list(config.search.initial_points) or None,
                    ),
                    scheduler=_scheduler(config, metric, mode),
                    num_samples=config.search.num_samples,
                    max_concurrent_trials=config.search.max_concurrent,
                    time_budget_s=config.search.time_budget_s,
                ),
                run_config=run_config,
            )
        with _stop_on_sigterm() as stopped:
            results = tuner.fit()
        if stopped.is_set():
            raise KeyboardInterrupt(f"stopped; `--resume {config.name}` continues the sweep")
        best = results.get_best_result(metric=metric, mode=mode, scope="all")
        if best.checkpoint is None or best.metrics is None:
            raise UserError("no trial reported a result; see the errors above")
        best_params = dict(best.config or {})
        with best.checkpoint.as_directory() as saved:
            test_metrics = evaluate_again(Path(saved) / CHECKPOINT)
            weights = load_checkpoint(Path(saved) / CHECKPOINT)["learner"]
        tracker.drain()  # trial records buffered through a tracking-server outage
        best_id = str(best.metrics.get("trial_id"))
        val_metrics = {k: float(v) for k, v in best.metrics.items() if k.startswith("val/")}
        tracker.log_best(best_id, best_params, {**val_metrics, **test_metrics})
        with tempfile.TemporaryDirectory() as tmp:
            for plot in sweep_plots(results, config, Path(tmp)):
                tracker.log_artifact(plot, "plots")
        registration = None
        if config.tracking.registered_model:
            registration = _register(tracker, config, config.run_config(best_params), weights, test_metrics)
        tracker.finish("FINISHED")
        return SweepResult(
            name=config.name,
            best_trial=best_id,
            best_params=best_params,
            best_metrics=val_metrics,
            test_metrics=test_metrics,
            trials=len(results),
            parent_run_id=tracker.parent_id,
            tracking_uri=uri,
            registration=registration,
            table=_trial_rows(results, metric, mode, config.train.iterations),
        )
    except BaseException as exc:
        try:
            tracker.flush(wait=True)
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", error=str(exc))
        except Exception as closing:  # the sweep's own error is the one to report
            log.warning("could not mark the sweep's MLflow run as ended: %s", closing)
        raise
    finally:
        _TRACKERS.pop(config.name, None)
        if owns_ray:
            ray.shutdown()


def _sweep_params(config: SweepConfig) -> dict[str, Any]:
    s = config.search
    params: dict[str, Any] = {f"space.{k}": v.model_dump(exclude_none=True) for k, v in s.space.items()}
    params.update(
        {f"search.{k}": v for k, v in s.model_dump(exclude={"space"}).items()},
    )
    params["algorithm"] = config.algorithm
    metric, mode = config.objective
    params["objective"] = f"{metric} ({mode})"
    return params


def _scheduler(config: SweepConfig, metric: str, mode: str) -> Any:
    if config.search.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=ITERATION,
        metric=metric,
        mode=mode,
        max_t=config.train.iterations,
        grace_period=min(config.search.grace_period, config.train.iterations),
        reduction_factor=config.search.reduction_factor,
    )


def _load_for_workers(config: SweepConfig) -> Any:
    """Read the dataset once on the driver; Tune ships it to each node's object store once."""
    if config.data.dataset == "sinusoid":
        return None
    from orchestrator.datasets import load_dataset
    from orchestrator.training import build_sources

    build_sources(config)  # fail before launching trials on impossible episodes
    return load_dataset(config.data.dataset)


@contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """Turn SIGTERM (``ray job stop``, a pod's shutdown) into the SIGINT that Tune handles
    gracefully, saving the experiment's state so ``--resume`` finds every finished trial; the
    event tells the caller that the search was stopped, not finished."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def interrupt(signum: int, frame: Any) -> None:
        stopped.set()
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (or ``$RAY_ADDRESS``, set for a Ray job's driver), or
    start a local Ray; returns whether this process started it (and so must shut it down)."""
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            return True
        ray.init(address=address, log_to_driver=False)
        return False
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"cannot connect to a Ray cluster at {address}: {exc}. If the cluster uses token "
            "authentication, set RAY_AUTH_TOKEN or copy the head node's ~/.ray/auth_token here"
        ) from None


def _check_resources(config: SweepConfig) -> None:
    total = ray.cluster_resources()
    s = config.search
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if s.gpus_per_trial > 0 and gpus == 0:
        raise UserError(
            f"search.gpus_per_trial={s.gpus_per_trial} but the Ray cluster has no GPUs; "
            "set search.gpus_per_trial=0"
        )
    if s.cpus_per_trial > cpus:
        raise UserError(f"search.cpus_per_trial={s.cpus_per_trial} but the Ray cluster has {cpus:g} CPUs")
    if s.gpus_per_trial > gpus:
        raise UserError(f"search.gpus_per_trial={s.gpus_per_trial} but the Ray cluster has {gpus:g} GPUs")
    fits = math.floor(cpus / s.cpus_per_trial)
    if s.gpus_per_trial > 0:
        fits = min(fits, math.floor(gpus / s.gpus_per_trial))
    if s.max_concurrent > fits:
        raise UserError(
            f"search.max_concurrent={s.max_concurrent} but the Ray cluster fits at most {fits} trials "
            f"at once ({cpus:g} CPUs, {gpus:g} GPUs); lower max_concurrent or the per-trial resources"
        )


def _register(
    tracker: SweepTracker,
    config: SweepConfig,
    best: RunConfig,
    weights: dict[str, Any],
    test_metrics: dict[str, float],
) -> Registration:
    """Register the best trial's model with the facts that make two versions comparable."""
    import hashlib
    import json

    import numpy as np

    metric = "test/mse" if config.data.dataset == SINUSOID else "test/accuracy"
    mode = "min" if metric == "test/mse" else "max"
    d, e = best.data, best.eval
    protocol = (
        f"ways={d.ways} shots={d.shots} queries={e.queries or d.queries} rotations={d.rotations} "
        f"test_tasks={e.test_tasks} eval_seed={e.seed}"
    )
    spec: dict[str, Any] = {
        "config": best.model_dump(mode="json"),
        "eval_inner_steps": e.inner_steps,
        "ways": d.ways,
    }
    if config.data.dataset == SINUSOID:
        spec |= {"task_kind": "regression", "image_shape": None, "invert": False}
        fingerprint = "sinusoid"
        rng = np.random.default_rng(0)
        x = rng.uniform(-5, 5, (d.shots + 5, 1)).astype(np.float32)
        y = (2.0 * np.sin(x - 0.5)).astype(np.float32)
        example = {"support_x": x[: d.shots], "support_y": y[: d.shots], "query_x": x[d.shots :]}
    else:
        from orchestrator.datasets import load_dataset

        dataset = load_dataset(config.data.dataset)
        meta = dataset.metadata
        spec |= {"task_kind": "classification", "image_shape": meta["image_shape"], "invert": meta["invert"]}
        fingerprint = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        classes = dataset.classes_in("test")[: d.ways]
        rows = [dataset.class_start[c] + i for c in classes for i in range(d.shots + 1)]
        pixels = dataset.pixels[rows]
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
        labels = np.repeat(np.arange(len(classes)), d.shots + 1)
        support = np.arange(len(rows)) % (d.shots + 1) < d.shots
        example = {
            "support_x": pixels[support], "support_y": labels[support], "query_x": pixels[~support],
        }  # fmt: skip
    return log_and_register(
        tracker, name=config.tracking.registered_model or "", weights=weights, spec=spec,
        input_example=example, metric=metric, value=test_metrics[metric], mode=mode,
        fingerprint=fingerprint, protocol=protocol,
    )  # fmt: skip


def sweep_plots(results: Any, config: SweepConfig, folder: Path) -> list[Path]:
    """Learning curves of every trial, and Optuna's hyperparameter importance and parallel
    coordinates, as PNG files in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, mode = config.objective
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    finished = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or metric not in frame or ITERATION not in frame:
            continue
        ax.plot(
            frame[ITERATION],
            frame[metric],
            marker="o",
            markersize=3,
            label=str(result.metrics.get("trial_id")),
        )
        finished.append(result)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(metric)
    ax.set_title(f"{config.name}: {metric} of every trial")
    if len(finished) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "learning_curves.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for result in finished:
        params = {k: v for k, v in (result.config or {}).items() if k in config.search.space}
        if not params or metric not in (result.metrics or {}):
            continue
        distributions = {k: _distribution(config.search.space[k]) for k in params}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=result.metrics[metric]
            )
        )
    if len(study.trials) >= 2 and len(config.search.space) >= 1:
        from optuna.visualization import matplotlib as optuna_plots

        for name, draw in (
            ("param_importances.png", optuna_plots.plot_param_importances),
            ("parallel_coordinate.png", optuna_plots.plot_parallel_coordinate),
        ):
            try:
                draw(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importance needs varied parameters
                log.info("skipping %s: %s", name, exc)
                continue
            figure: Any = plt.gcf()
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            paths.append(folder / name)
            figure.savefig(paths[-1], dpi=120)
            plt.close(figure)
    return paths


def _distribution(spec: ParamSpec) -> optuna.distributions.BaseDistribution:
    if spec.type == "categorical":
        return optuna.distributions.CategoricalDistribution(list(spec.values or ()))
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high))
    return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.type == "loguniform")
