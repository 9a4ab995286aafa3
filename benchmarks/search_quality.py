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

Two workloads (``--workload``):

- ``sinusoid``: MAML on 10-shot sinusoids (``examples/sinusoid_maml.yaml``, Finn et al. 2017,
  Section 5.1), ``val/mse``, lower is better; the warm start's source sweep is on 5-shot
  sinusoids. About 10 minutes a seed at the defaults on a 2-vCPU machine:

      .venv/bin/python benchmarks/search_quality.py [--seeds 3] [--budget 20000] [--grace 250]

- ``omniglot``: first-order MAML on Omniglot 5-way 1-shot (``examples/omniglot_fomaml_5w1s.yaml``:
  inner_lr 0.4, one step, meta_lr 0.001; Finn et al. 2017, Table 1) at a meta-batch of 4 tasks,
  ``val/accuracy``, higher is better, on 50 validation and 200 test tasks; the warm start's source
  sweep is on 5-shot tasks. It imports the real dataset from ``../shared/data/omniglot`` into the
  work folder (or takes ``--dataset``), and stops with a clear message without it:

      .venv/bin/python benchmarks/search_quality.py --workload omniglot --seeds 1 --budget 2000 --grace 25

Writes ``benchmarks/results/search_quality[_omniglot]_<date>.txt`` (the table), ``.json`` (every
curve) and ``.png`` (the curves). The issue's targets: the default reaches the paper settings'
final validation score with at most a third of the budget, and beats it at the full budget.
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
WARM_SOURCE = "warm-source"
EXPERIMENT = "search-quality"
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"


