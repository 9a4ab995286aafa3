"""Meta-gradients in bounded memory: the meta-batch in chunks of tasks, and what a task costs.

Second-order memory grows with the meta-batch (every task's graph is alive until the backward
pass) and with the inner steps (every step's activations are). :func:`meta_backward` bounds the
first: the meta-batch runs ``task_chunk`` tasks at a time, each chunk's gradient accumulated
before the next chunk's graph is built. The learners' ``checkpoint_inner`` bounds the second
(:func:`metasweep.algorithms.functional.adapt_tasks`). :func:`measure_footprint` says what a
chunk needs, and :func:`largest_chunk` picks the largest chunk that fits a budget.
"""

from __future__ import annotations

import copy
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from metasweep.algorithms.learners import MetaLearner


def meta_backward(
    learner: MetaLearner[Any],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    task_chunk: int | None = None,
) -> Tensor:
    """Accumulate the meta-gradient of a meta-batch into the parameters' ``.grad``.

    Every learner's meta-loss is the mean of its tasks' losses (equal query sets), so the chunks'
    losses, each weighted by its share of the tasks, sum to the meta-batch's loss, and their
    gradients to its gradient: the same update as one pass, up to float rounding.

    Args:
        learner: any :class:`~metasweep.algorithms.MetaLearner`.
        support_x, support_y, query_x, query_y: the meta-batch, ``(tasks, n, ...)`` each.
        task_chunk: tasks per pass; ``None`` (or the meta-batch size) is one pass.

    Returns:
        The meta-batch's meta-loss, detached.

    Raises:
        ValueError: ``task_chunk`` is below 1.
    """
    tasks = support_x.shape[0]
    chunk = tasks if task_chunk is None else task_chunk
    if chunk < 1:
        raise ValueError(f"task_chunk must be at least 1, got {chunk}")
    if chunk >= tasks:
        loss = learner.meta_loss(support_x, support_y, query_x, query_y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()
    total = torch.zeros((), dtype=torch.float64, device=support_x.device)
    for start in range(0, tasks, chunk):
        part = slice(start, start + chunk)
        share = (min(start + chunk, tasks) - start) / tasks
        loss = learner.meta_loss(support_x[part], support_y[part], query_x[part], query_y[part]) * share
        loss.backward()  # type: ignore[no-untyped-call]
        total += loss.detach()
    return total.to(support_x.dtype if support_x.is_floating_point() else torch.float32)


@dataclass(frozen=True)
class Footprint:
    """What one pass of :func:`meta_backward` keeps for its backward pass: ``fixed_bytes +
    tasks * task_bytes`` at its peak.

    Attributes:
        task_bytes: what each task of a chunk adds.
        fixed_bytes: what a chunk needs whatever its size (saved meta-parameters and the like).
    """

    task_bytes: int
    fixed_bytes: int

    def chunk_bytes(self, tasks: int) -> int:
        """The peak of a chunk of ``tasks`` tasks."""
        return self.fixed_bytes + tasks * self.task_bytes


def measure_footprint(
    learner: MetaLearner[Any], support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
) -> Footprint:
    """Measure the peak memory of the meta-gradient of one task and of two (the first two of the
    batch given), on a copy of ``learner``.

    What is measured is every allocation the forward and backward passes make, from the
    allocator: :func:`torch.cuda.max_memory_allocated` on CUDA, the profiler's memory events on
    the CPU (a few times slower than the passes themselves, once). The values of the inputs do
    not matter, only their shapes: blank tensors of the dataset's shape give the same answer.

    Args:
        learner: the learner to measure; it and its gradients are left untouched.
        support_x, support_y, query_x, query_y: a meta-batch of at least two tasks.

    Returns:
        The footprint per task and fixed.

    Raises:
        ValueError: fewer than two tasks.
    """
    if support_x.shape[0] < 2:
        raise ValueError("measuring a footprint needs a meta-batch of at least two tasks")
    peaks = []
    for tasks in (1, 2):
        batch = (support_x[:tasks], support_y[:tasks], query_x[:tasks], query_y[:tasks])
        peaks.append(peak_bytes(_on_a_copy(learner, batch), support_x.device))
    task_bytes = max(peaks[1] - peaks[0], 1)
    return Footprint(task_bytes=task_bytes, fixed_bytes=max(peaks[0] - task_bytes, 0))


def _on_a_copy(
    learner: MetaLearner[Any], batch: tuple[Tensor, Tensor, Tensor, Tensor]
) -> Callable[[], object]:
    def run() -> None:
        probe = copy.deepcopy(learner)  # made and freed inside the measurement
        meta_backward(probe, *batch)

    return run


def peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """The most memory ``run()`` held at once on ``device`` beyond what was held before."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    # Kineto announces every profiling session on stderr unless told otherwise.
    os.environ.setdefault("KINETO_LOG_LEVEL", "10")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        run()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in profiled.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


def largest_chunk(footprint: Footprint, tasks: int, budget_bytes: float) -> int:
    """The largest chunk of ``tasks`` that divides it evenly and fits ``budget_bytes``.

    Raises:
        ValueError: not even one task fits; the message says what one task needs.
    """
    fitting = [c for c in range(1, tasks + 1) if tasks % c == 0 and footprint.chunk_bytes(c) <= budget_bytes]
    if not fitting:
        raise ValueError(
            f"one task's meta-gradient needs about {footprint.chunk_bytes(1) / 2**30:.3g} GiB "
            f"({footprint.task_bytes / 2**30:.3g} GiB a task plus {footprint.fixed_bytes / 2**30:.3g} "
            f"GiB), more than the budget of {budget_bytes / 2**30:.3g} GiB"
        )
    return fitting[-1]
