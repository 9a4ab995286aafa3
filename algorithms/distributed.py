"""Data-parallel meta-gradients: a meta-batch's tasks split over the processes of a
``torch.distributed`` group, each process left with the whole meta-batch's gradient.

Every process draws the whole meta-batch (the same seed gives every process the same tasks), keeps
its shard (:func:`task_shard`), takes the meta-gradient of its tasks with their share of the
meta-loss's weight, and the gradients are summed across processes with one all-reduce. So ``N``
processes step their meta-optimisers with exactly the update one process computes from the whole
meta-batch (up to float rounding), and the same seed gives the same tasks at the same positions
of the meta-batch whatever ``N`` is.

The learner is not wrapped in ``DistributedDataParallel``: DDP reduces gradients from hooks on the
module's parameters as its forward and backward run, and the functional inner loop uses the
parameters through ``torch.func.functional_call`` (and, second order, differentiates through their
gradients), which is where DDP's hooks and MAML's inner loop fight (learn2learn #128, #170). An
explicit all-reduce after the backward pass has no hooks to fight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from metasweep.algorithms.learners import MetaLearner
from metasweep.algorithms.memory import meta_backward


def task_shard(tasks: int, rank: int, world: int) -> slice:
    """The tasks of process ``rank`` of ``world``: contiguous, the first ``tasks % world``
    processes one more than the others (a process may have none when ``world > tasks``).

    Raises:
        ValueError: a rank outside ``0..world-1``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of the {world} processes")
    base, extra = divmod(tasks, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def distributed_meta_backward(
    learner: MetaLearner[Any],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    task_chunk: int | None = None,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Leave the whole meta-batch's meta-gradient in ``.grad`` on every process of ``group``.

    Args:
        learner: this process's replica; every replica must hold the same parameters.
        support_x, support_y, query_x, query_y: the whole meta-batch, the same on every process.
        task_chunk: tasks per pass within this process's shard (:func:`meta_backward`).
        group: the process group (default: the whole world).

    Returns:
        The whole meta-batch's meta-loss, detached, the same on every process.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    tasks = support_x.shape[0]
    part = task_shard(tasks, rank, world)
    share = (part.stop - part.start) / tasks
    params = [p for p in learner.parameters() if p.requires_grad]
    loss = torch.zeros((), dtype=torch.float64, device=support_x.device)
    if share:
        batch = (support_x[part], support_y[part], query_x[part], query_y[part])
        loss += meta_backward(learner, *batch, task_chunk=task_chunk).to(torch.float64) * share
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    # One collective for every gradient, not one per tensor.
    flat = torch.cat([g.reshape(-1) * share for g in grads] + [loss.to(grads[0].dtype).reshape(1)])
    dist.all_reduce(flat, group=group)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    return flat[-1].detach().clone()
