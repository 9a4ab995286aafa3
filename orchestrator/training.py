"""One meta-training run: settings in, metrics out.

Used as it is by ``metasweep train`` on one machine, and by the sweep's trials on Ray workers;
it knows nothing of Ray, MLflow or the terminal. Everything it reports goes through the
``on_eval`` and ``on_step`` callbacks and its return value.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from metasweep.algorithms import MetaLearner, SinusoidTasks, TaskSource, evaluate, fixed_episodes
from metasweep.algorithms.distributed import distributed_meta_backward
from metasweep.algorithms.evaluation import adapt_with
from metasweep.algorithms.memory import largest_chunk, measure_footprint, meta_backward
from metasweep.algorithms.tasks import Episode
from metasweep.orchestrator.config import RunConfig, load_config_dict, to_yaml
from metasweep.orchestrator.data.format import EpisodicDataset, load_dataset
from metasweep.orchestrator.data.sampler import EpisodeSampler
from metasweep.orchestrator.errors import TrainingDiverged, UserError
from metasweep.orchestrator.learner import build_learner
from metasweep.orchestrator.outputs import check_output
from metasweep.orchestrator.problem import Problem

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"
CHECKPOINT_KEYS = ("config", "learner", "optimizer", "iteration")
RUN_FILES = (CHECKPOINT, METRICS, "config.yaml")
EvalCallback = Callable[[int, dict[str, float]], None]
"""``on_eval(iteration, metrics)``: after every meta-validation."""
StepCallback = Callable[[int, float], None]
"""``on_step(iteration, loss)``: after every meta-iteration (a progress bar)."""


def resolve_device(name: str) -> torch.device:
    """Map the config's ``device`` to a torch device.

    Raises:
        UserError: ``cuda`` requested where no GPU is visible.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was requested but no CUDA GPU is visible; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Sources:
    """Where the training, validation and test episodes of a run come from."""

    train: TaskSource
    val: TaskSource
    test: TaskSource


def build_sources(config: RunConfig, dataset: EpisodicDataset | None) -> Sources:
    """The task distributions of ``data``, one per split, drawn from ``dataset`` (``None`` for
    sinusoids).

    Raises:
        UserError: episodes the dataset cannot hold.
    """
    d = config.data
    if dataset is None:
        sinusoid = SinusoidTasks(shots=d.shots, queries=d.queries)
        return Sources(sinusoid, sinusoid, sinusoid)
    eval_queries = config.eval.queries or d.queries

    def split(name: str, queries: int) -> EpisodeSampler:
        return EpisodeSampler(dataset, name, d.ways, d.shots, queries, d.rotations)

    return Sources(split(d.split, d.queries), split("val", eval_queries), split("test", eval_queries))


def open_dataset(config: RunConfig) -> EpisodicDataset | None:
    """The run's image dataset, read from ``data.dataset``; ``None`` for sinusoids.

    Raises:
        UserError: a missing, unreadable or non-metasweep dataset.
    """
    return load_dataset(config.data.dataset) if config.task_kind == "classification" else None


@dataclass(frozen=True)
class Inputs:
    """What a run learns from: the problem, and where its episodes come from."""

    problem: Problem
    sources: Sources


def prepare(config: RunConfig, dataset: EpisodicDataset | None = None) -> Inputs:
    """Read the dataset (unless given), describe the problem once and build the samplers.

    Raises:
        UserError: an unreadable dataset or episodes it cannot hold.
    """
    dataset = dataset if dataset is not None else open_dataset(config)
    problem = config.problem(dataset.metadata if dataset is not None else None)
    return Inputs(problem, build_sources(config, dataset))


@dataclass
class RunState:
    """Everything needed to continue a run exactly where it stopped."""

    learner: MetaLearner[Any]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    iteration: int = 0

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, loadable with ``torch.load(weights_only=True)``."""
        return {
            "iteration": self.iteration,
            "learner": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Raises:
            UserError: a state that does not fit this run's learner (another model's checkpoint).
        """
        try:
            self.iteration = int(state["iteration"])
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"the checkpoint does not fit the run's learner: {str(exc)[:300]}") from None


