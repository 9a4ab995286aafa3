"""What a sweep costs over its trials: ``metasweep sweep`` against bare Ray Tune + OptunaSearch
running the project's own ``train()`` on the same trials, with no MLflow, both in this run.

Run from the repository root:

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 16 200] [--iterations 20] [--out FILE]

Each side is a fresh process timed from its start to its exit, as a user waits for it:

- ``metasweep``: ``metasweep sweep`` on a sinusoid MAML config (FIFO, concurrency 2, random
  sampler, seeded), in an empty folder, so its SQLite MLflow store and Optuna study are new; it
  scores the best trial on meta-test, draws its plots and registers the model, as it always does.
- ``bare``: the same trials (same space, Optuna's random sampler with the same seed, the same
  ``train()`` with the same config, reporting the objective at each evaluation) on Ray Tune
  alone: ``OptunaSearch`` in memory, no checkpoints reported to Tune, no MLflow, no scoring, no
  plots; actors reused between trials, as metasweep does, so that the difference is metasweep's.

Each trial is trivial (``--iterations`` meta-iterations of a small MLP), so the difference is
overhead: with two trial counts, the slope of the difference is the cost per trial and its
intercept the fixed cost. The issue's targets: at most 0.5 s per trial and 10 s fixed, flat in
the number of trials already run: the time between trial starts among the first and the last
quarter of the larger sweep's trials, on both sides, shows whether it is.

Then the searcher's own cost (Ray #46965 reports 41 s against 9 s for 100 trials): bare Tune at
``--searcher-trials`` trials with OptunaSearch and with Tune's default searcher (random search).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
CONFIG = """
name: overhead
algorithm: maml
model: {{name: mlp, hidden: [20, 20]}}
data: {{dataset: sinusoid, shots: 5, queries: 5}}
train: {{iterations: {iterations}, meta_batch_size: 5, eval_every: {eval_every}}}
eval: {{inner_steps: 3, val_tasks: 20, test_tasks: 100, batch_size: 10}}
seed: {seed}
search:
  space:
    train.inner_lr: {{type: loguniform, low: 0.001, high: 0.05}}
  sampler: random
  num_samples: {trials}
  max_concurrent: 2
  scheduler: fifo
  cpus_per_trial: 1
tracking: {{experiment: overhead, registered_model: overhead-sine}}
"""


def bare(config_path: Path, storage: Path, searcher: str = "optuna") -> None:
    """The baseline, in this process: the sweep's trials on Ray Tune and OptunaSearch alone (or,
    with ``searcher="basic"``, Tune's default searcher: random search without Optuna)."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from metasweep.orchestrator.config import SweepConfig, load_config
    from metasweep.orchestrator.training import Inputs, build_sources, train

    sweep = load_config(config_path, (), SweepConfig)
    problem = sweep.problem(None)
    metric, mode = sweep.objective(problem)

    def report(iteration: int, metrics: dict[str, float]) -> None:
        tune.report({metric: metrics[metric], "iteration": iteration})

    def trainable(params: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as work:
            config = sweep.run_config(params).model_copy(update={"output_dir": work})
            train(config, Inputs(problem, build_sources(config, None)), on_eval=report, test=False)

    space = sweep.search.space["train.inner_lr"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(SEED)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"train.inner_lr": tune.loguniform(space.low, space.high)},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric=metric, mode=mode, sampler=sampler)
                if searcher == "optuna"
                else None,
                num_samples=sweep.search.num_samples,
                max_concurrent_trials=sweep.search.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name="overhead", storage_path=str(storage)),
        )
        results = tuner.fit()
        best = results.get_best_result(metric, mode).metrics[metric]
        print(f"bare: {len(results)} trials, best {best:.4f}")
    finally:
        ray.shutdown()


def searchers(trials: int, iterations: int, work: Path) -> dict[str, float]:
    """Bare Tune with OptunaSearch and with Tune's default searcher, ``trials`` trials each."""
    seconds = {}
    for searcher in ("basic", "optuna"):
        folder, config = sweep_folder(f"searcher-{searcher}-", trials, iterations, work)
        seconds[searcher] = timed([*bare_command(config, folder), "--searcher", searcher], folder)
        print(f"  {trials:4d} trials  bare Tune, {searcher} searcher {seconds[searcher]:7.1f} s", flush=True)
    return seconds


def sweep_folder(prefix: str, trials: int, iterations: int, work: Path) -> tuple[Path, Path]:
    """A new folder under ``work`` holding the benchmark's sweep config; the folder and config."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=work))
    config = folder / "sweep.yaml"
    every = max(iterations // 2, 1)
    config.write_text(CONFIG.format(iterations=iterations, eval_every=every, trials=trials, seed=SEED))
    return folder, config


def bare_command(config: Path, folder: Path) -> list[str]:
    """The baseline's own process on ``config``, its Tune storage in ``folder``."""
    return [sys.executable, __file__, "--bare", str(config), "--storage", str(folder / "tune")]


