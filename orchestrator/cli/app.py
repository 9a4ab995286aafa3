"""The ``metasweep`` typer application, its shared options and the entry point.

User errors (:class:`~metasweep.orchestrator.errors.UserError`) end the program with one readable
message on stderr and exit code 2; usage errors get click's message and exit code 2 too.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.redact import redact, redact_log_records

app = typer.Typer(
    name="metasweep",
    help="Meta-learning training and hyperparameter sweeps on Ray Tune, Optuna and MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see examples/).", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config field, e.g. --set train.inner_lr=0.05 (repeatable).",
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        help="Where trial checkpoints live, reachable from every node: a path or s3://... "
        "(default: ./runs/sweeps)."
    ),
]
ResourceCheckOpt = Annotated[
    bool,
    typer.Option(help="Refuse resources no running node has (turn off for autoscaling clusters)."),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
    ),
]


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    redact_log_records()
    # MLflow draws a tqdm bar per artifact download (several per registration or pull); the
    # commands show their own progress instead.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UserError as exc:
        print(f"metasweep: error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        how = str(exc) or "'metasweep train CONFIG --resume' continues from the last checkpoint"
        print(f"metasweep: interrupted; {how}", file=sys.stderr)
        sys.exit(130)