def new_state(config: RunConfig, problem: Problem, device: torch.device) -> RunState:
    """A fresh learner, meta-optimiser and episode generator for ``config``."""
    t = config.train
    learner = build_learner(config.learner_spec(), problem, device, t.memory.checkpoint_inner)
    optimizer: torch.optim.Optimizer
    if t.meta_optimizer == "adam":
        optimizer = torch.optim.Adam(learner.parameters(), lr=t.meta_lr)
    else:
        optimizer = torch.optim.SGD(learner.parameters(), lr=t.meta_lr)
    return RunState(learner, optimizer, torch.Generator().manual_seed(config.seed))


def save_checkpoint(state: RunState, config: RunConfig, path: Path) -> None:
    """Write the run state so that ``path`` always holds a whole checkpoint, the old or the new,
    even through a crash or power loss: a temporary file of its own in the same folder, flushed
    to disk, renamed over ``path``, and the folder's entry flushed too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state.state_dict(), "config": config.model_dump(mode="json")}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def check_run_dir(config: RunConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start over an earlier run of the same name unless told which to do.

    Cheap and read-only, so the CLI calls it before any data is read; :func:`train` calls it
    again under the run's lock.

    Raises:
        UserError: both flags, a run directory that is a file, or an earlier run there without
            ``resume`` or ``overwrite``.
    """
    run_dir = config.run_dir
    if resume and overwrite:
        raise UserError("give either --resume (continue the run) or --overwrite (start it over), not both")
    if config.output_dir:
        check_output(config.output_dir, "output_dir", folder=True)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"the run directory {str(run_dir)!r} is a file; set output_dir or name elsewhere")
    if resume or overwrite:
        return
    if any((run_dir / name).exists() for name in RUN_FILES):
        raise UserError(
            f"run {config.name!r} already exists in {str(run_dir)!r}; continue it with --resume, start "
            "it over with --overwrite, or give the new run another name (--set name=...)"
        )


@contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the run directory for one process: a second ``metasweep train`` of the same run, on
    this machine or another sharing the folder, is refused instead of interleaving its metrics
    and checkpoints with this one's. The lock goes with the process, however it ends. A
    directory made here and left without a run file (the run failed before its first write) is
    removed again.

    Raises:
        UserError: another process holds the run.
    """
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"run {str(run_dir)!r} is in use by another metasweep process (pid {holder}); wait "
                "for it to end, or give this run another name (--set name=...)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    except BaseException:
        if made and not any((run_dir / name).exists() for name in RUN_FILES):
            (run_dir / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code.

    Raises:
        UserError: missing or unreadable file.
    """
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}; train a run first (metasweep train CONFIG)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing or not isinstance(saved["config"], dict):
        raise UserError(
            f"{str(path)!r} is not a metasweep checkpoint (it lacks {', '.join(missing) or 'a config'}); "
            "give the run directory 'metasweep train' wrote"
        )
    return saved


@dataclass(frozen=True)
class HeldOut:
    """The fixed meta-validation and meta-test episodes of a run."""

    val: list[Episode]
    test: list[Episode]


def held_out_episodes(config: RunConfig, sources: Sources) -> HeldOut:
    """Seeded held-out episodes; they depend on ``eval.seed`` only, never on the training seed."""
    e = config.eval
    return HeldOut(
        val=fixed_episodes(sources.val, e.val_tasks, e.batch_size, e.seed, e.queries),
        test=fixed_episodes(sources.test, e.test_tasks, e.batch_size, e.seed + 1, e.queries),
    )


def evaluate_split(
    learner: MetaLearner[Any], episodes: list[Episode], problem: Problem, config: RunConfig, split: str
) -> dict[str, float]:
    """Score ``learner`` on held-out episodes with ``eval.inner_steps`` adaptation steps (for a
    learner with an inner loop)."""
    device = next(learner.parameters()).device
    steps = config.eval_inner_steps
    metrics = evaluate(
        learner, episodes, task_kind=problem.task_kind, inner_steps=steps, split=split, device=device
    )
    if not all(math.isfinite(v) for v in metrics.values()):
        log.warning(
            "%s metrics are not finite after eval.inner_steps=%s: adaptation diverges on held-out "
            "tasks; lower eval.inner_steps or train with as many inner steps",
            split, steps,
        )  # fmt: skip
    return metrics


