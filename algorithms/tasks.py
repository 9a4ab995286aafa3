"""Task distributions: where episodes come from.

A task source draws a batch of episodes from a ``torch.Generator``; nothing here touches the
global RNG, so the same seed gives the same episodes on any machine. Image datasets (Parquet)
implement the same :class:`TaskSource` protocol in ``orchestrator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Episode:
    """A batch of tasks, each with a support and a query set.

    Attributes:
        support_x: ``(tasks, ways*shots, *input_shape)``, or ``(tasks, shots, 1)`` for regression.
        support_y: ``(tasks, ways*shots)`` class labels ``0..ways-1``, or ``(tasks, shots, 1)``.
        query_x: ``(tasks, queries_per_task, *input_shape)``.
        query_y: ``(tasks, queries_per_task)`` or ``(tasks, queries_per_task, 1)``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, device: torch.device) -> Episode:
        """The same episode with every tensor on ``device``."""
        return Episode(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))

    @property
    def tasks(self) -> int:
        """Number of tasks in the batch."""
        return self.support_x.shape[0]


class TaskSource(Protocol):
    """Draws batches of episodes.

    Invariant: ``sample`` depends only on its arguments and the generator's state, which it
    advances; the source itself holds no RNG state, so one source may serve many generators.
    """

    @property
    def task_kind(self) -> str:
        """``"regression"`` or ``"classification"``: which metric and loss apply."""
        ...

    def sample(self, tasks: int, generator: torch.Generator, queries: int | None = None) -> Episode:
        """Draw ``tasks`` episodes; ``queries`` overrides the source's query-set size."""
        ...


@dataclass(frozen=True)
class SinusoidTasks:
    """Sinusoid regression, ``y = A sin(x − φ)``, as in the MAML paper.

    Args:
        shots: support points per task (K).
        queries: query points per task.
        amplitude: range of the uniform amplitude ``A``.
        phase: range of the uniform phase ``φ``.
        x_range: range of the uniform inputs ``x``.

    References:
        Finn et al., ICML 2017, Section 5.1 (amplitude U[0.1, 5.0], phase U[0, π],
        x U[−5, 5]).
    """

    shots: int = 10
    queries: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    task_kind: str = "regression"

    def sample(self, tasks: int, generator: torch.Generator, queries: int | None = None) -> Episode:
        """Draw ``tasks`` sinusoids with ``shots`` support and ``queries`` query points each."""
        q = self.queries if queries is None else queries
        amp = _uniform((tasks, 1, 1), self.amplitude, generator)
        phase = _uniform((tasks, 1, 1), self.phase, generator)
        x = _uniform((tasks, self.shots + q, 1), self.x_range, generator)
        y = amp * torch.sin(x - phase)
        return Episode(x[:, : self.shots], y[:, : self.shots], x[:, self.shots :], y[:, self.shots :])


def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)


def fixed_episodes(
    source: TaskSource, tasks: int, batch_size: int, seed: int, queries: int | None = None
) -> list[Episode]:
    """A fixed, seeded set of ``tasks`` episodes in batches of at most ``batch_size``.

    Meta-validation and meta-test use these so that every run and every trial of a sweep is
    scored on the same tasks.
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, tasks, batch_size):
        batches.append(source.sample(min(batch_size, tasks - start), generator, queries))
    return batches
