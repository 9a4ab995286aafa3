"""The ``metasweep`` command line.

User errors (:class:`orchestrator.errors.UserError`) end the program with one readable message
on stderr and exit code 2; usage errors get click's message and exit code 2 too.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.config import RunConfig, load_config
from orchestrator.errors import UserError

app = typer.Typer(
    name="metasweep",
    help="Meta-learning training and hyperparameter sweeps on Ray Tune, Optuna and MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
stderr = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see examples/).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config field, e.g. --set train.inner_lr=0.05 (repeatable).",
    ),
]


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def train(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run directory's checkpoint if there is one.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Meta-train one model on this machine (no Ray, no servers).

    Evaluates on meta-validation every train.eval_every iterations and on meta-test at the end,
    writes a checkpoint, the resolved config and metrics.jsonl to the run directory, and prints
    the final metrics as one JSON object on the last line of stdout.
    """
    from orchestrator.training import train as run_training

    cfg: RunConfig = load_config(config, set_ or [])
    metrics = run_training(cfg, resume=resume, show_progress=progress)
    _summary(f"run {cfg.name}", metrics, cfg.run_dir)
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
    from orchestrator.training import CHECKPOINT, evaluate_again

    overrides = set_ or []
    bad = [o for o in overrides if not o.startswith("eval.")]
    if bad:
        raise UserError(f"evaluate only takes eval.* overrides, got {', '.join(bad)}")
    metrics = evaluate_again(run_dir / CHECKPOINT, overrides)
    _summary(f"evaluation of {run_dir}", metrics, run_dir)
    print(json.dumps(metrics))


def _summary(title: str, metrics: dict[str, float], run_dir: Path) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    stderr.print(table)
    stderr.print(f"run directory: {run_dir}", markup=False, highlight=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UserError as exc:
        print(f"metasweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("metasweep: interrupted; 'metasweep train CONFIG --resume' continues from the last checkpoint",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
