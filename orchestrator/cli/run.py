"""``metasweep train``, ``evaluate`` and ``sweep``: meta-training here, and sweeps on Ray."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from metasweep.orchestrator.cli.app import Command, ConfigArg, ResourceCheckOpt, SetOpt, StorageOpt, app
from metasweep.orchestrator.cli.console import metrics_table, say, stderr, training_bar
from metasweep.orchestrator.errors import UserError

if TYPE_CHECKING:
    from metasweep.orchestrator.sweep.driver import SweepResult


@app.command(cls=Command)
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run directory's checkpoint if there is one.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over an earlier run of the same name, deleting it.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Meta-train one model on this machine, with no servers.

    Evaluates on meta-validation every train.eval_every iterations and on meta-test at the end,
    writes a checkpoint, the resolved config and metrics.jsonl to the run directory, and prints
    the final metrics as one JSON object on the last line of stdout. An earlier run of the same
    name is never touched unless --resume or --overwrite says what to do with it. With
    train.workers above 1 the meta-batches are shared by that many workers on a local Ray.
    """
    from metasweep.orchestrator import training
    from metasweep.orchestrator.config import load_config

    cfg = load_config(config, set_ or [])
    training.check_run_dir(cfg, resume, overwrite)  # before the dataset is read
    if cfg.train.workers > 1:
        from metasweep.orchestrator.sweep.workers import train_locally

        with training_bar(cfg.name, cfg.train.iterations, enabled=progress) as on_step:
            metrics = train_locally(cfg, resume=resume, overwrite=overwrite, on_step=on_step, tell=say)
    else:
        inputs = training.prepare(cfg)
        with training_bar(cfg.name, cfg.train.iterations, enabled=progress) as on_step:
            metrics = training.train(cfg, inputs, resume=resume, overwrite=overwrite, on_step=on_step)
    metrics_table(f"run {cfg.name}", metrics, cfg.run_dir)
    print(json.dumps(metrics))


@app.command(cls=Command)
def evaluate(
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_DIR",
            help="A run directory written by 'metasweep train' (runs/NAME unless output_dir is set).",
        ),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override an eval field, e.g. --set eval.inner_steps=1 (repeatable).",
        ),
    ] = None,
) -> None:
    """Re-score a trained run on its meta-test tasks.

    Loads the run's checkpoint and config; --set takes eval.* fields only, to score the same
    model another way. Prints the test metrics as one JSON object on the last line of stdout.
    """
    from metasweep.orchestrator import training

    overrides = set_ or []
    bad = [o for o in overrides if not o.startswith("eval.")]
    if bad:
        raise UserError(f"evaluate only takes eval.* overrides, got {', '.join(bad)}")
    saved = training.read_run(run_dir / training.CHECKPOINT, overrides)
    metrics = training.evaluate_run(saved, training.prepare(saved.config))
    metrics_table(f"evaluation of {run_dir}", metrics, run_dir)
    print(json.dumps(metrics))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def column_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted config key by its last part (``train.inner_lr`` as ``inner_lr``), or by as many
    parts as tell it apart from the others; 80 columns do not fit the full keys."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(k == name or k.endswith("." + name) for k in keys) == 1:
                break
        names[key] = name
    return names