ADAPT_REPEATS = 5
"""Timed adaptations behind ``cost/adapt_ms`` (their median), after one untimed warm-up."""


def adaptation_cost(learner: MetaLearner[Any], episode: Episode, config: RunConfig) -> dict[str, float]:
    """What adapting to one new task costs the trained model, as a deployed meta-learner pays
    it: ``cost/adapt_ms``, the median wall time of adapting to the support set of the first task
    of ``episode`` (the configured shape) with ``eval.inner_steps`` steps on the learner's
    device, and ``cost/inner_steps``, those steps (0 for a learner without an inner loop)."""
    device = next(learner.parameters()).device
    support_x, support_y = episode.support_x[:1].to(device), episode.support_y[:1].to(device)
    steps = config.eval_inner_steps

    def adapt() -> None:
        adapt_with(learner, support_x, support_y, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    with torch.no_grad():
        adapt()
        for _ in range(ADAPT_REPEATS):
            started = time.perf_counter()
            adapt()
            times.append(time.perf_counter() - started)
    return {"cost/adapt_ms": 1000 * float(np.median(times)), "cost/inner_steps": float(steps or 0)}


def train(
    config: RunConfig,
    inputs: Inputs,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_eval: EvalCallback | None = None,
    on_step: StepCallback | None = None,
    test: bool = True,
    distributed: bool = False,
) -> dict[str, float]:
    """Meta-train as ``config`` says, evaluate on meta-test, and return the final metrics.

    Meta-validation runs every ``train.eval_every`` iterations and after the last one; each time
    a checkpoint is written to ``<run_dir>/checkpoint.pt`` and a line to ``metrics.jsonl``.

    With ``distributed``, this process is one of the ``train.workers`` replicas of the default
    ``torch.distributed`` process group, all called with the same config and checkpoint: each
    takes the meta-gradient of its share of every meta-batch, the gradients are summed across
    replicas before each meta-optimiser step
    (:func:`~metasweep.algorithms.distributed.distributed_meta_backward`), and so every replica
    holds the parameters one process would reach alone. Rank 0 alone
    evaluates, writes the checkpoint and metrics, and returns metrics; the other ranks write
    nothing to their run directories and return ``{}``.

    Args:
        config: the validated run configuration.
        inputs: the problem and the samplers (:func:`prepare`).
        resume: continue from ``<run_dir>/checkpoint.pt`` if it exists (same config required).
        overwrite: start over an earlier run of the same name (its checkpoint and metrics go).
            Without ``resume`` or ``overwrite`` an earlier run is never touched.
        on_eval: called as ``on_eval(iteration, metrics)`` after every meta-validation (on
            ranks other than 0, at the same iterations with ``{}``: callbacks that synchronise
            the replicas are reached by all of them).
        on_step: called as ``on_step(iteration, loss)`` after every meta-iteration, and once
            before the first with the iteration it starts from (``loss`` NaN); ``loss`` is the
            whole meta-batch's on every rank.
        test: score meta-test at the end; sweeps leave it to the driver, after the search, so
            that test tasks never influence which trial wins.
        distributed: train as one replica of the default process group (above).

    Returns:
        ``train/loss``, ``val/*`` and (with ``test``) ``test/*`` metrics of the final model, and
        ``time/seconds``.

    Raises:
        UserError: bad device, a checkpoint from a different config, an earlier run without
            ``resume`` or ``overwrite``, or a run another process holds.
        TrainingDiverged: the meta-training loss became NaN or infinite.
    """
    device = resolve_device(config.device)
    check_run_dir(config, resume, overwrite)
    chunk = task_chunk(config, inputs.problem, inputs.sources.train, device)
    world = dist.get_world_size() if distributed else 1
    if world != config.train.workers:
        raise ValueError(f"train.workers={config.train.workers} but {world} processes train together")
    with locked_run_dir(config.run_dir):
        check_run_dir(config, resume, overwrite)  # again, now that no other process can write
        if overwrite:
            for name in RUN_FILES:
                (config.run_dir / name).unlink(missing_ok=True)
        return _train(config, inputs, resume, on_eval, on_step, test, chunk, distributed)


def task_chunk(config: RunConfig, problem: Problem, source: TaskSource, device: torch.device) -> int | None:
    """The tasks per pass the run trains with (``None``: the whole meta-batch at once), checked
    against ``train.memory_budget_gb`` where one is set.

    With a budget, or ``task_chunk: auto``, the meta-gradient of one task and of two is measured
    first (:func:`metasweep.algorithms.memory.measure_footprint`, on tasks drawn from ``source``
    with a generator of its own), so a run that cannot fit stops before it trains.

    Raises:
        UserError: ``auto`` on the CPU without a budget, a budget below what one task needs
            (the message says how much that is), or a chunk over the budget.
    """
    t = config.train
    chunk, budget = t.memory.task_chunk, t.memory_budget_gb
    if chunk != "auto" and budget is None:
        return chunk
    if budget is not None:
        budget_bytes, limit = budget * 2**30, f"train.memory_budget_gb={budget:g}"
    elif device.type == "cuda":
        budget_bytes, limit = torch.cuda.mem_get_info(device)[0], "the GPU's free memory"
    else:
        raise UserError(
            "train.memory.task_chunk: auto on the CPU needs train.memory_budget_gb (only a GPU says "
            "how much memory is free); set it, or give task_chunk a number"
        )
    learner = build_learner(config.learner_spec(), problem, device, t.memory.checkpoint_inner)
    sample = source.sample(2, torch.Generator().manual_seed(0)).to(device)
    footprint = measure_footprint(learner, sample.support_x, sample.support_y, sample.query_x, sample.query_y)
    try:
        fits = largest_chunk(footprint, t.worker_tasks, budget_bytes)
    except ValueError as exc:
        raise UserError(f"{limit}: {exc}; {_SAVINGS}") from None
    if chunk == "auto":
        need = footprint.chunk_bytes(fits) / 2**30
        log.info("meta-gradients in chunks of %d tasks (about %.3g GiB each)", fits, need)
        return fits
    whole = chunk or t.worker_tasks
    if footprint.chunk_bytes(whole) > budget_bytes:
        raise UserError(
            f"a pass of {whole} tasks needs about {footprint.chunk_bytes(whole) / 2**30:.3g} GiB "
            f"({footprint.task_bytes / 2**30:.3g} GiB a task), more than {limit}; "
            f"train.memory.task_chunk: {fits} fits (auto picks it), or {_SAVINGS}"
        )
    return chunk


_SAVINGS = "raise the budget, set train.memory.checkpoint_inner: true, or lower data.shots or data.queries"


def _train(
    config: RunConfig,
    inputs: Inputs,
    resume: bool,
    on_eval: EvalCallback | None,
    on_step: StepCallback | None,
    test: bool,
    chunk: int | None,
    distributed: bool,
) -> dict[str, float]:
    lead = not distributed or dist.get_rank() == 0
    device = resolve_device(config.device)
    problem, sources = inputs.problem, inputs.sources
    source = sources.train
    held_out = held_out_episodes(config, sources)
    state = new_state(config, problem, device)
    run_dir = config.run_dir
    checkpoint = run_dir / CHECKPOINT
    if resume and checkpoint.is_file():
        saved = load_checkpoint(checkpoint)
        if _without_budget(saved["config"]) != _without_budget(config.model_dump(mode="json")):
            raise UserError(
                f"{checkpoint} was written by a different config; use another name/output_dir "
                "or drop --resume to start over"
            )
        state.load_state_dict(saved)
        log.info("resuming %s at iteration %d", run_dir, state.iteration)
    if lead:
        (run_dir / "config.yaml").write_text(to_yaml(config))

    t = config.train
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    window: list[float] = []
    if on_step is not None:
        on_step(state.iteration, math.nan)
    while state.iteration < t.iterations:
        episode = source.sample(t.meta_batch_size, state.generator).to(device)
        state.optimizer.zero_grad(set_to_none=True)
        batch = (episode.support_x, episode.support_y, episode.query_x, episode.query_y)
        if distributed:
            loss = distributed_meta_backward(state.learner, *batch, task_chunk=chunk)
        else:
            loss = meta_backward(state.learner, *batch, chunk)
        state.optimizer.step()
        state.iteration += 1
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"meta-training diverged at iteration {state.iteration} (loss={value}); "
                "lower train.inner_lr or train.meta_lr"
            )
        window.append(value)
        if on_step is not None:
            on_step(state.iteration, value)
        if t.evaluates_at(state.iteration):
            metrics = {"train/loss": sum(window) / len(window)}
            window.clear()
            if lead:
                metrics.update(evaluate_split(state.learner, held_out.val, problem, config, "val"))
                metrics.update(adaptation_cost(state.learner, held_out.val[0], config))
                save_checkpoint(state, config, checkpoint)
                _append_metrics(run_dir / METRICS, state.iteration, metrics)
            if on_eval is not None:
                on_eval(state.iteration, metrics if lead else {})
    if not lead:
        return {}
    if not metrics:  # zero iterations to go (resumed a finished run, or iterations: 0)
        metrics = evaluate_split(state.learner, held_out.val, problem, config, "val")
        metrics.update(adaptation_cost(state.learner, held_out.val[0], config))
        save_checkpoint(state, config, checkpoint)
    if test:
        metrics.update(evaluate_split(state.learner, held_out.test, problem, config, "test"))
    metrics["time/seconds"] = time.perf_counter() - started
    _append_metrics(run_dir / METRICS, state.iteration, metrics)
    return metrics


