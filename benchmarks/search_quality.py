"""Does searching pay? The best validation score reached against the meta-iterations and the
wall-clock time spent, on one compute budget, for each way of choosing a meta-learner's settings:

- ``paper``: the paper's hand-picked settings, trained for the whole budget (``train()``, in this
  process, as ``metasweep train`` runs it);
- ``random``: ``metasweep sweep`` with Optuna's random sampler and ASHA;
- ``tpe``: metasweep's default, multivariate TPE with ASHA;
- ``extended``: the default sweep run with half its trials, then extended to all of them
  (``--resume NAME --set search.num_samples=N``), as a user who wants more does;
- ``tpe4`` (not run by default): the default sweep with ``search.startup_trials: 4``, TPE's
  model from the fifth trial on instead of the eleventh;
- ``warm``: the default sweep warm-started (``search.warm_start``, top 3) from a finished sweep of
  a related task (5-shot sinusoids). That sweep ran once, before the seeds; its cost is not
  counted, as a warm start reuses what was paid for already.

Every sweep searches the same space, without the paper's point among its initial points (the
search is on its own), each trial on one CPU, two at a time, ASHA rungs at ``--grace`` and
``reduction_factor`` 3 times it, twice. A sweep's compute is the sum of the meta-iterations its
trials ran (a trial stopped at a rung counts to that rung); its curve is the best validation
score of any evaluation so far, in the order the evaluations happened. Every run scores the
same validation and test tasks (they depend on ``eval.seed`` only); a seed sets the training
seed of every run and Optuna's seed.

Run from the repository root (about 10 minutes a seed at the defaults on a 2-vCPU machine):

    .venv/bin/python benchmarks/search_quality.py [--seeds 3] [--budget 20000] [--grace 250]

Writes ``benchmarks/results/search_quality_<date>.txt`` (the table), ``.json`` (every curve) and
``.png`` (the curves). The issue's targets: the default reaches the paper settings' final
validation score with at most a third of the budget, and beats it at the full budget.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import save  # noqa: E402

METHODS = ("paper", "random", "tpe", "extended", "warm", "tpe4")
SPACE = {
    "train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.3},
    "train.inner_steps": {"type": "int", "low": 1, "high": 5},
    "train.meta_lr": {"type": "loguniform", "low": 0.0003, "high": 0.01},
}
METRIC = "val/mse"
TEST = "test/mse"
WARM_SOURCE = "warm-source"
EXPERIMENT = "search-quality"


@dataclass
class Run:
    """One method on one seed: its curve (meta-iterations spent, seconds, best score so far, at
    each evaluation), its total compute and time, and the test score of its final choice."""

    method: str
    seed: int
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    test: float = math.nan
    trials: int = 1
    choice: dict[str, Any] = field(default_factory=dict)

    def best_at(self, iterations: float) -> float:
        """The best score reached within ``iterations`` meta-iterations (NaN before any)."""
        seen = [best for spent, _, best in self.curve if spent <= iterations]
        return seen[-1] if seen else math.nan

    def reached(self, score: float) -> int | None:
        """The meta-iterations spent when the best score first was ``score`` or better."""
        return next((spent for spent, _, best in self.curve if best <= score), None)


def base_config(budget: int, seed: int, every: int) -> dict[str, Any]:
    """The paper's run (examples/sinusoid_maml.yaml: Finn et al., 2017, Section 5.1) at ``budget``
    meta-iterations, evaluated ``every`` so many."""
    raw = yaml.safe_load((ROOT / "examples" / "sinusoid_maml.yaml").read_text())
    raw["train"].update(iterations=budget, eval_every=every)
    raw["seed"] = seed
    raw["device"] = "cpu"
    return raw


def run_paper(budget: int, seed: int, workdir: Path, every: int) -> Run:
    from metasweep.orchestrator.config import RunConfig, load_config_dict
    from metasweep.orchestrator.training import prepare, train

    raw = base_config(budget, seed, every)
    raw.update(name=f"paper-{seed}", output_dir=str(workdir / f"paper-{seed}"))
    config = load_config_dict(raw, [], RunConfig)
    run = Run("paper", seed, choice={k: raw["train"][k.split(".")[1]] for k in SPACE})
    best = math.inf
    start = time.perf_counter()

    def on_eval(iteration: int, metrics: dict[str, float]) -> None:
        nonlocal best
        best = min(best, metrics[METRIC])
        run.curve.append((iteration, time.perf_counter() - start, best))

    final = train(config, prepare(config), on_eval=on_eval)
    run.seconds, run.iterations, run.test = time.perf_counter() - start, budget, final[TEST]
    return run


def sweep_config(name: str, seed: int, trials: int, args: argparse.Namespace, **search: Any) -> dict:
    raw = base_config(args.grace * 9, seed, args.grace)
    raw.update(name=name, output_dir=None)
    raw["search"] = {
        "space": SPACE,
        "sampler": "tpe",
        "num_samples": trials,
        "max_concurrent": 2,
        "scheduler": "asha",
        "grace_period": args.grace,
        "reduction_factor": 3,
        "cpus_per_trial": 1,
        "seed": seed,
        **search,
    }
    raw["tracking"] = {"experiment": EXPERIMENT}
    return raw


def sweep(workdir: Path, raw: dict[str, Any], *extra: str) -> dict[str, Any]:
    """``metasweep sweep`` on ``raw`` in ``workdir`` (its MLflow store and sweeps' storage), as a
    user runs it; the summary it prints last."""
    path = workdir / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [
        str(Path(sys.executable).parent / "metasweep"),
        "sweep",
        str(path),
        "--set",
        f"tracking.uri={uri}",
    ]
    done = subprocess.run([*command, *extra], cwd=workdir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"metasweep sweep {raw['name']} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep_curve(run: Run, workdir: Path, name: str, summary: dict[str, Any], start: float) -> None:
    """Fill ``run`` from sweep ``name``'s MLflow child runs: every evaluation, in the order they
    happened, and the compute spent by then."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`metasweep.sweep` = '{name}'", max_results=1000
    )
    children = [r for r in runs if "metasweep.trial_id" in r.data.tags]
    events = [
        (m.timestamp / 1000.0, m.step, child.info.run_id, m.value)
        for child in children
        for m in client.get_metric_history(child.info.run_id, METRIC)
    ]
    reached: dict[str, int] = {}
    best = math.inf
    for stamp, step, trial, value in sorted(events):
        reached[trial] = max(step, reached.get(trial, 0))
        best = min(best, value)
        run.curve.append((sum(reached.values()), stamp - start, best))
    run.iterations, run.trials = sum(reached.values()), len(children)
    run.test = summary[TEST]
    run.choice = {k: summary[k] for k in SPACE if k in summary}