def timed(command: list[str], folder: Path) -> float:
    """Seconds from the start of ``command`` (run in ``folder``) to its exit."""
    start = time.monotonic()
    done = subprocess.run(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"{command[:3]} failed:\n{done.stderr[-3000:]}")
    return seconds


def start_gaps(folder: Path, count: int) -> tuple[float, float]:
    """Mean seconds between consecutive trial starts among the first ``count`` trials and among
    the last ``count`` of a sweep in ``folder``: the ``timestamp`` of each Tune trial's first
    result (whole seconds, so each mean is good to about 1 / (count - 1) s; the files' own times
    are those of Tune's last sync). Equal gaps: a trial costs the same whatever ran before it."""
    import json

    results = (path.read_text() for path in folder.rglob("result.json"))
    starts = sorted(json.loads(text.splitlines()[0])["timestamp"] for text in results if text.strip())
    first, last = starts[:count], starts[-count:]
    return (first[-1] - first[0]) / (count - 1), (last[-1] - last[0]) / (count - 1)


def measure(
    trials: int,
    iterations: int,
    work: Path,
    label: str = "",
    gaps: dict[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Both sides once at ``trials`` trials, each in a new folder of its own; with ``gaps``, each
    side's :func:`start_gaps` over a quarter of the trials, by side."""
    seconds = {}
    for side in ("bare", "metasweep"):
        folder, config = sweep_folder(f"{side}-{trials}-", trials, iterations, work)
        if side == "bare":
            command = bare_command(config, folder)
        else:
            command = [str(Path(sys.executable).with_name("metasweep")), "sweep", str(config)]
        seconds[side] = timed(command, folder)
        print(f"  {trials:4d} trials  {side:9s} {seconds[side]:7.1f} s {label}", flush=True)
        if gaps is not None:
            gaps[side] = start_gaps(folder, max(trials // 4, 2))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs=2, default=[16, 200], metavar=("FEW", "MANY"))
    parser.add_argument("--iterations", type=int, default=20, help="meta-iterations a trial (default 20)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each side and count; medians (default 3)"
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # the baseline's own process
    parser.add_argument("--storage", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--searcher", choices=("optuna", "basic"), default="optuna", help=argparse.SUPPRESS)
    parser.add_argument(
        "--searcher-trials", type=int, default=100, help="trials of the searcher comparison (default 100)"
    )
    args = parser.parse_args()
    if args.bare:
        bare(args.bare, args.storage, args.searcher)
        return
    few, many = args.trials
    if not 0 < few < many:
        parser.error("--trials takes two counts, the smaller first")
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        print(f"sweep overhead: sinusoid MAML, {args.iterations} meta-iterations a trial, concurrency 2")
        measure(2, args.iterations, Path(tmp), "(warm-up: bytecode and file caches; not counted)")
        gaps: dict[str, tuple[float, float]] = {}  # of the last run at the larger count
        repeats = {
            n: [
                measure(n, args.iterations, Path(tmp), gaps=gaps if n == many else None)
                for _ in range(args.repeats)
            ]
            for n in (few, many)
        }
        search = searchers(args.searcher_trials, args.iterations, Path(tmp))
    runs = {n: {side: statistics.median(r[side] for r in rs) for side in rs[0]} for n, rs in repeats.items()}
    over = {n: runs[n]["metasweep"] - runs[n]["bare"] for n in runs}
    per_trial = (over[many] - over[few]) / (many - few)
    fixed = over[few] - per_trial * few
    lines = [
        f"# {datetime.date.today()}, {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"# command: .venv/bin/python benchmarks/sweep_overhead.py --trials {few} {many} "
        f"--iterations {args.iterations} --repeats {args.repeats}",
        f"# seconds from process start to exit, median of {args.repeats} runs each",
        "",
        "| trials | bare Tune (s) | metasweep (s) | difference (s) | ratio |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {runs[n]['bare']:.1f} | {runs[n]['metasweep']:.1f} | {over[n]:.1f} | "
            f"{runs[n]['metasweep'] / runs[n]['bare']:.2f} |"
            for n in (few, many)
        ),
        "",
        f"per trial over bare Tune: {per_trial:.2f} s (target at most 0.5 s)",
        f"fixed over bare Tune: {fixed:.1f} s (target at most 10 s)",
        "",
        f"flat in the trials already run? seconds between trial starts at {many} trials (last run), among "
        f"the first {max(many // 4, 2)} and the last {max(many // 4, 2)} trials:",
        *(f"  {side:9s} {first:.3f} s, then {last:.3f} s" for side, (first, last) in gaps.items()),
        "",
        f"searcher, bare Tune, {args.searcher_trials} trials (one run each): Tune's default "
        f"{search['basic']:.1f} s, OptunaSearch {search['optuna']:.1f} s, "
        f"{(search['optuna'] - search['basic']) / args.searcher_trials:+.3f} s a trial",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