def _without_budget(config: dict[str, Any]) -> dict[str, Any]:
    # A resumed run may train for longer, evaluate differently, fit memory otherwise or on
    # another number of workers (the same gradients) or live in another directory (a retried
    # sweep trial gets a fresh one); everything else must match. Checkpoints of earlier
    # versions hold no memory or worker settings.
    train = {**config["train"], "iterations": None, "eval_every": None}
    for name in ("memory", "memory_budget_gb", "workers"):
        train.pop(name, None)
    return {
        **config,
        "train": train,
        "eval": None,
        "output_dir": None,
    }


def _append_metrics(path: Path, iteration: int, metrics: dict[str, float]) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")


@dataclass(frozen=True)
class Saved:
    """A trained run read back from its checkpoint: its config (with any overrides) and the
    checkpoint's contents (:meth:`RunState.state_dict`)."""

    config: RunConfig
    state: dict[str, Any]

    @property
    def weights(self) -> dict[str, Any]:
        """The learner's ``state_dict``."""
        return dict(self.state["learner"])


def read_run(checkpoint: Path, overrides: Sequence[str] = ()) -> Saved:
    """The config (with ``overrides``) and state saved in a checkpoint.

    Raises:
        UserError: missing or unreadable checkpoint, or invalid overrides.
    """
    saved = load_checkpoint(checkpoint)
    config = load_config_dict(saved["config"], overrides, RunConfig, str(checkpoint))
    return Saved(config, saved)


