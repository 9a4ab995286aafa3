"""``metasweep train``, ``evaluate`` and ``sweep``: meta-training here, and sweeps on Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from metasweep.orchestrator.cli.app import ConfigArg, ResourceCheckOpt, SetOpt, StorageOpt, app
from metasweep.orchestrator.cli.console import metrics_table, say, stderr, training_bar
from metasweep.orchestrator.config import SweepConfig, load_config
from metasweep.orchestrator.errors import UserError


@app.command()
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
    """Meta-train one model on this machine (no Ray, no servers).

    Evaluates on meta-validation every train.eval_every iterations and on meta-test at the end,
    writes a checkpoint, the resolved config and metrics.jsonl to the run directory, and prints
    the final metrics as one JSON object on the last line of stdout. An earlier run of the same
    name is never touched unless --resume or --overwrite says what to do with it.
    """
    from metasweep.orchestrator import training

    cfg = load_config(config, set_ or [])
    training.check_run_dir(cfg, resume, overwrite)  # before the dataset is read
    inputs = training.prepare(cfg)
    with training_bar(cfg.name, cfg.train.iterations, enabled=progress) as on_step:
        metrics = training.train(cfg, inputs, resume=resume, overwrite=overwrite, on_step=on_step)
    metrics_table(f"run {cfg.name}", metrics, cfg.run_dir)
    print(json.dumps(metrics))


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by 'metasweep train'.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override an eval field, e.g. --set eval.inner_steps=1 (repeatable).",
        ),
    ] = None,
) -> None:
    """Re-score a trained run on its meta-test tasks (e.g. with other inner_steps).

    Prints the test metrics as one JSON object on the last line of stdout.
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


@app.command()
def sweep(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue the sweep of this name; finished trials are kept."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to run on: HOST:PORT of its head, or 'auto' for the one running on "
            "this machine (default: 'local', a new Ray of its own, even when a cluster runs here).",
        ),
    ] = None,
    storage: StorageOpt = None,
    resource_check: ResourceCheckOpt = True,
) -> None:
    """Search hyperparameters with Optuna on Ray Tune, tracked in MLflow.

    The config is a training config plus a 'search' section (space, sampler, scheduler,
    resources) and a 'tracking' section (MLflow URI, experiment). Ends with the best trial, its
    validation and meta-test metrics, and how to open the sweep in the MLflow UI.
    """
    if address and address != "local":
        from metasweep.orchestrator.jobs.client import use_token_auth

        use_token_auth()  # before Ray is imported
    from metasweep.orchestrator.sweep.driver import run_sweep

    overrides = list(set_ or [])
    if resume:
        overrides.append(f"name={resume}")
    cfg = load_config(config, overrides, SweepConfig)
    result = run_sweep(
        cfg,
        address=address,
        resume=resume is not None,
        storage=storage,
        resource_check=resource_check,
        tell=say,
    )
    trials = Table(title=f"sweep {result.name}: {result.trials} trials, best first")
    keys = sorted({k for row in result.table for k in row.params})
    for column in ("trial", *keys, result.objective, "iterations", "outcome"):
        trials.add_column(column)
    for row in result.table:
        trials.add_row(
            row.trial_id,
            *(_short(row.params.get(k, "")) for k in keys),
            "" if row.metric is None else f"{row.metric:.4f}",
            str(row.iteration),
            row.outcome,
        )
    stderr.print(trials)
    table = Table(title=f"sweep {result.name}: best of {result.trials} trials ({result.best_trial})")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in result.best_params.items():
        table.add_row(key, str(value))
    for key, value in {**result.best_metrics, **result.test_metrics}.items():
        table.add_row(key, f"{value:.4f}")
    stderr.print(table)
    if result.registration is not None:
        r = result.registration
        say(
            f"registered {r.name} v{r.version} as @{r.alias}: {r.reason}\n"
            f"  pull it with: metasweep models pull {r.name}@{r.alias} --out model/"
        )
    say(
        f"MLflow: parent run {result.parent_run_id} in {result.tracking_uri}\n"
        f"  open it with: metasweep ui --tracking-uri {result.tracking_uri}  (http://127.0.0.1:5000), or "
        f"mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1"
    )
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
