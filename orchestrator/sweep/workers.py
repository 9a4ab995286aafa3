"""One run over several workers: a Ray Train job (``TorchTrainer``, Train V2) whose workers are
replicas of the same run, each taking the meta-gradient of its share of every meta-batch
(:func:`metasweep.orchestrator.training.train` with ``distributed``).

A sweep's trial of ``search.workers_per_trial`` workers, and ``metasweep train`` with
``train.workers``, call :func:`train_on_workers` from their own process and hear from it what
they would hear from :func:`~metasweep.orchestrator.training.train` itself: ``on_step`` and
``on_eval`` calls, and the final metrics.

How reports travel: every ``ray.train.report`` is a barrier of all workers, so the workers call
it together at meta-validations and at progress points that rank 0 chooses (by time) and
broadcasts; Train's controller hands rank 0's report to a callback, which puts it on a Ray queue
that this process reads while ``fit`` runs in a thread. Rank 0's checkpoint goes with each
meta-validation's report into Train's storage, where a restarted worker group (after a worker
failed) resumes from it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
from ray.train.v2.api.callback import UserCallback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
from ray.util.queue import Empty, Queue

from metasweep.orchestrator.config import RunConfig
from metasweep.orchestrator.data.format import EpisodicDataset
from metasweep.orchestrator.errors import TrainingDiverged, UserError
from metasweep.orchestrator.problem import Problem
from metasweep.orchestrator.training import (
    CHECKPOINT,
    Inputs,
    build_sources,
    open_dataset,
    resolve_device,
    train,
)

log = logging.getLogger(__name__)

ReportedCheckpoint = ray.train.Checkpoint
"""Where rank 0's checkpoint of a meta-validation lies in Train's storage."""
EvalCallback = Callable[[int, dict[str, float], ReportedCheckpoint | None], None]
"""``on_eval(iteration, metrics, checkpoint)``: after every meta-validation."""
StepCallback = Callable[[int, float], None]
"""``on_step(iteration, loss)``: at progress points (``loss``: the mean since the last one), and
once first with the iteration training starts from (``loss`` NaN)."""

PROGRESS_EVERY_S = 5.0
"""Seconds between the progress reports of ``metasweep train``'s workers: each costs a barrier
of all workers, and one within 2 s of the last waits for Train's controller to collect it."""

_EVENT, _STEP, _EVAL, _FINAL, _DIVERGED = "metasweep.event", "step", "eval", "final", "diverged"


@dataclass(frozen=True)
class Placement:
    """What each worker of a run reserves (how many workers there are is ``train.workers``)."""

    cpus_per_worker: float
    gpus_per_worker: float
    max_failures: int = 0
    """Restarts of the worker group, from the last checkpoint, after a worker fails."""


@dataclass(frozen=True)
class Replicas:
    """What every worker needs to train its replica (shipped to each once)."""

    config: RunConfig
    problem: Problem
    dataset: list[Any] | None
    """``[ObjectRef]`` of the episodic dataset in Ray's object store (nested, so that Ray hands
    the reference, not a copy, to each worker); ``None`` for sinusoids."""
    lead_dir: str | None
    """Where rank 0 writes the run (``metasweep train``'s run directory); ``None``: a
    temporary folder (a sweep's trial, whose checkpoints travel through Train's storage)."""
    resume: bool
    overwrite: bool
    test: bool
    every_s: float
    """Seconds between progress points."""


