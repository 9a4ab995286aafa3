"""Would second-order MAML on Conv-4 run faster with tasks in parallel threads? On a 2-core CPU a
task's convolutions are small, so PyTorch's two intra-op threads do not double its speed; two
Python threads of one intra-op thread each, one task per thread at a time, might. Measured here
in one process on the same episodes, alternating:

- ``two intra-op threads``: ``MAML.meta_loss(...).backward()``, as training runs it (the default);
- ``one intra-op thread``: the same, ``torch.set_num_threads(1)``;
- ``two task threads``: each task's query loss and its meta-gradient (``torch.autograd.grad``)
  in a pool of two threads with one intra-op thread each, the gradients summed in task order,
  the images channels-last as ``meta_loss`` stores them (``task_layout``).
  ``functional_call`` swaps a module's parameters while it runs, so each thread has its own copy
  of the module; the meta-parameters stay the learner's;
- ``their work in one thread``: the same per-task gradients one after another on one intra-op
  thread: what the two task threads would each take twice as long for, if they scaled.

    python benchmarks/task_threads.py --iterations 5

Omniglot-shaped random episodes (1x28x28), 5-way 1-shot 15-query, meta-batch 32, one inner step.
Prints tasks per second of each (median, and the slowest to the fastest meta-iteration), and
the largest difference of the task-thread meta-gradient from ``meta_loss``'s (float32 rounding,
through second-order BatchNorm; ``--float64`` shows it is rounding only).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metasweep.algorithms import MAML, Conv4
from metasweep.algorithms.functional import adapt_task, task_layout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _episodes import omniglot_episode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5, help="timed meta-iterations per way")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--float64", action="store_true", help="check the gradients in float64 (slow)")
    args = parser.parse_args()
    if args.float64:
        torch.set_default_dtype(torch.float64)
    tasks = args.tasks
    support_x, support_y, query_x, query_y = omniglot_episode(tasks)
    torch.manual_seed(0)
    learner = MAML(Conv4(ways=5), inner_lr=0.4, inner_steps=1)
    params = dict(learner.model.named_parameters())
    buffers = dict(learner.model.named_buffers())
    names = tuple(params)
    # The layout meta_loss runs its tasks in (channels-last images on the CPU), so that both
    # sides run the same kernels.
    task_x = task_layout(learner.model, support_x, "loop"), task_layout(learner.model, query_x, "loop")
    own = threading.local()

    def task_gradient(i: int) -> tuple[torch.Tensor, ...]:
        if not hasattr(own, "model"):
            own.model = copy.deepcopy(learner.model)
        fast = adapt_task(
            own.model, params, buffers, task_x[0][i], support_y[i],
            loss_fn=F.cross_entropy, steps=1, lr=0.4, adapt_names=names, first_order=False, batched=False,
        )  # fmt: skip
        loss = F.cross_entropy(functional_call(own.model, (fast, buffers), (task_x[1][i],)), query_y[i])
        return torch.autograd.grad(loss / tasks, list(params.values()))

    pool = ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,))
    default_threads = torch.get_num_threads()

    def meta_loss(threads: int) -> Callable[[], list[torch.Tensor]]:
        def step() -> list[torch.Tensor]:
            torch.set_num_threads(threads)
            try:
                learner.zero_grad(set_to_none=True)
                learner.meta_loss(support_x, support_y, query_x, query_y).backward()
                return [torch.zeros_like(p) if p.grad is None else p.grad for p in params.values()]
            finally:
                torch.set_num_threads(default_threads)

        return step

    def task_threads() -> list[torch.Tensor]:
        per_task = list(pool.map(task_gradient, range(tasks)))  # in task order
        return [sum(grads[k] for grads in per_task) for k in range(len(params))]

    def task_by_task() -> list[torch.Tensor]:
        torch.set_num_threads(1)
        try:
            per_task = [task_gradient(i) for i in range(tasks)]
        finally:
            torch.set_num_threads(default_threads)
        return [sum(grads[k] for grads in per_task) for k in range(len(params))]

    ways = {
        f"{default_threads} intra-op threads": meta_loss(default_threads),
        "one intra-op thread": meta_loss(1),
        "two task threads": task_threads,
        "their work in one thread": task_by_task,
    }
    print(f"torch {torch.__version__}, {default_threads} threads by default, meta-batch {tasks}")
    for step in ways.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.iterations):
        for name, step in ways.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[f"{default_threads} intra-op threads"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        spread = f"{tasks / max(seconds):.1f}-{tasks / min(seconds):.1f}"
        print(f"{name}: {tasks / median:.1f} tasks/s ({spread}; {base / median:.2f}x the default)")
    reference, threaded = meta_loss(default_threads)(), task_threads()
    difference = max((a - b).abs().max().item() for a, b in zip(reference, threaded, strict=True))
    print(f"largest gradient difference: {difference:.2e}")


if __name__ == "__main__":
    main()
