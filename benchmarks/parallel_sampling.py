"""Parallel-aware sampling: simple regret after 32 trials at concurrency 1, 4 and 8, with and
without TPE's constant liar, on a known function shaped like a MAML sweep's space.

Run from the repository root:

    .venv/bin/python benchmarks/parallel_sampling.py [--seeds 20] [--trials 32] [--out FILE]

The sampler is metasweep's own (``make_sampler``: multivariate, grouped, seeded TPE), asked and
told through an Optuna study as Tune's ``OptunaSearch`` does: at concurrency c, c trials are asked
before any is told, and whenever one finishes (trial durations are drawn from an exponential
distribution, seeded) its value is told and a new trial asked, so the sampler always sees c - 1
running trials. Simple regret is f(best trial) - min f. The function ``bowl`` (a quadratic in
log10 inner_lr, inner_steps and log10 meta_lr, minimum 0 at (-1.8, 3, -2.7)) stands in for the
validation loss surface, and ``ripple`` adds local minima to it; trials cost nothing, so the
benchmark measures the sampler, not Ray.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna

from metasweep.orchestrator.config import SearchConfig
from metasweep.orchestrator.sweep.space import distributions, make_sampler

SPACE = {
    "train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.3},
    "train.inner_steps": {"type": "int", "low": 1, "high": 5},
    "train.meta_lr": {"type": "loguniform", "low": 0.0003, "high": 0.01},
}


def bowl(params: dict[str, float]) -> float:
    """A quadratic bowl: 0 at inner_lr 10**-1.8, 3 inner steps, meta_lr 10**-2.7."""
    return (
        (math.log10(params["train.inner_lr"]) + 1.8) ** 2
        + 0.3 * (params["train.inner_steps"] - 3) ** 2
        + 2.0 * (math.log10(params["train.meta_lr"]) + 2.7) ** 2
    )


def ripple(params: dict[str, float]) -> float:
    """The bowl with local minima every 1/3 decade of inner_lr and meta_lr (still 0 at its
    minimum), where trials sampled close together waste more of the budget."""
    x, z = math.log10(params["train.inner_lr"]) + 1.8, math.log10(params["train.meta_lr"]) + 2.7
    return bowl(params) + 0.5 * (2 - math.cos(6 * math.pi * x) - math.cos(6 * math.pi * z))


FUNCTIONS = {"bowl": bowl, "ripple": ripple}


def simple_regret(
    loss: Callable[[dict[str, float]], float], trials: int, concurrency: int, constant_liar: bool, seed: int
) -> float:
    """Run ``trials`` asynchronously ``concurrency`` at a time; the best value found (min f = 0)."""
    search = SearchConfig.model_validate(
        {"space": SPACE, "seed": seed, "max_concurrent": concurrency, "constant_liar": constant_liar}
    )
    study = optuna.create_study(sampler=make_sampler(search))
    space = distributions(search.space)
    clock = np.random.default_rng(seed)
    running: list[tuple[float, int, optuna.Trial]] = []  # (finish time, order, trial)
    now, asked, best = 0.0, 0, math.inf
    while asked < trials or running:
        while asked < trials and len(running) < concurrency:
            trial = study.ask(space)
            heapq.heappush(running, (now + clock.exponential(1.0), asked, trial))
            asked += 1
        now, _, trial = heapq.heappop(running)
        value = loss(trial.params)
        study.tell(trial, value)
        best = min(best, value)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=list(FUNCTIONS))
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    lines = [
        f"# parallel_sampling.py --seeds {args.seeds} --trials {args.trials} "
        f"--functions {' '.join(args.functions)}",
        f"# {datetime.date.today()}, {platform.node()}, {platform.processor() or platform.machine()}, "
        f"optuna {optuna.__version__}",
        "function  concurrency  constant_liar  mean_regret  median_regret  sem   (over seeds 0..N-1)",
    ]
    for name in args.functions:
        for concurrency in (1, 4, 8):
            for liar in (False, True):
                regrets = [
                    simple_regret(FUNCTIONS[name], args.trials, concurrency, liar, s)
                    for s in range(args.seeds)
                ]
                sem = statistics.stdev(regrets) / math.sqrt(len(regrets))
                lines.append(
                    f"{name:>8}  {concurrency:>11}  {liar!s:>13}  {statistics.mean(regrets):>11.4f}  "
                    f"{statistics.median(regrets):>13.4f}  {sem:.4f}"
                )
                print(lines[-1], flush=True)
    lines.append(f"# {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
