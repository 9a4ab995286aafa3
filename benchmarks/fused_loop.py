"""Second-order MAML and Meta-SGD on Conv-4, task by task (``strategy="loop"``, what ``auto``
picks on the CPU): ``meta_loss`` going from each task's inner loop straight to its query forward
(``adapt_and_predict_tasks``), against stacking every task's fast weights first and indexing them
again (``predict_tasks(adapt_tasks(...))``, the path before), in one process, alternating
meta-iterations so that both see the same machine.

    python benchmarks/fused_loop.py --iterations 8

Omniglot-shaped random episodes (1x28x28), 5-way 1-shot 15-query, meta-batch 32, one inner step.
Prints each side's median seconds per meta-iteration, their ratio, and every timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from metasweep.algorithms import MAML, Conv4, MetaSGD

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _episodes import omniglot_episode


def step(learner: MAML, episode: tuple[torch.Tensor, ...], fused: bool) -> float:
    """Seconds of one meta-loss and its backward, straight (``fused``) or stacked."""
    learner.adapts_all = fused  # type: ignore[misc]  # False: the stacked path, as ANIL's
    learner.zero_grad(set_to_none=True)
    start = time.perf_counter()
    learner.meta_loss(*episode).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8, help="timed meta-iterations per side")
    parser.add_argument("--tasks", type=int, default=32)
    args = parser.parse_args()
    tasks = args.tasks
    episode = omniglot_episode(tasks)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, meta-batch {tasks}")
    for cls in (MAML, MetaSGD):
        torch.manual_seed(0)
        learner = cls(Conv4(ways=5), inner_lr=0.4, inner_steps=1)
        step(learner, episode, True), step(learner, episode, False)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.iterations):
            for fused in (True, False) if i % 2 else (False, True):
                times[fused].append(step(learner, episode, fused))
        fused, stacked = statistics.median(times[True]), statistics.median(times[False])
        print(
            f"{cls.__name__}: straight {fused:.3f} s, stacked {stacked:.3f} s a meta-iteration: "
            f"{stacked / fused:.3f}x; straight {[round(t, 3) for t in times[True]]}, "
            f"stacked {[round(t, 3) for t in times[False]]}"
        )


if __name__ == "__main__":
    main()
