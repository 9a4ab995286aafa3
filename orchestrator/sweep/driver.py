"""The sweep's driver: the search on Ray Tune, its record in MLflow, and the best model's fate.

:func:`run_sweep` reads the dataset and describes the problem once, hands both to every trial
(:mod:`.trial`), owns the Optuna search and the ASHA scheduler, mirrors trial events into MLflow
(:mod:`.callback`), then scores the best trial on meta-test (test tasks never influence which
trial wins), draws the plots and hands the best model to the registry.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from metasweep.orchestrator.config import SWEEP_STORAGE, RunConfig, SweepConfig, applies, to_yaml
from metasweep.orchestrator.data.storage import absolute, path_exists
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.problem import Problem
from metasweep.orchestrator.redact import redact
from metasweep.orchestrator.sweep.callback import TrackingCallback, ended, tracking_to
from metasweep.orchestrator.sweep.checkpoints import heal
from metasweep.orchestrator.sweep.pareto import FRONT_TAG, Choice, choose, front_plot, front_table
from metasweep.orchestrator.sweep.plots import sweep_plots
from metasweep.orchestrator.sweep.plots import warm_up as warm_plots
from metasweep.orchestrator.sweep.schedulers import carry_rungs, make_scheduler, stopping_summary
from metasweep.orchestrator.sweep.space import OptunaSpace, distributions, make_sampler
from metasweep.orchestrator.sweep.study import (
    StudySearch,
    check_new_study,
    discard_if_alone,
    fail_lost_trials,
    open_storage,
    plan,
    record_plan,
    study_exists,
    study_storage,
    study_tags,
    trial_numbers,
    warm_start,
)
from metasweep.orchestrator.sweep.trial import ITERATION, evaluations, trial
from metasweep.orchestrator.sweep.workers import start_janitor, start_local_ray
from metasweep.orchestrator.tracking.model import ModelSpec
from metasweep.orchestrator.tracking.registry import Candidate, Registration, register, scoring_protocol
from metasweep.orchestrator.tracking.registry import warm_up as warm_registry
from metasweep.orchestrator.tracking.runs import LOST, SweepTracker
from metasweep.orchestrator.tracking.store import tracking_uri
from metasweep.orchestrator.training import (
    CHECKPOINT,
    Inputs,
    Sources,
    build_sources,
    evaluate_run,
    input_example,
    open_dataset,
    read_run,
    task_chunk,
)

log = logging.getLogger(__name__)
LOCAL_RAY = "local"  # the address that starts a new Ray on this machine
WORKERS = "workers"
"""The folder of the sweep's storage where Ray Train keeps trials' checkpoints of several workers."""


@dataclass(frozen=True)
class TrialRow:
    """One trial in the sweep's closing summary."""

    trial_id: str
    params: dict[str, Any]
    metric: float | None
    iteration: int
    outcome: str
    others: tuple[float | None, ...] = ()
    """The other objectives of a multi-objective sweep, in order."""
    on_front: bool = False


@dataclass(frozen=True)
class SweepResult:
    """What a finished sweep found."""

    name: str
    objective: str
    best_trial: str
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    test_metrics: dict[str, float]
    trials: int
    parent_run_id: str
    tracking_uri: str
    experiment_id: str = ""
    registration: Registration | None = None
    table: list[TrialRow] = field(default_factory=list)
    why: str = ""
    """Why the champion is the champion, in a sentence."""
    others: tuple[str, ...] = ()
    """The other objectives of a multi-objective sweep, after ``objective``."""