def run_sweeps(method: str, seed: int, workdir: Path, args: argparse.Namespace) -> Run:
    run = Run(method, seed)
    name = f"{method}-{seed}"
    start = time.time()
    if method == "random":
        summary = sweep(workdir, sweep_config(name, seed, args.trials, args, sampler="random"))
    elif method == "tpe":
        summary = sweep(workdir, sweep_config(name, seed, args.trials, args))
    elif method == "tpe4":
        summary = sweep(workdir, sweep_config(name, seed, args.trials, args, startup_trials=4))
    elif method == "extended":
        sweep(workdir, sweep_config(name, seed, args.trials // 2, args))
        raw = sweep_config(name, seed, args.trials, args)
        summary = sweep(workdir, raw, "--resume", name)
    else:
        warm = {"sweep": WARM_SOURCE, "top": 3}
        summary = sweep(workdir, sweep_config(name, seed, args.trials, args, warm_start=warm))
    sweep_curve(run, workdir, name, summary, start)
    run.seconds = time.time() - start
    return run


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs: list[Run], budget: int) -> list[str]:
    paper = {r.seed: r for r in runs if r.method == "paper"}
    lines = [
        "| method | trials | meta-iterations spent | wall s | best val/mse at 1/3 budget | at the budget "
        "| at the end | budget share to reach the paper's final val/mse | test/mse of the choice |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for method in METHODS:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        shares = []
        for r in mine:
            target = paper[r.seed].curve[-1][2] if r.seed in paper else math.nan
            hit = r.reached(target)
            shares.append("never" if hit is None else f"{hit / budget:.2f}")
        cells = [
            method,
            f"{statistics.mean(r.trials for r in mine):.0f}",
            f"{statistics.mean(r.iterations for r in mine):,.0f}",
            f"{statistics.mean(r.seconds for r in mine):.0f}",
            mean_sd([r.best_at(budget / 3) for r in mine]),
            mean_sd([r.best_at(budget) for r in mine]),
            mean_sd([r.curve[-1][2] for r in mine]),
            ", ".join(shares),
            mean_sd([r.test for r in mine]),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def plot(runs: list[Run], budget: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(
        zip(METHODS, ("black", "tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:purple"), strict=True)
    )
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for run in runs:
        xs = [c[0] for c in run.curve]
        ts = [c[1] for c in run.curve]
        ys = [c[2] for c in run.curve]
        label = run.method if run.seed == min(r.seed for r in runs) else None
        axes[0].step(xs, ys, where="post", color=colours[run.method], alpha=0.8, label=label)
        axes[1].step(ts, ys, where="post", color=colours[run.method], alpha=0.8)
    for ax, xlabel in zip(axes, ("meta-iterations spent (all trials)", "wall-clock seconds"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].axvline(budget / 3, color="tab:red", ls=":", lw=1, label="1/3 of the budget")
    axes[0].set_ylabel("best val/mse so far (log)")
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=20000, help="meta-iterations of each method")
    parser.add_argument("--grace", type=int, default=250, help="ASHA's first rung; trials run to 9x it")
    parser.add_argument(
        "--trials", type=int, default=None, help="trials a sweep (default: to fit the budget)"
    )
    parser.add_argument("--methods", default=",".join(METHODS[:-1]))
    parser.add_argument("--results", default="search_quality", help="results file name, before _<date>")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the sweeps here (default: a temp dir)"
    )
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method {unknown[0]}; one of {', '.join(METHODS)}")
    # Asynchronous ASHA (reduction factor 3, two rungs) ran about 4 x grace meta-iterations a
    # trial here: early trials are promoted while there are few to compare with.
    args.trials = args.trials or max(4, round(args.budget / (4 * args.grace)))
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="search-quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runs: list[Run] = []
        if "warm" in methods:  # the related task's sweep, once, not counted
            raw = sweep_config(WARM_SOURCE, 100, args.trials, args)
            raw["data"]["shots"] = 5
            source = sweep(workdir, raw)
            print(
                f"warm-start source: 5 shots, {args.trials} trials, best {METRIC} {source[METRIC]:.4f}",
                flush=True,
            )
        for seed in range(args.seeds):
            for method in methods:
                run = (
                    run_paper(args.budget, seed, workdir, args.grace)
                    if method == "paper"
                    else run_sweeps(method, seed, workdir, args)
                )
                runs.append(run)
                print(
                    f"seed {seed} {method:8s} {run.trials:3d} trials {run.iterations:6,d} it "
                    f"{run.seconds:6.0f} s  best {METRIC} {run.curve[-1][2]:.4f}  {TEST} {run.test:.4f}",
                    flush=True,
                )
    command = " ".join(["python", "benchmarks/search_quality.py", *sys.argv[1:]])
    header = [
        f"# search quality, sinusoid MAML (10 shots, eval 10 inner steps), {started:%Y-%m-%d %H:%M} UTC",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"# command: {command}",
        f"# budget {args.budget:,} meta-iterations a method; sweeps: {args.trials} trials, ASHA grace "
        f"{args.grace}, reduction factor 3, max {args.grace * 9} iterations a trial, 2 at a time; "
        f"{args.seeds} seeds",
        "",
    ]
    lines = header + table(runs, args.budget)
    lines += ["", "choices (seed: settings):"]
    lines += [f"  {r.method} seed {r.seed}: {json.dumps(r.choice, sort_keys=True)}" for r in runs]
    out = save(args.results, lines)
    out.with_suffix(".json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    plot(runs, args.budget, out.with_suffix(".png"), header[0].lstrip("# ") + f", {args.seeds} seeds")
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