def train_on_workers(
    replicas: Replicas,
    placement: Placement,
    *,
    storage: str,
    name: str,
    checkpoint: ReportedCheckpoint | None = None,
    on_eval: EvalCallback | None = None,
    on_step: StepCallback | None = None,
    janitor: Any = None,
) -> dict[str, float]:
    """Train ``replicas.config`` on its ``train.workers`` Ray Train workers and return rank 0's
    final metrics (what :func:`~metasweep.orchestrator.training.train` returns).

    Args:
        replicas: the run and how to train it.
        placement: each worker's resources.
        storage: Train's storage (a path or URI every worker reaches); the run is ``name`` in it.
        name: the Train run's name (a sweep's trial id).
        checkpoint: start from this checkpoint (a sweep's trial restarted by Tune).
        on_eval, on_step: called in this process as the workers report.
        janitor: a :class:`GroupJanitor` to free the workers' placement group should this
            process end, and the run's controller with it, before the run has (a sweep's).

    Raises:
        UserError: what a replica raised as one (e.g. a run another process holds).
        TrainingDiverged: the meta-training loss became NaN or infinite.
        ray.train.TrainingFailedError: the workers failed more than ``max_failures`` times.
    """
    queue: Queue = Queue(actor_options={"num_cpus": 0})
    use_gpu = placement.gpus_per_worker > 0
    resources = {"CPU": placement.cpus_per_worker, **({"GPU": placement.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _replica,
        train_loop_config={"replicas": replicas},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=replicas.config.train.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=placement.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Train V2's callbacks; Ray's annotations name V1's type.
            callbacks=cast(Any, [_Forward(queue), _Handle(queue, janitor)]),
        ),
        resume_from_checkpoint=checkpoint,
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # raised again below, in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="metasweep-train-workers", daemon=True)
    controller = None
    final: dict[str, float] = {}
    thread.start()
    try:
        while thread.is_alive() or not queue.empty():
            try:
                kind, item, saved = queue.get(timeout=0.2)
            except Empty:
                continue
            if kind == "controller":
                controller = item
                continue
            event = item.pop(_EVENT, None)
            iteration = int(item.pop("iteration", 0))
            if event == _STEP and on_step is not None:
                on_step(iteration, float(item["loss"]))
            elif event == _EVAL and on_eval is not None:
                on_eval(iteration, item, saved)
            elif event == _FINAL:
                final = item
            elif event == _DIVERGED:
                raise TrainingDiverged(str(item["reason"]))
        thread.join()
    finally:
        if thread.is_alive() and controller is not None:
            # The caller stopped listening (Tune stopped the trial, Ctrl-C): the workers go too.
            _abort(controller)
        thread.join(timeout=30)
        ray.kill(cast(Any, queue.actor))
    error = outcome.get("error")
    if error is not None:
        raise _user_error(error) or error
    return final


def train_locally(
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
    tell: Callable[[str], None] = log.info,
) -> dict[str, float]:
    """``metasweep train`` of ``train.workers`` workers on a new local Ray: one CPU each, or one
    GPU each where the run trains on CUDA. Rank 0 writes the run directory, as
    :func:`~metasweep.orchestrator.training.train` would.

    Raises:
        UserError: more workers than this machine has CPUs (or GPUs), an unreadable dataset,
            or what :func:`~metasweep.orchestrator.training.train` refuses.
    """
    workers = config.train.workers
    cuda = resolve_device(config.device).type == "cuda"
    have = torch.cuda.device_count() if cuda else os.cpu_count() or 1
    if workers > have:
        unit = "GPU" if cuda else "CPU"
        raise UserError(
            f"train.workers={workers} but this machine has {have} {unit}s, and a worker takes one; "
            f"lower train.workers, or run a sweep with search.workers_per_trial on a cluster"
        )
    dataset = open_dataset(config)
    problem = config.problem(dataset.metadata if dataset is not None else None)
    build_sources(config, dataset)  # refuse impossible episodes before Ray starts
    # Rank 0 names the run directory absolutely (a worker runs in a folder of its own), so its
    # parent must exist, as training.train would make it.
    lead_dir = config.run_dir.resolve()
    lead_dir.parent.mkdir(parents=True, exist_ok=True)
    backend = "NCCL" if cuda else "gloo"
    tell(f"training on {workers} Ray Train workers ({backend}) on a new local Ray; they are slow to start")
    start_local_ray()
    try:
        replicas = Replicas(
            config, problem, None if dataset is None else [ray.put(dataset)], lead_dir=str(lead_dir),
            resume=resume, overwrite=overwrite, test=True, every_s=PROGRESS_EVERY_S,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="metasweep-workers-") as storage:
            return train_on_workers(
                replicas,
                Placement(1.0, 1.0 if cuda else 0.0),
                storage=storage,
                name=config.name,
                on_step=on_step,
            )
    finally:
        ray.shutdown()


def start_local_ray() -> None:
    """Start a new Ray on this machine for this process alone: no dashboard, workers' output kept
    in Ray's logs, Ray's notice of its own token authentication dropped."""
    # Ray turns token authentication on for a new local instance, and says so on every start;
    # the notice is about Ray's default, not about anything the user did.
    logging.getLogger(RAY_AUTH_LOGGER).addFilter(_token_auth_notice)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _token_auth_notice(record: logging.LogRecord) -> bool:
    """A log filter: drops Ray's "token authentication is enabled" notice, keeps the rest."""
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


ABORT_TIMEOUT_S = 60.0
"""How long a run's controller gets to stop its workers and free their placement group."""


def _abort(controller: Any) -> None:
    """End a Train run whose caller stopped listening, freeing its workers' resources.

    The controller's own ``abort`` stops the workers and removes their placement group. Killing
    the controller instead would leave that group's reservation to Train's placement-group
    cleaner, which asks Ray's state API whether the controller lives: without a dashboard (a
    sweep's local Ray) it never hears, the group keeps its CPUs, and the sweep's next trial of
    several workers waits for them for ever.
    """
    try:
        ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except ray.exceptions.RayActorError:
        pass  # abort ends the controller's process: the expected answer
    except ray.exceptions.GetTimeoutError:
        log.warning("Ray Train's controller did not stop in %.0f s; killing it", ABORT_TIMEOUT_S)
        ray.kill(controller)


def _user_error(error: BaseException) -> UserError | None:
    """The :class:`UserError` a worker raised, found inside Train's error, if there is one."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        stack += [getattr(exc, "cause", None), exc.__cause__, exc.__context__]
        stack += list(getattr(exc, "worker_failures", {}).values())
    return None


class _Forward(UserCallback):
    """Runs in Train's controller: puts rank 0's reports on the caller's queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: ReportedCheckpoint | None
    ) -> None:
        self.queue.put(("report", dict(metrics[0]), checkpoint))


class _Handle(ControllerCallback, WorkerGroupCallback):
    """Runs in Train's controller: hands the caller the controller's actor, so that a caller
    that stops listening can end the run (``fit`` in a thread cannot be interrupted), and the
    janitor, if there is one, each placement group the controller makes for its workers."""

    def __init__(self, queue: Queue, janitor: Any = None) -> None:
        self.queue = queue
        self.janitor = janitor

    def after_controller_start(self, train_run_context: Any) -> None:
        self.queue.put(("controller", ray.get_runtime_context().current_actor, None))

    def after_worker_group_start(self, worker_group: Any) -> None:
        if self.janitor is not None:  # where Train's own placement-group cleaner finds it
            group = worker_group.get_worker_group_state().placement_group_handle.placement_group
            ray.get(self.janitor.watch.remote(ray.get_runtime_context().current_actor, group))


def start_janitor() -> Any:
    """A new :class:`GroupJanitor` actor, owned by this process."""
    return ray.remote(num_cpus=0)(GroupJanitor).remote()


class GroupJanitor:
    """Frees the placement group of a Ray Train run whose controller died before freeing it.

    Tune ends a trial by ending the trial's process, and the trial's Train controller dies with
    it, whatever the run was doing. A controller that dies so leaves its workers' placement
    group reserved, for Ray removes a group only once both its creator and its job have ended
    (a sweep's job ends with the sweep), and the next trial of several workers waits for the
    CPUs for ever. Train's own cleaner asks Ray's state API whether the controller lives, and
    a sweep's local Ray has no dashboard to answer it. One janitor serves a sweep, owned by its
    driver; it asks each controller itself, every ``every_s`` seconds.
    """

    def __init__(self, every_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, tuple[Any, list[PlacementGroup]]] = {}
        threading.Thread(target=self._loop, args=(every_s,), name="metasweep-janitor", daemon=True).start()

    def watch(self, controller: Any, group: PlacementGroup) -> None:
        """Free ``group`` once ``controller`` has died (a restarted worker group adds another)."""
        with self._lock:
            self._watched.setdefault(controller._actor_id.hex(), (controller, []))[1].append(group)

    def _loop(self, every_s: float) -> None:
        asked: dict[str, Any] = {}  # one question in flight a controller
        while True:
            time.sleep(every_s)
            with self._lock:
                watched = dict(self._watched)
            for key, (controller, groups) in watched.items():
                question = asked.setdefault(key, controller.__ray_ready__.remote())
                answered, _ = ray.wait([question], timeout=0)
                if not answered:
                    continue
                del asked[key]
                try:
                    ray.get(question)
                except ray.exceptions.RayActorError:
                    for group in groups:
                        _remove(group)
                    with self._lock:
                        del self._watched[key]


def _remove(group: PlacementGroup) -> None:
    """Remove ``group`` unless it is gone already (a controller that ended well removed it)."""
    try:
        if placement_group_table(group).get("state", "REMOVED") != "REMOVED":
            remove_placement_group(group)
            log.warning("freed placement group %s of a Ray Train run whose controller died", group.id.hex())
    except Exception as exc:  # one group's failure must not stop the janitor
        log.warning("could not free placement group %s: %s", group.id.hex(), exc)


def _replica(settings: dict[str, Any]) -> None:
    """One worker: train its replica of the run, reporting with the others."""
    r: Replicas = settings["replicas"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    lead = rank == 0
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the config's "cuda" is this worker's GPU
    work = Path(r.lead_dir) if lead and r.lead_dir else Path(tempfile.mkdtemp(prefix="metasweep-replica-"))
    own = not (lead and r.lead_dir)
    restored = ray.train.get_checkpoint()
    if restored is not None:  # every replica resumes from the same checkpoint
        work.mkdir(parents=True, exist_ok=True)
        with restored.as_directory() as saved:
            shutil.copy(Path(saved) / CHECKPOINT, work / CHECKPOINT)
    elif r.resume and r.lead_dir and not lead and (Path(r.lead_dir) / CHECKPOINT).is_file():
        shutil.copy(Path(r.lead_dir) / CHECKPOINT, work / CHECKPOINT)  # one machine: a local Ray
    config = r.config.model_copy(update={"output_dir": str(work)})
    dataset: EpisodicDataset | None = ray.get(r.dataset[0]) if r.dataset else None
    flag = torch.zeros(1, device=device)
    last = {"at": time.monotonic()}
    losses: list[float] = []

    def report(metrics: dict[str, Any], checkpoint: bool = False) -> None:
        saved = ray.train.Checkpoint.from_directory(str(work)) if lead and checkpoint else None
        ray.train.report(metrics if lead else {}, checkpoint=saved)
        # From the report's end: a report blocks until Train's controller, polling every
        # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), has taken the one before it.
        last["at"] = time.monotonic()

    def step(iteration: int, loss: float) -> None:
        if math.isnan(loss):  # the iteration training starts from
            report({_EVENT: _STEP, "iteration": iteration, "loss": loss})
            return
        losses.append(loss)
        if config.train.evaluates_at(iteration):
            return
        # Every worker must reach the same reports: rank 0's clock decides for all.
        flag.fill_(float(time.monotonic() - last["at"] >= r.every_s) if lead else 0.0)
        dist.broadcast(flag, src=0)
        if flag.item():
            report({_EVENT: _STEP, "iteration": iteration, "loss": sum(losses) / len(losses)})
            losses.clear()

    def evaluated(iteration: int, metrics: dict[str, float]) -> None:
        losses.clear()
        report({_EVENT: _EVAL, "iteration": iteration, **metrics}, checkpoint=True)

    inputs = Inputs(r.problem, build_sources(config, dataset))
    try:
        final = train(
            config,
            inputs,
            resume=r.resume or restored is not None,
            overwrite=r.overwrite and restored is None,
            on_eval=evaluated,
            on_step=step,
            test=r.test,
            distributed=True,
        )
    except TrainingDiverged as exc:  # the loss is the whole meta-batch's: every replica is here
        report({_EVENT: _DIVERGED, "reason": str(exc)})
        return
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    report({_EVENT: _FINAL, **final})
