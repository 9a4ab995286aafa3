"""Multi-objective early stopping on a synthetic two-objective problem whose Pareto front is known:
metasweep's MOASHA against Syne Tune's MOASHA and ASHA on the first objective alone, in one run.

The problem is ZDT1 (Zitzler, Deb and Thiele, 2000) seen through learning curves: a trial's
settings ``(x, y)`` in [0, 1]^2 end at ``f1 = x`` and ``f2 = g (1 - sqrt(x / g))`` with
``g = 1 + 9 y`` (the front: ``y = 0``, ``f2 = 1 - sqrt(f1)``), and at step ``t`` of ``max_t`` it
reports each final value plus ``s / t`` for a slack ``s`` of its own, so early rungs rank trials
imperfectly, as real learning curves do.

Each scheduler sees the same random trials, in the same order, on ``--workers`` simulated
workers (one step a time unit; a stopped trial's worker takes the next trial at once) until the
budget of ``--budget`` steps is spent. The score is the hypervolume (reference point (1.1, 11))
of the trials that ran to ``max_t``, as a share of the true front's. The schedulers are driven
through their own decision methods; Syne Tune's is imported from the ``syne-tune`` wheel (not a
metasweep dependency: ``pip install syne-tune`` or put its unpacked wheel on ``PYTHONPATH``).

    .venv/bin/python benchmarks/moasha.py --seeds 10
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import os
import platform
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
from _results import save

REFERENCE = np.array([1.1, 11.0])
MAX_T, GRACE, ETA = 27, 1, 3


def zdt1(x: float, y: float) -> np.ndarray:
    g = 1 + 9 * y
    return np.array([x, g * (1 - np.sqrt(x / g))])


def hypervolume(points: np.ndarray) -> float:
    """The area (both objectives minimised) that ``points`` dominate below :data:`REFERENCE`."""
    inside = points[(points < REFERENCE).all(axis=1)] if len(points) else points
    if not len(inside):
        return 0.0
    order = inside[np.argsort(inside[:, 0])]
    area, best = 0.0, REFERENCE[1]
    for i, (f1, f2) in enumerate(order):
        best = min(best, f2)
        right = order[i + 1, 0] if i + 1 < len(order) else REFERENCE[0]
        area += (right - f1) * (REFERENCE[1] - best)
    return area


def true_front_volume() -> float:
    xs = np.linspace(0, 1, 20001)
    return hypervolume(np.stack([xs, 1 - np.sqrt(xs)], axis=1))


class Ours:
    def __init__(self) -> None:
        from metasweep.orchestrator.sweep.moasha import MOASHAScheduler

        self.s = MOASHAScheduler(
            ["f1", "f2"], ["min", "min"], time_attr="t", max_t=MAX_T, grace_period=GRACE, reduction_factor=ETA
        )

    def add(self, trial_id: int) -> None:
        pass

    def stop(self, trial_id: int, t: int, value: np.ndarray) -> bool:
        result = {"t": t, "f1": value[0], "f2": value[1]}
        return bool(self.s.on_trial_result(None, SimpleNamespace(trial_id=str(trial_id)), result) == "STOP")


class SyneTune:
    def __init__(self, seed: int) -> None:
        from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

        np.random.seed(seed)  # Syne Tune's brackets draw from NumPy's global generator
        self.s = MOASHA(
            config_space={}, metrics=["f1", "f2"], do_minimize=True, time_attr="t", max_t=MAX_T,
            grace_period=GRACE, reduction_factor=ETA, random_seed=seed,
        )  # fmt: skip
        self.trials: dict[int, Any] = {}

    def add(self, trial_id: int) -> None:
        from syne_tune.backend.trial_status import Trial

        self.trials[trial_id] = Trial(trial_id=trial_id, config={}, creation_time=datetime.datetime.now())
        self.s.on_trial_add(self.trials[trial_id])

    def stop(self, trial_id: int, t: int, value: np.ndarray) -> bool:
        decision = self.s.on_trial_result(self.trials[trial_id], {"t": t, "f1": value[0], "f2": value[1]})
        return bool(decision == "STOP")


class ASHAFirst:
    def __init__(self) -> None:
        from ray.tune.schedulers import ASHAScheduler

        self.s = ASHAScheduler(
            time_attr="t", metric="f1", mode="min", max_t=MAX_T, grace_period=GRACE, reduction_factor=ETA
        )

    def add(self, trial_id: int) -> None:
        self.s.on_trial_add(None, SimpleNamespace(trial_id=str(trial_id)))

    def stop(self, trial_id: int, t: int, value: np.ndarray) -> bool:
        result = {"t": t, "f1": value[0], "f2": value[1]}
        return bool(self.s.on_trial_result(None, SimpleNamespace(trial_id=str(trial_id)), result) == "STOP")


def simulate(scheduler: Any, seed: int, workers: int, budget: int) -> float:
    """The hypervolume share of the trials ``scheduler`` let run to ``MAX_T`` within ``budget`` steps."""
    rng = np.random.default_rng(seed)
    finished: list[np.ndarray] = []
    spent, next_id = 0, 0
    running: list[tuple[int, int, int]] = []  # (time it reports next, trial, step)
    settings: dict[int, tuple[np.ndarray, float]] = {}

    def start(now: int) -> None:
        nonlocal next_id
        x, y, slack = rng.random(), rng.random() ** 2, rng.random() * 2
        settings[next_id] = (zdt1(x, y), slack)
        scheduler.add(next_id)
        heapq.heappush(running, (now + 1, next_id, 1))
        next_id += 1

    for _ in range(workers):
        start(0)
    while running and spent < budget:
        now, trial, t = heapq.heappop(running)
        spent += 1
        final, slack = settings[trial]
        value = final + slack / t
        if t >= MAX_T:
            finished.append(final)
            start(now)
        elif scheduler.stop(trial, t, value):
            start(now)
        else:
            heapq.heappush(running, (now + 1, trial, t + 1))
    return hypervolume(np.array(finished).reshape(-1, 2)) / true_front_volume()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--budget", type=int, default=2000, help="trial steps in all (max_t is 27)")
    args = parser.parse_args()
    methods = {
        "metasweep MOASHA": lambda seed: Ours(),
        "Syne Tune MOASHA": lambda seed: SyneTune(seed),
        "ASHA on f1 alone": lambda seed: ASHAFirst(),
    }
    scores = {name: [simulate(make(seed), seed, args.workers, args.budget) for seed in range(args.seeds)]
              for name, make in methods.items()}  # fmt: skip
    lines = [
        f"# benchmarks/moasha.py --seeds {args.seeds} --workers {args.workers} --budget {args.budget}",
        f"# {time.strftime('%Y-%m-%d')}, {platform.node()}: {os.cpu_count()} CPUs; ZDT1 curves, "
        f"max_t {MAX_T}, grace {GRACE}, reduction factor {ETA}",
        "method             hypervolume share (mean ± sd over seeds)   per seed",
    ]
    for name, values in scores.items():
        per_seed = " ".join(f"{v:.3f}" for v in values)
        lines.append(f"{name:<18} {np.mean(values):.3f} ± {np.std(values):.3f}   {per_seed}")
    save("moasha", lines)


if __name__ == "__main__":
    main()
