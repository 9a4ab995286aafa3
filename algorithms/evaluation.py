"""Evaluation over a fixed set of held-out tasks: mean and 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor

from metasweep.algorithms.learners import InnerLoopLearner, MetaLearner
from metasweep.algorithms.tasks import Episode


def per_task_scores(predictions: Tensor, targets: Tensor, task_kind: str) -> Tensor:
    """One score per task: accuracy for classification, MSE for regression.

    Args:
        predictions: ``(tasks, q, ways)`` logits or ``(tasks, q, 1)`` regression outputs.
        targets: ``(tasks, q)`` labels or ``(tasks, q, 1)`` values.
        task_kind: ``"classification"`` or ``"regression"``.

    Returns:
        ``(tasks,)`` scores.
    """
    if task_kind == "classification":
        return (predictions.argmax(-1) == targets).float().mean(1)
    return (predictions - targets).pow(2).flatten(1).mean(1)


def summarize(scores: Tensor, split: str, metric: str) -> dict[str, float]:
    """``{split/metric: mean, split/metric_ci95: 1.96·std/√n}`` over per-task scores."""
    n = scores.numel()
    std = scores.std().item() if n > 1 else 0.0
    return {f"{split}/{metric}": scores.mean().item(), f"{split}/{metric}_ci95": 1.96 * std / math.sqrt(n)}


def adapt_with(
    learner: MetaLearner[Any], support_x: Tensor, support_y: Tensor, inner_steps: int | None = None
) -> Any:
    """``learner.adapt`` on a batch of support sets, with ``inner_steps`` adaptation steps for a
    learner with an inner loop (``None``: the learner's own)."""
    if inner_steps is None:
        return learner.adapt(support_x, support_y)
    return cast(InnerLoopLearner[Any], learner).adapt(support_x, support_y, inner_steps=inner_steps)


def evaluate(
    learner: MetaLearner[Any],
    episodes: Iterable[Episode],
    *,
    task_kind: str,
    inner_steps: int | None = None,
    split: str = "test",
    device: torch.device | None = None,
) -> dict[str, float]:
    """Adapt to each held-out task and score its query set.

    Args:
        learner: the meta-learner; it is not modified.
        episodes: batches of held-out tasks (see :func:`algorithms.tasks.fixed_episodes`).
        task_kind: ``"classification"`` (reports ``accuracy``) or ``"regression"`` (``mse``).
        inner_steps: adaptation steps at evaluation time (``None``: the learner's own); only for
            learners with an inner loop (``learner.capabilities.inner_loop``).
        split: the metric prefix, ``val`` or ``test``.
        device: where to move each batch; ``None`` leaves it where it is.

    Returns:
        ``{f"{split}/accuracy": mean, f"{split}/accuracy_ci95": ...}`` or the ``mse`` pair,
        plus ``f"{split}/loss"``: the mean query loss.

    Raises:
        ValueError: ``inner_steps`` for a learner without an inner loop.
    """
    if inner_steps is not None and not learner.capabilities.inner_loop:
        raise ValueError(f"{type(learner).__name__} has no inner loop; evaluate it without inner_steps")
    metric = "accuracy" if task_kind == "classification" else "mse"
    scores, losses = [], []
    with torch.no_grad():
        for episode in episodes:
            if device is not None:
                episode = episode.to(device)
            adapted = adapt_with(learner, episode.support_x, episode.support_y, inner_steps)
            predictions = learner.predict(adapted, episode.query_x)
            scores.append(per_task_scores(predictions, episode.query_y, task_kind).cpu())
            loss_fn = learner.loss_fn
            losses.append(
                loss_fn(predictions.flatten(0, 1), episode.query_y.flatten(0, 1)).item() * episode.tasks
            )
    all_scores = torch.cat(scores)
    result = summarize(all_scores, split, metric)
    result[f"{split}/loss"] = sum(losses) / all_scores.numel()
    return result