@dataclass(frozen=True)
class Workload:
    """What a method meta-trains and how its choices are scored.

    Attributes:
        name: ``sinusoid`` or ``omniglot``.
        example: the paper's run, a file of ``examples/``.
        metric: the validation score the sweeps optimise, at every evaluation.
        test: the score of a method's final choice on the meta-test tasks.
        higher: whether a higher score is better.
        space: the search space of every sweep.
        title: what the results file's first line says the workload is.
        edits: changes to the example's settings for every run (``section.key: value``).
    """

    name: str
    example: str
    metric: str
    test: str
    higher: bool
    space: dict[str, dict[str, Any]]
    title: str
    edits: dict[str, Any] = field(default_factory=dict)

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` is at least as good as ``b``."""
        return a >= b if self.higher else a <= b

    @property
    def worst(self) -> float:
        return -math.inf if self.higher else math.inf

    def best(self, a: float, b: float) -> float:
        return max(a, b) if self.higher else min(a, b)


WORKLOADS = {
    "sinusoid": Workload(
        name="sinusoid",
        example="sinusoid_maml.yaml",
        metric="val/mse",
        test="test/mse",
        higher=False,
        space={
            "train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.3},
            "train.inner_steps": {"type": "int", "low": 1, "high": 5},
            "train.meta_lr": {"type": "loguniform", "low": 0.0003, "high": 0.01},
        },
        title="sinusoid MAML (10 shots, eval 10 inner steps)",
    ),
    "omniglot": Workload(
        name="omniglot",
        example="omniglot_fomaml_5w1s.yaml",
        metric="val/accuracy",
        test="test/accuracy",
        higher=True,
        space={
            "train.inner_lr": {"type": "loguniform", "low": 0.05, "high": 1.0},
            "train.inner_steps": {"type": "int", "low": 1, "high": 5},
            "train.meta_lr": {"type": "loguniform", "low": 0.0003, "high": 0.01},
        },
        title="Omniglot 5-way 1-shot first-order MAML (meta-batch 4, eval 3 inner steps on 50 val tasks)",
        edits={
            "train.meta_batch_size": 4,
            "eval.val_tasks": 50,
            "eval.test_tasks": 200,
            "eval.batch_size": 50,
        },
    ),
}


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

    def reached(self, score: float, workload: Workload) -> int | None:
        """The meta-iterations spent when the best score first was ``score`` or better."""
        return next((spent for spent, _, best in self.curve if workload.better(best, score)), None)


def base_config(
    workload: Workload, budget: int, seed: int, every: int, dataset: Path | None
) -> dict[str, Any]:
    """The paper's run (the workload's example) at ``budget`` meta-iterations, evaluated ``every``
    so many, with the workload's edits."""
    raw = yaml.safe_load((ROOT / "examples" / workload.example).read_text())
    for key, value in workload.edits.items():
        section, name = key.split(".")
        raw[section][name] = value
    raw["train"].update(iterations=budget, eval_every=every)
    if dataset is not None:
        raw["data"]["dataset"] = str(dataset)
    raw["seed"] = seed
    raw["device"] = "cpu"
    return raw


def run_paper(workload: Workload, budget: int, seed: int, workdir: Path, args: argparse.Namespace) -> Run:
    from metasweep.orchestrator.config import RunConfig, load_config_dict
    from metasweep.orchestrator.training import prepare, train

    raw = base_config(workload, budget, seed, args.grace, args.dataset)
    raw.update(name=f"paper-{seed}", output_dir=str(workdir / f"paper-{seed}"))
    config = load_config_dict(raw, [], RunConfig)
    run = Run("paper", seed, choice={k: raw["train"][k.split(".")[1]] for k in workload.space})
    best = workload.worst
    start = time.perf_counter()

    def on_eval(iteration: int, metrics: dict[str, float]) -> None:
        nonlocal best
        best = workload.best(best, metrics[workload.metric])
        run.curve.append((iteration, time.perf_counter() - start, best))

    final = train(config, prepare(config), on_eval=on_eval)
    run.seconds, run.iterations, run.test = time.perf_counter() - start, budget, final[workload.test]
    return run


def sweep_config(
    workload: Workload, name: str, seed: int, trials: int, args: argparse.Namespace, **search: Any
) -> dict[str, Any]:
    raw = base_config(workload, args.grace * 9, seed, args.grace, args.dataset)
    raw.update(name=name, output_dir=None)
    raw["search"] = {
        "space": workload.space,
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


def sweep_curve(
    workload: Workload, run: Run, workdir: Path, name: str, summary: dict[str, Any], start: float
) -> None:
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
        for m in client.get_metric_history(child.info.run_id, workload.metric)
    ]
    reached: dict[str, int] = {}
    best = workload.worst
    for stamp, step, trial, value in sorted(events):
        reached[trial] = max(step, reached.get(trial, 0))
        best = workload.best(best, value)
        run.curve.append((sum(reached.values()), stamp - start, best))
    run.iterations, run.trials = sum(reached.values()), len(children)
    run.test = summary[workload.test]
    run.choice = {k: summary[k] for k in workload.space if k in summary}


def run_sweeps(workload: Workload, method: str, seed: int, workdir: Path, args: argparse.Namespace) -> Run:
    run = Run(method, seed)
    name = f"{method}-{seed}"
    start = time.time()

    def config(trials: int = args.trials, **search: Any) -> dict[str, Any]:
        return sweep_config(workload, name, seed, trials, args, **search)

    if method == "random":
        summary = sweep(workdir, config(sampler="random"))
    elif method == "tpe":
        summary = sweep(workdir, config())
    elif method == "tpe4":
        summary = sweep(workdir, config(startup_trials=4))
    elif method == "extended":
        sweep(workdir, config(args.trials // 2))
        summary = sweep(workdir, config(), "--resume", name)
    else:
        summary = sweep(workdir, config(warm_start={"sweep": WARM_SOURCE, "top": 3}))
    sweep_curve(workload, run, workdir, name, summary, start)
    run.seconds = time.time() - start
    return run


def import_omniglot(workdir: Path) -> Path:
    """The full Omniglot (vinyals protocol, 28x28) imported into ``workdir`` as a user does."""
    out = workdir / "omniglot.parquet"
    if not out.is_file():
        sources = [str(OMNIGLOT / f"images_{part}.npz") for part in ("background", "evaluation")]
        command = [
            str(Path(sys.executable).parent / "metasweep"),
            "data",
            "import",
            *sources,
            "--out",
            str(out),
        ]
        done = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"metasweep data import failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


def load_runs(path: Path, parser: argparse.ArgumentParser) -> list[Run]:
    """The runs of an earlier results file (its ``.json``), refused unless readable."""
    try:
        raw = json.loads(path.read_text())
        return [Run(**{**r, "curve": [tuple(c) for c in r["curve"]]}) for r in raw]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        parser.error(f"--add {path}: not a results file of this benchmark ({exc})")


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(workload: Workload, runs: list[Run], budget: int) -> list[str]:
    paper = {r.seed: r for r in runs if r.method == "paper"}
    metric, test = workload.metric, workload.test
    lines = [
        f"| method | trials | meta-iterations spent | wall s | best {metric} at 1/3 budget | at the budget "
        f"| at the end | budget share to reach the paper's final {metric} | {test} of the choice |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for method in METHODS:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        shares = []
        for r in mine:
            target = paper[r.seed].curve[-1][2] if r.seed in paper else math.nan
            hit = r.reached(target, workload)
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


def plot(workload: Workload, runs: list[Run], budget: int, path: Path, title: str) -> None:
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
        if not workload.higher:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].axvline(budget / 3, color="tab:red", ls=":", lw=1, label="1/3 of the budget")
    axes[0].set_ylabel(f"best {workload.metric} so far" + ("" if workload.higher else " (log)"))
    axes[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="sinusoid")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds FIRST_SEED .. FIRST_SEED + SEEDS - 1"
    )
    parser.add_argument(
        "--add",
        type=Path,
        action="append",
        default=[],
        metavar="RESULTS.json",
        help="an earlier run's raw results (same workload, budget and grace) to report with these",
    )
    parser.add_argument(
        "--budget", type=int, default=None, help="meta-iterations of each method (20000; omniglot 2000)"
    )
    parser.add_argument(
        "--grace", type=int, default=None, help="ASHA's first rung; trials run to 9x it (250; omniglot 25)"
    )
    parser.add_argument(
        "--dataset", type=Path, default=None, help="omniglot: an imported Parquet (default: import one)"
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="trials a sweep (default: to fit the budget)"
    )
    parser.add_argument("--methods", default=",".join(METHODS[:-1]))
    parser.add_argument(
        "--results", default=None, help="results file name, before _<date> (search_quality[_omniglot])"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the sweeps here (default: a temp dir)"
    )
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    omniglot = workload.name == "omniglot"
    args.budget = args.budget or (2000 if omniglot else 20000)
    args.grace = args.grace or (25 if omniglot else 250)
    args.results = args.results or ("search_quality_omniglot" if omniglot else "search_quality")
    if omniglot and args.dataset is None and not (OMNIGLOT / "images_background.npz").is_file():
        parser.error(f"the Omniglot data is not at {OMNIGLOT} (see its README); or pass --dataset")
    if args.dataset is not None:
        if not args.dataset.is_file():
            parser.error(f"no dataset at {args.dataset}")
        args.dataset = args.dataset.resolve()  # the trials run in folders of their own
    earlier = [load_runs(path, parser) for path in args.add]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method {unknown[0]}; one of {', '.join(METHODS)}")
    # Asynchronous ASHA (reduction factor 3, two rungs) ran about 4 x grace meta-iterations a
    # trial here: early trials are promoted while there are few to compare with.
    args.trials = args.trials or max(4, round(args.budget / (4 * args.grace)))
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="search-quality-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if omniglot and args.dataset is None:
            args.dataset = import_omniglot(workdir)
        runs: list[Run] = []
        metric, test = workload.metric, workload.test
        if "warm" in methods:  # the related task's sweep, once, not counted
            raw = sweep_config(workload, WARM_SOURCE, 100, args.trials, args)
            raw["data"]["shots"] = 5
            source = sweep(workdir, raw)
            print(
                f"warm-start source: 5 shots, {args.trials} trials, best {metric} {source[metric]:.4f}",
                flush=True,
            )
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for method in methods:
                run = (
                    run_paper(workload, args.budget, seed, workdir, args)
                    if method == "paper"
                    else run_sweeps(workload, method, seed, workdir, args)
                )
                runs.append(run)
                print(
                    f"seed {seed} {method:8s} {run.trials:3d} trials {run.iterations:6,d} it "
                    f"{run.seconds:6.0f} s  best {metric} {run.curve[-1][2]:.4f}  {test} {run.test:.4f}",
                    flush=True,
                )
    command = " ".join(["python", "benchmarks/search_quality.py", *sys.argv[1:]])
    runs = [*(r for part in earlier for r in part), *runs]
    seeds = sorted({r.seed for r in runs})
    header = [
        f"# search quality, {workload.title}, {started:%Y-%m-%d %H:%M} UTC",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"# command: {command}",
        *(
            f"# with the runs of {path} (seeds {sorted({r.seed for r in part})})"
            for path, part in zip(args.add, earlier, strict=True)
        ),
        f"# budget {args.budget:,} meta-iterations a method; sweeps: {args.trials} trials, ASHA grace "
        f"{args.grace}, reduction factor 3, max {args.grace * 9} iterations a trial, 2 at a time; "
        f"{len(seeds)} seeds",
        "",
    ]
    lines = header + table(workload, runs, args.budget)
    lines += ["", "choices (seed: settings):"]
    lines += [f"  {r.method} seed {r.seed}: {json.dumps(r.choice, sort_keys=True)}" for r in runs]
    out = save(args.results, lines)
    out.with_suffix(".json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))
    plot(
        workload, runs, args.budget, out.with_suffix(".png"), header[0].lstrip("# ") + f", {len(seeds)} seeds"
    )
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
