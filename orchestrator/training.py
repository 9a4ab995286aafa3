"""One meta-training run: settings in, metrics out.

Used as it is by ``metasweep train`` on one machine, and by the sweep trainable on Ray workers;
it knows nothing of Ray or MLflow. Everything it reports goes through the ``on_eval`` callback
and its return value.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from algorithms import (
    ALGORITHMS,
    MLP,
    Conv4,
    MetaLearner,
    SinusoidTasks,
    TaskSource,
    evaluate,
    fixed_episodes,
)
from algorithms.tasks import Episode
from orchestrator.config import SINUSOID, RunConfig, to_yaml
from orchestrator.errors import TrainingDiverged, UserError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
EvalCallback = Callable[[int, dict[str, float]], None]


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


def build_sources(config: RunConfig) -> Sources:
    """The task distributions named by ``data.dataset``, one per split.

    Raises:
        UserError: a missing or unreadable dataset, or episodes the dataset cannot hold.
    """
    d = config.data
    if d.dataset == SINUSOID:
        sinusoid = SinusoidTasks(shots=d.shots, queries=d.queries)
        return Sources(sinusoid, sinusoid, sinusoid)
    from orchestrator.datasets import EpisodeSampler, load_dataset

    dataset = load_dataset(d.dataset)
    eval_queries = config.eval.queries or d.queries

    def split(name: str, queries: int) -> EpisodeSampler:
        return EpisodeSampler(dataset, name, d.ways, d.shots, queries, d.rotations)

    return Sources(split(d.split, d.queries), split("val", eval_queries), split("test", eval_queries))


def build_learner(config: RunConfig, source: TaskSource) -> nn.Module:
    """The backbone wrapped in the configured meta-learner, initialised from ``config.seed``."""
    regression = source.task_kind == "regression"
    # Model initialisation is the one place that uses the global RNG (nn.Linear's init);
    # fork it so that callers' RNG streams are left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.model.name == "mlp":
            model: nn.Module = MLP(1, config.model.hidden, 1)
        else:
            size, _, channels = getattr(source, "image_shape", (28, 28, 1))
            ways = None if config.algorithm == "protonet" else config.data.ways
            model = Conv4(channels, size, ways, config.model.filters)
        loss_fn = F.mse_loss if regression else F.cross_entropy
        cls = ALGORITHMS[config.algorithm]
        t = config.train
        if config.algorithm == "protonet":
            return cls(model, loss_fn=loss_fn, strategy=t.strategy)
        return cls(model, t.inner_lr, t.inner_steps, t.first_order, loss_fn, t.strategy)


@dataclass
class RunState:
    """Everything needed to continue a run exactly where it stopped."""

    learner: nn.Module
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
        """Restore what :meth:`state_dict` saved."""
        self.iteration = int(state["iteration"])
        self.learner.load_state_dict(state["learner"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def new_state(config: RunConfig, source: TaskSource, device: torch.device) -> RunState:
    """A fresh learner, meta-optimiser and episode generator for ``config``."""
    learner = build_learner(config, source).to(device)
    t = config.train
    optimizer: torch.optim.Optimizer
    if t.meta_optimizer == "adam":
        optimizer = torch.optim.Adam(learner.parameters(), lr=t.meta_lr)
    else:
        optimizer = torch.optim.SGD(learner.parameters(), lr=t.meta_lr)
    return RunState(learner, optimizer, torch.Generator().manual_seed(config.seed))


def save_checkpoint(state: RunState, config: RunConfig, path: Path) -> None:
    """Write the run state atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({**state.state_dict(), "config": config.model_dump(mode="json")}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code.

    Raises:
        UserError: missing or unreadable file.
    """
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}; train a run first (metasweep train CONFIG)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None


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
    learner: nn.Module, episodes: list[Episode], source: TaskSource, config: RunConfig, split: str
) -> dict[str, float]:
    """Score ``learner`` on held-out episodes with ``eval.inner_steps`` adaptation steps."""
    device = next(learner.parameters()).device
    metrics = evaluate(
        learner,  # type: ignore[arg-type]
        episodes,
        task_kind=source.task_kind,
        inner_steps=config.eval.inner_steps,
        split=split,
        device=device,
    )
    if not all(math.isfinite(v) for v in metrics.values()):
        log.warning(
            "%s metrics are not finite after eval.inner_steps=%d: adaptation diverges on held-out "
            "tasks; lower eval.inner_steps or train with as many inner steps",
            split, config.eval.inner_steps,
        )  # fmt: skip
    return metrics


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    on_eval: EvalCallback | None = None,
    show_progress: bool = True,
    test: bool = True,
) -> dict[str, float]:
    """Meta-train as ``config`` says, evaluate on meta-test, and return the final metrics.

    Meta-validation runs every ``train.eval_every`` iterations and after the last one; each time
    a checkpoint is written to ``<run_dir>/checkpoint.pt`` and a line to ``metrics.jsonl``.

    Args:
        config: the validated run configuration.
        resume: continue from ``<run_dir>/checkpoint.pt`` if it exists (same config required).
        on_eval: called as ``on_eval(iteration, metrics)`` after every meta-validation.
        show_progress: draw a progress bar on stderr.
        test: score meta-test at the end; sweeps leave it to the driver, after the search, so
            that test tasks never influence which trial wins.

    Returns:
        ``train/loss``, ``val/*`` and (with ``test``) ``test/*`` metrics of the final model, and
        ``time/seconds``.

    Raises:
        UserError: bad device, unreadable dataset, or a checkpoint from a different config.
    """
    device = resolve_device(config.device)
    sources = build_sources(config)
    source = sources.train
    held_out = held_out_episodes(config, sources)
    state = new_state(config, source, device)
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
    elif not resume:
        (run_dir / METRICS).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(config))

    t = config.train
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    window: list[float] = []
    smoothed = math.nan
    with _progress(show_progress) as progress:
        task = progress.add_task(config.name, total=t.iterations, completed=state.iteration, loss=math.nan)
        while state.iteration < t.iterations:
            episode = source.sample(t.meta_batch_size, state.generator).to(device)
            state.optimizer.zero_grad(set_to_none=True)
            loss = cast(MetaLearner, state.learner).meta_loss(
                episode.support_x, episode.support_y, episode.query_x, episode.query_y
            )
            loss.backward()
            state.optimizer.step()
            state.iteration += 1
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"meta-training diverged at iteration {state.iteration} (loss={value}); "
                    "lower train.inner_lr or train.meta_lr"
                )
            window.append(value)
            smoothed = value if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * value
            progress.update(task, advance=1, loss=smoothed)
            if state.iteration % t.eval_every == 0 or state.iteration == t.iterations:
                metrics = {"train/loss": sum(window) / len(window)}
                window.clear()
                metrics.update(evaluate_split(state.learner, held_out.val, source, config, "val"))
                save_checkpoint(state, config, checkpoint)
                _append_metrics(run_dir / METRICS, state.iteration, metrics)
                if on_eval is not None:
                    on_eval(state.iteration, metrics)
    if not metrics:  # zero iterations to go (resumed a finished run, or iterations: 0)
        metrics = evaluate_split(state.learner, held_out.val, source, config, "val")
        save_checkpoint(state, config, checkpoint)
    if test:
        metrics.update(evaluate_split(state.learner, held_out.test, source, config, "test"))
    metrics["time/seconds"] = time.perf_counter() - started
    _append_metrics(run_dir / METRICS, state.iteration, metrics)
    return metrics


def _without_budget(config: dict[str, Any]) -> dict[str, Any]:
    # A resumed run may train for longer, evaluate differently or live in another directory
    # (a retried sweep trial gets a fresh one); everything else must match.
    return {
        **config,
        "train": {**config["train"], "iterations": None, "eval_every": None},
        "eval": None,
        "output_dir": None,
    }


def _append_metrics(path: Path, iteration: int, metrics: dict[str, float]) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def evaluate_again(checkpoint: Path, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Re-score a saved run on its meta-test tasks, with ``eval.*`` overrides applied.

    Raises:
        UserError: missing checkpoint or invalid overrides.
    """
    from orchestrator.config import load_config_dict

    saved = load_checkpoint(checkpoint)
    config: RunConfig = load_config_dict(saved["config"], overrides, source=str(checkpoint))
    device = resolve_device(config.device)
    sources = build_sources(config)
    state = new_state(config, sources.train, device)
    state.load_state_dict(saved)
    return evaluate_split(
        state.learner, held_out_episodes(config, sources).test, sources.test, config, "test"
    )