def trial_rows(
    results: Any,
    metric: str,
    mode: str,
    iterations: int,
    others: tuple[str, ...] = (),
    front: frozenset[str] = frozenset(),
) -> list[TrialRow]:
    """Every trial of a Tune ResultGrid, best first (by ``metric``; failures last), with the
    ``others`` objectives and whether it is on the Pareto ``front`` (trial ids)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        how = ended(result, iterations)

        def value(key: str, metrics: dict[str, Any] = metrics, how: str = how) -> float | None:
            found = metrics.get(key)
            return float(found) if found is not None and how != "diverged" else None

        trial_id = str(metrics.get("trial_id", "?"))
        rows.append(
            TrialRow(
                trial_id=trial_id,
                params=dict(result.config or {}),
                metric=value(metric),
                iteration=int(metrics.get(ITERATION, 0)),
                outcome=how,
                others=tuple(value(key) for key in others),
                on_front=trial_id in front,
            )
        )
    sign = 1.0 if mode == "min" else -1.0
    return sorted(rows, key=lambda r: (r.metric is None, sign * (r.metric or 0.0)))


def run_sweep(
    config: SweepConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    storage: str | Path | None = None,
    verbose: int = 1,
    resource_check: bool = True,
    tell: Callable[[str], None] = log.info,
) -> SweepResult:
    """Search ``config.search.space`` with Optuna on Ray Tune and track it in MLflow.

    Args:
        config: the validated sweep config; ``config.name`` names the sweep.
        address: a running Ray cluster (``HOST:PORT``, or ``auto`` for the one running on this
            machine); ``None`` or ``local`` starts a new local Ray, whatever else runs here
            (a Ray job's driver takes its cluster from ``$RAY_ADDRESS``).
        resume: continue the sweep ``config.name`` (finished trials are not re-run).
        storage: where Tune keeps trial checkpoints (default ``runs/sweeps``): a path, or a URI
            (``s3://...``) that every node of a cluster reaches.
        verbose: Tune's verbosity (1 shows the live table of trials).
        resource_check: refuse resources no node has now (turn off for autoscaling clusters,
            whose GPU nodes start when trials ask for them).
        tell: where to say what the sweep is doing (the CLI prints it), e.g. which cluster.

    Returns:
        The best trial, its parameters, validation and test metrics.

    Raises:
        UserError: an unreachable cluster or tracking store, a sweep that exists (or, with
            ``resume``, does not), an unreadable dataset, or resources no trial can get.
    """
    # Tune warns when checkpoints at every evaluation snapshot its state often; that is intended.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's automatic loggers include TensorBoard's, and a hint to run TensorBoard on its files;
    # the trials' curves are in MLflow, so only the CSV and JSON loggers are added (below).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Optuna logs each in-memory study it creates (the search's, the plots') at INFO.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
    # Read once here; Tune ships it to each node's object store once.
    dataset = open_dataset(config)
    problem = config.problem(dataset.metadata if dataset is not None else None)
    sources = build_sources(config, dataset)  # fail before launching trials on impossible episodes
    _check_memory(config, problem, sources)
    study_url = study_storage(config.search.study_storage, uri, sweep_dir)
    # Opened now only where it exists already: a new SQLite file waits until the checks pass.
    study_db = None
    if study_url is not None and study_exists(study_url):
        study_db = open_storage(study_url)
        if not resume:
            check_new_study(study_db, config.name, study_url)
    todo = plan(config, resume, study_db if resume else None)
    objectives = config.objectives(problem)
    metric, mode = objectives[0]
    earlier = None if resume else warm_start(config, uri, storage, objectives)
    # After the checks that need no store, so that a sweep refused by them creates none.
    tracker = SweepTracker(uri, config.tracking.experiment, config.name, resume=resume)
    if resume and not todo.kept:  # as Tune left it, which can finish the trials it planned only
        planned = tracker.planned_samples()
        if planned is not None and planned != config.search.num_samples:
            where = f"at {redact(study_url)}" if study_url else "(it stayed in Tune's memory)"
            raise UserError(
                f"sweep {config.name!r} has no Optuna study {where}, so it cannot be extended or "
                f"shortened: `--resume {config.name} --set search.num_samples={planned}` continues it"
            )
        tell(f"sweep {config.name} kept no Optuna study: it continues as Tune left it")
    owns_ray = _start_ray(address)
    try:
        where = _cluster_summary(owns_ray)
        tell(f"Ray: {where}")
        if resource_check:
            _check_resources(config, where)
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    tracker.open(resume)
    try:
        if todo.extends:  # MLflow's params are immutable: num_samples' new value goes in a tag
            tell(f"extending sweep {config.name} by {todo.samples} trials to {config.search.num_samples}")
            tracker.log_sweep({}, to_yaml(config))
            tracker.tag_sweep({"metasweep.num_samples": str(config.search.num_samples)})
        else:
            tracker.log_sweep(_sweep_params(config, objectives), to_yaml(config))
        trainable = tune.with_resources(
            tune.with_parameters(
                trial,
                sweep=config,
                problem=problem,
                # Nested, so that Ray hands each trial (and its workers) the reference.
                dataset=None if dataset is None else [ray.put(dataset)],
                workers_storage=f"{sweep_dir}/{WORKERS}",
                janitor=start_janitor() if config.search.workers_per_trial > 1 else None,
            ),
            _trial_resources(config),
        )
        experiment = todo.restore or todo.start or config.name
        earlier_results = _earlier_results(storage, todo.earlier, trainable)
        scheduler = None  # a restored sweep's is Tune's own copy
        run_config = tune.RunConfig(
            name=experiment.rsplit("/", 1)[-1],
            storage_path=f"{storage}/{experiment.rsplit('/', 1)[0]}" if "/" in experiment else storage,
            failure_config=tune.FailureConfig(max_failures=config.search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                TrackingCallback(config.train.iterations, config.seed),
                CSVLoggerCallback(),
                JsonLoggerCallback(),
            ],
            verbose=verbose,
        )
        if todo.restore is not None:
            for line in heal(f"{storage}/{todo.restore}"):
                tell(line)
            tuner = tune.Tuner.restore(f"{storage}/{todo.restore}", trainable=trainable, resume_errored=True)
        else:
            if study_url is None:
                tell(
                    "the sweep's Optuna study stays in Tune's memory (SQLite cannot live in object "
                    "storage); set search.study_storage to a database URL to keep it"
                )
            tracker.tag_sweep(study_tags(config.name, study_url))
            if study_url is not None and study_db is None:
                study_db = open_storage(study_url)
            first = [*(earlier.points if earlier else ()), *config.search.initial_points]
            first = [point for i, point in enumerate(first) if point not in first[:i]]
            search = StudySearch(
                space=OptunaSpace(config.algorithm, distributions(config.search.space)),
                # Lists make Tune's OptunaSearch a multi-objective study's.
                metric=[m for m, _ in objectives] if config.multi_objective else metric,
                mode=[d for _, d in objectives] if config.multi_objective else mode,
                sampler=make_sampler(config.search),
                # An extension's sampler learns from the earlier trials, which include them.
                points_to_evaluate=None if todo.extends else first or None,
                study_name=config.name,
                storage=study_db,
            )
            if earlier is not None:
                search.add_observations(earlier.trials)
                tracker.tag_sweep(earlier.provenance)
                tell(f"warm start from {earlier.sweeps}: {earlier.summary}")
            if study_db is not None:
                record_plan(study_db, config, todo, ", ".join(m for m, _ in objectives))
            scheduler = make_scheduler(config, objectives)
            carried = carry_rungs(scheduler, earlier_results) if todo.extends else 0
            if carried:
                tell(f"early stopping: the new trials are judged with {carried} earlier trials at each rung")
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search,
                    scheduler=scheduler,
                    num_samples=todo.samples,
                    max_concurrent_trials=config.search.max_concurrent,
                    time_budget_s=config.search.time_budget_s,
                    reuse_actors=reuse_actors(config),
                ),
                run_config=run_config,
            )
        warm = threading.Thread(target=_warm_closing_steps, name="metasweep-warm-up", daemon=True)
        warm.start()
        with tracking_to(tracker), _stop_on_sigterm() as stopped:
            results = [*earlier_results, *_each(tuner.fit())]
        warm.join()
        if stopping := stopping_summary(scheduler):  # None for a restored sweep's (Tune's copy)
            tell(f"early stopping: {stopping}")
        if stopped.is_set():
            raise KeyboardInterrupt(f"stopped; `--resume {config.name}` continues the sweep")
        known = {str(r.metrics["trial_id"]) for r in results if r.metrics and "trial_id" in r.metrics}
        lost = tracker.end_lost_trials(known)
        if study_db is not None:
            lost_numbers = fail_lost_trials(study_db, config.name)
            if lost_numbers:
                tell(f"Optuna trials {', '.join(map(str, lost_numbers))} marked failed: {LOST}")
        if lost:
            tell(f"trials {', '.join(lost)} ended as KILLED in MLflow: {LOST}")
        if study_db is not None:  # from MLflow's trial runs to the study's trials
            numbers = trial_numbers(study_db, config.name)
            for trial_id, number in numbers.items():
                if trial_id in tracker.children:
                    tracker.tag_trial(trial_id, {"metasweep.optuna_trial": str(number)})
        choice: Choice | None = None
        if config.multi_objective or config.tracking.champion_constraints:
            choice = choose(results, objectives, config.tracking.champion_constraints, config.name)
            best, why = choice.champion.result, choice.why
        else:
            best, score = _best_result(results, metric, mode)
            best_of = "highest" if mode == "max" else "lowest"
            why = (
                f"trial {(best.metrics or {}).get('trial_id')}: the {best_of} {metric} ({score:.4g}) "
                f"at any evaluation of the {len(results)} trials"
            )
        if best.checkpoint is None or best.metrics is None:
            raise UserError("no trial reported a result; see the errors above")
        best_params = dict(best.config or {})
        gone = UserError(f"the best trial's checkpoint is not on storage: {best.checkpoint.path}")
        try:
            with best.checkpoint.as_directory() as saved_dir:  # downloaded from object storage
                if not (Path(saved_dir) / CHECKPOINT).exists():  # nothing can score or register it
                    raise gone
                saved = read_run(Path(saved_dir) / CHECKPOINT)
        except FileNotFoundError:
            raise gone from None
        inputs = Inputs(problem, build_sources(saved.config, dataset))
        best_id = str(best.metrics.get("trial_id"))
        steps = saved.config.eval_inner_steps
        tell(
            f"scoring trial {best_id} on {saved.config.eval.test_tasks} meta-test tasks"
            + (f", {steps} inner steps each" if steps is not None else "")
        )
        test_metrics = evaluate_run(saved, inputs)
        # A Pareto front only with several objectives (one objective's candidates all share one).
        pareto = choice if config.multi_objective else None
        others = tuple(m for m, _ in objectives[1:])
        tracker.outbox.drain()  # trial records buffered through a tracking-server outage
        last = choice.champion.values if choice is not None else best.metrics
        best_metrics = {k: float(v) for k, v in last.items() if k.startswith(("val/", "cost/"))}
        tracker.log_best(best_id, best_params, {**best_metrics, **test_metrics})
        tracker.tag_sweep({"metasweep.champion": why})
        tell(f"drawing the plots of the sweep's {len(results)} trials and logging them to its MLflow run")
        with tempfile.TemporaryDirectory() as tmp:
            for plot in sweep_plots(results, config, problem, Path(tmp)):
                tracker.log_artifact(plot, "plots")
            if pareto is not None:
                _log_front(tracker, pareto, objectives, config, Path(tmp))
        registration = None
        if config.tracking.registered_model:
            tell(f"registering the best model as {config.tracking.registered_model}")
            registration = _register(
                tracker, config.tracking.registered_model, saved.config, saved.weights, inputs, test_metrics
            )
        tracker.finish("FINISHED")
        return SweepResult(
            name=config.name,
            objective=metric,
            best_trial=best_id,
            best_params=best_params,
            best_metrics=best_metrics,
            test_metrics=test_metrics,
            trials=len(results),
            parent_run_id=tracker.parent_id,
            tracking_uri=uri,
            experiment_id=tracker.experiment_id,
            registration=registration,
            table=trial_rows(
                results,
                metric,
                mode,
                config.train.iterations,
                others=others,
                front=frozenset(t.trial_id for t in pareto.front) if pareto else frozenset(),
            ),
            why=why,
            others=others,
        )
    except BaseException as exc:
        if not resume:  # a sweep that never got going leaves no folder behind for --resume
            discard_if_alone(sweep_dir)
        try:
            tracker.outbox.flush(wait=True)
            tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", error=str(exc))
        except Exception as closing:  # the sweep's own error is the one to report
            log.warning("could not mark the sweep's MLflow run as ended: %s", closing)
        raise
    finally:
        if owns_ray:
            ray.shutdown()


def _warm_closing_steps() -> None:
    """Import and prepare, while the trials run, what scoring, plotting and registering the best
    trial need: several seconds a sweep that would otherwise come after its last trial."""
    try:
        import torch._dynamo  # noqa: F401  # torch.func's first use imports it (3 s)

        warm_plots()
        warm_registry()
    except Exception as exc:  # only ever a head start: the steps themselves will say what fails
        log.debug("warming up the closing steps: %s", exc)


def _earlier_results(storage: str, experiments: tuple[str, ...], trainable: Any) -> list[Any]:
    """The results of the sweep's earlier Tune experiments (an extended sweep's), all ended."""
    grids = [tune.Tuner.restore(f"{storage}/{e}", trainable=trainable).get_results() for e in experiments]
    return [result for grid in grids for result in _each(grid)]


def _each(grid: Any) -> list[Any]:
    """The results of a Tune ``ResultGrid``, as a list."""
    return [grid[i] for i in range(len(grid))]


def _best_result(results: list[Any], metric: str, mode: str) -> tuple[Any, float]:
    """The trial with the best ``metric`` at any of its evaluations (Tune's ``scope="all"``),
    and that value."""
    sign = 1.0 if mode == "min" else -1.0
    best, score = None, math.inf
    for result in results:
        frame = evaluations(result.metrics_dataframe)
        if frame is None or metric not in frame:
            continue
        values = [sign * float(v) for v in frame[metric] if v is not None and math.isfinite(float(v))]
        if values and min(values) < score:
            best, score = result, min(values)
    if best is None:
        raise UserError("no trial reported a result; see the errors above")
    return best, sign * score


def _log_front(
    tracker: SweepTracker,
    choice: Choice,
    objectives: tuple[tuple[str, Any], ...],
    config: SweepConfig,
    folder: Path,
) -> None:
    """The Pareto front on the parent run (a CSV table and a plot, under ``pareto/``), and on
    each child run whether it is on it (an extended sweep's front moves: its old tags go)."""
    table = front_table(choice, objectives, config.train.iterations, folder / "pareto_front.csv")
    plot = front_plot(
        choice,
        objectives,
        f"{config.name}: Pareto front of {len(choice.trials)} trials",
        folder / "pareto_front.png",
    )
    for path in (table, plot):
        tracker.log_artifact(path, "pareto")
    for t in choice.trials:
        if t.trial_id in tracker.children:
            tracker.tag_trial(t.trial_id, {FRONT_TAG: str(t.front == 0).lower()})


def _sweep_params(config: SweepConfig, objectives: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    s = config.search
    params: dict[str, Any] = {f"space.{k}": v.model_dump(exclude_none=True) for k, v in s.space.items()}
    params.update(
        {f"search.{k}": v for k, v in s.model_dump(exclude={"space"}).items()},
    )
    params["algorithm"] = config.algorithm
    params["objective"] = ", ".join(f"{metric} ({mode})" for metric, mode in objectives)
    return params


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
    start a new local Ray; returns whether this process started it (and so must shut it down).

    A plain ``ray.init()`` would attach to any cluster already running on the machine (a test
    cluster, another user's); only an explicit address (``auto`` included) attaches."""
    address = address or os.environ.get("RAY_ADDRESS") or LOCAL_RAY
    try:
        if address == LOCAL_RAY:
            start_local_ray()
            return True
        ray.init(address=address, log_to_driver=False)
        return False
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"cannot connect to a Ray cluster at {address}: {exc}. If the cluster uses token "
            "authentication, set RAY_AUTH_TOKEN or copy the head node's ~/.ray/auth_token here"
        ) from None


def _cluster_summary(owned: bool) -> str:
    """Which Ray the sweep runs on, in words: where it is, its nodes, CPUs and GPUs."""
    total = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    where = "a new local instance" if owned else f"the cluster at {ray.get_runtime_context().gcs_address}"
    return (
        f"{where}, {nodes} node{'s' * (nodes != 1)}, {total.get('CPU', 0.0):g} CPUs, "
        f"{total.get('GPU', 0.0):g} GPUs"
    )


def _check_memory(config: SweepConfig, problem: Problem, sources: Sources) -> None:
    """CPU trials' ``train.memory`` settings, checked on this machine before any trial starts,
    with every searched integer (inner steps, meta-batch, filters) at its largest: the trial
    that needs the most memory. Each trial checks its own again where it runs. GPU trials are
    left to that: what they need on their GPU is not what the driver's CPU would measure, and
    measuring it here would take minutes for a large backbone."""
    t = config.train
    on_cpu = config.search.gpus_per_trial == 0 and config.device != "cuda"
    if not on_cpu or (t.memory_budget_gb is None and t.memory.task_chunk != "auto"):
        return
    largest = {
        key: int(spec.high or 0)
        for key, spec in config.search.space.items()
        if spec.type == "int" and applies(key, config.algorithm)
    }
    task_chunk(config.run_config(largest), problem, sources.train, torch.device("cpu"))


def _check_resources(config: SweepConfig, where: str) -> None:
    total = ray.cluster_resources()
    s = config.search
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if s.gpus_per_trial > 0 and gpus == 0:
        raise UserError(
            f"search.gpus_per_trial={s.gpus_per_trial} but the Ray cluster has no GPUs ({where}); "
            "set search.gpus_per_trial=0"
        )
    if s.cpus_per_trial > cpus:
        raise UserError(
            f"search.cpus_per_trial={s.cpus_per_trial} but the Ray cluster has {cpus:g} CPUs ({where})"
        )
    if s.gpus_per_trial > gpus:
        raise UserError(
            f"search.gpus_per_trial={s.gpus_per_trial} but the Ray cluster has {gpus:g} GPUs ({where})"
        )
    fits = math.floor(cpus / s.cpus_per_trial)
    if s.gpus_per_trial > 0:
        fits = min(fits, math.floor(gpus / s.gpus_per_trial))
    if s.workers_per_trial > 1:  # each worker is placed on one node, a trial's may spread
        places = _worker_places(s.cpus_per_worker, s.gpus_per_worker)
        if places < s.workers_per_trial:
            raise UserError(
                f"search.workers_per_trial={s.workers_per_trial} workers, each with "
                f"{s.cpus_per_worker:g} CPU and {s.gpus_per_worker:g} GPU, but the Ray cluster's nodes "
                f"place at most {places} ({where}); lower workers_per_trial or the per-trial resources"
            )
        fits = min(fits, places // s.workers_per_trial)
    if s.max_concurrent > fits:
        raise UserError(
            f"search.max_concurrent={s.max_concurrent} but the Ray cluster fits at most {fits} trials "
            f"at once ({where}); lower max_concurrent or the per-trial resources, or pass "
            "--address for another cluster"
        )


def reuse_actors(config: SweepConfig) -> bool:
    """Whether a new trial runs in the process of one that ended (Tune's ``reuse_actors``).

    A trial of one worker does: no process start, no second import of torch and the dataset
    (seconds a trial, on a laptop). A trial of several workers does not. Its process only drives
    a Ray Train run, and Tune gives an ended trial's thread 2 s to finish before it reuses the
    process (``TUNE_FUNCTION_THREAD_TIMEOUT_S``). A Train run stopped by ASHA takes longer than that
    to take down its workers on a busy machine, and Tune then fails the next trial for good
    ("Trainable runner reuse requires reset_config() to be implemented and return True"; no
    retry), which a two-worker sweep did on a loaded 2-core machine.
    """
    return config.search.workers_per_trial == 1


def _trial_resources(config: SweepConfig) -> dict[str, float]:
    """What Tune reserves for one trial: all of it for a trial of one worker; for a trial of
    several, nothing but a token, since the trial's process only relays what its Ray Train
    workers report and the workers reserve their own (Tune refuses an empty request)."""
    s = config.search
    if s.workers_per_trial > 1:
        return {"cpu": 0, "memory": 1}
    return {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial}


def _worker_places(cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` and ``gpus`` the cluster's live nodes hold at once."""
    places = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        fit = math.floor(have.get("CPU", 0.0) / cpus + 1e-9)
        if gpus > 0:
            fit = min(fit, math.floor(have.get("GPU", 0.0) / gpus + 1e-9))
        places += fit
    return places


def _register(
    tracker: SweepTracker,
    name: str,
    best: RunConfig,
    weights: dict[str, Any],
    inputs: Inputs,
    test_metrics: dict[str, float],
) -> Registration:
    """Hand the best trial's model to the registry with the facts that make versions comparable."""
    problem: Problem = inputs.problem
    metric = f"test/{problem.metric}"
    candidate = Candidate(
        metric=metric,
        value=test_metrics[metric],
        mode=problem.mode,
        fingerprint=problem.fingerprint,
        protocol=scoring_protocol(problem, best.data, best.eval),
    )
    spec = ModelSpec(problem, best.learner_spec(), best.eval_inner_steps)
    return register(
        tracker,
        name=name,
        spec=spec,
        weights=weights,
        input_example=input_example(inputs),
        candidate=candidate,
    )