def trial_table(result: SweepResult) -> Table:
    """Every trial, best first: its parameters (short names), objectives (and whether it is on
    the Pareto front of a multi-objective sweep), meta-iterations, outcome.
    Cells wrap rather than cut, so the table reads at 80 columns."""
    table = Table(
        title=f"sweep {result.name}: {result.trials} trials, best first (iters: meta-iterations done)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    keys = sorted({k for row in result.table for k in row.params})
    names = column_names(keys)
    table.add_column("trial", no_wrap=True)
    for key in keys:  # a long name takes a line per part: "eval." over "inner_steps"
        parts = names[key].split(".")
        table.add_column(".\n".join(parts), min_width=max(map(len, parts)), overflow="fold")
    for objective in (result.objective, *result.others):  # several: "cost/" over "adapt_ms"
        parts = objective.split("/") if result.others else [objective]
        table.add_column("/\n".join(parts), min_width=max(map(len, parts)), overflow="fold")
    if result.others:
        table.add_column("front", no_wrap=True)
    table.add_column("iters", no_wrap=True)
    # Outcomes: finished, stopped early, diverged, failed; "stopped early" wraps between its words.
    table.add_column("outcome", min_width=len("finished"))
    for row in result.table:
        table.add_row(
            row.trial_id,
            *(_short(row.params.get(k, "")) for k in keys),
            *("" if value is None else f"{value:.4f}" for value in (row.metric, *row.others)),
            *(("yes" if row.on_front else "",) if result.others else ()),
            str(row.iteration),
            row.outcome,
        )
    return table


def sweep_links(result: SweepResult, cwd: Path | None = None) -> str:
    """Where to look next: the sweep's links in the MLflow UI (its trials, its run with the plots,
    the registered model) and how to pull the model into a folder that does not exist yet."""
    from metasweep.orchestrator.redact import redact
    from metasweep.orchestrator.tracking.store import ui_url

    uri, experiment, run = result.tracking_uri, result.experiment_id, result.parent_run_id
    lines = []
    if result.registration is not None:
        r = result.registration
        out = free_folder(r.name, cwd or Path.cwd())
        lines += [
            f"registered {r.name} v{r.version} as @{r.alias}: {r.reason}",
            f"  pull it with: metasweep models pull {r.name}@{r.alias} --out {out}",
        ]
    lines += [
        f"MLflow: the sweep is run {run} in {redact(uri)}",
        f"  trials: {ui_url(uri, f'experiments/{experiment}/runs')}",
        f"  sweep:  {ui_url(uri, f'experiments/{experiment}/runs/{run}')}",
        f"  plots:  {ui_url(uri, f'experiments/{experiment}/runs/{run}/artifacts')} (plots/)",
    ]
    if result.registration is not None:
        lines.append(f"  model:  {ui_url(uri, f'models/{result.registration.name}')}")
    if not uri.startswith(("http://", "https://")):
        lines.append(f"  (start the UI first: metasweep ui --tracking-uri {uri})")
    return "\n".join(lines)


def free_folder(name: str, cwd: Path) -> str:
    """``name``, or ``name-2``, ``name-3``... : the first that does not exist under ``cwd``."""
    candidate, n = name, 1
    while (cwd / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


@app.command(cls=Command)
def sweep(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", metavar="NAME", help="Continue the sweep of this name; finished trials are kept."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS",
            help="Ray cluster to run on: HOST:PORT of its head, or 'auto' for the one running on "
            "this machine (default: 'local', a new Ray of its own, even when a cluster runs here).",
        ),
    ] = None,
    storage: StorageOpt = None,
    resource_check: ResourceCheckOpt = True,
) -> None:
    """Search hyperparameters with Optuna on Ray Tune.

    The config is a training config plus a 'search' section (space, sampler, scheduler,
    resources) and a 'tracking' section (MLflow URI, experiment): every trial is tracked in
    MLflow. Ends with the best trial, its validation and meta-test metrics, and how to open the
    sweep in the MLflow UI.
    """
    if address and address != "local":
        from metasweep.orchestrator.jobs.client import use_token_auth

        use_token_auth()  # before Ray is imported
    from metasweep.orchestrator.config import SweepConfig, load_config

    overrides = list(set_ or [])
    if resume:
        overrides.append(f"name={resume}")
    cfg = load_config(config, overrides, SweepConfig)
    from metasweep.orchestrator.sweep.driver import run_sweep  # Ray, Tune, MLflow: seconds

    result = run_sweep(
        cfg,
        address=address,
        resume=resume is not None,
        storage=storage,
        resource_check=resource_check,
        tell=say,
    )
    stderr.print(trial_table(result))
    say(f"champion: {result.why}")
    table = Table(title=f"sweep {result.name}: best of {result.trials} trials ({result.best_trial})")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in result.best_params.items():
        table.add_row(key, str(value))
    for key, value in {**result.best_metrics, **result.test_metrics}.items():
        table.add_row(key, f"{value:.4f}")
    stderr.print(table)
    say(sweep_links(result))
    print(
        json.dumps(
            {
                "best_trial": result.best_trial,
                **result.best_params,
                **result.best_metrics,
                **result.test_metrics,
            }
        )
    )