def evaluate_run(saved: Saved, inputs: Inputs) -> dict[str, float]:
    """Score a saved run on its meta-test tasks (``saved.config.eval`` says how).

    Raises:
        UserError: a device the run asks for that is not here.
    """
    config = saved.config
    # The learner alone: building a meta-optimiser would import torch's compiler (seconds).
    learner = build_learner(config.learner_spec(), inputs.problem, resolve_device(config.device))
    try:
        learner.load_state_dict(saved.weights)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"the checkpoint does not fit the run's learner: {str(exc)[:300]}") from None
    return evaluate_split(
        learner, held_out_episodes(config, inputs.sources).test, inputs.problem, config, "test"
    )


def input_example(inputs: Inputs, seed: int = 0) -> dict[str, np.ndarray]:
    """One meta-test task as a user hands it to the served model: stored uint8 pixels (``(n, H, W)``
    for one channel, as PIL gives them) and labels, or float ``(n, 1)`` regression points."""
    generator = torch.Generator().manual_seed(seed)
    test = inputs.sources.test
    if isinstance(test, EpisodeSampler):
        raw = test.sample_images(1, generator, queries=1)

        def as_pil(images: np.ndarray) -> np.ndarray:
            return images[..., 0] if images.shape[-1] == 1 else images

        return {
            "support_x": as_pil(raw.support_x[0]),
            "support_y": raw.support_y[0],
            "query_x": as_pil(raw.query_x[0]),
        }
    episode = test.sample(1, generator, queries=5)
    return {
        "support_x": episode.support_x[0].numpy(),
        "support_y": episode.support_y[0].numpy(),
        "query_x": episode.query_x[0].numpy(),
    }
