"""The ``metasweep`` typer application, its command class, its shared options and the entry point.

User errors (:class:`~metasweep.orchestrator.errors.UserError`) end the program with one readable
message on stderr and exit code 2; usage errors get click's message and exit code 2 too.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand

from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.redact import redact, redact_log_records

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter, Parameter

app = typer.Typer(
    name="metasweep",
    help="Meta-learning training and hyperparameter sweeps on Ray Tune, Optuna and MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _argument_name(param: Parameter) -> str:
    name = param.metavar or str(param.name).upper()
    return f"{name}..." if param.nargs != 1 else name


class Command(TyperCommand):
    """A command whose arguments read as click writes them, ``CONFIG``, ``[NAME]``,
    ``SOURCE...``, in its usage line and its list of arguments, where typer writes ``{config}``
    and ``config <path>``. Every command of the app takes ``cls=Command``."""

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces += param.get_usage_pieces(ctx)
            elif param.required:
                pieces.append(_argument_name(param))
            else:
                pieces.append(f"[{_argument_name(param)}]")
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param), record[1]))
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


ConfigArg = Annotated[
    Path, typer.Argument(metavar="CONFIG", help="YAML config file (see examples/).", show_default=False)
]
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
        metavar="PATH",
        help="Where trial checkpoints live: a path or s3://... URI that every node reaches "
        "(default: ./runs/sweeps, which only a cluster on this machine reaches).",
    ),
]
ResourceCheckOpt = Annotated[
    bool,
    typer.Option(
        help="Refuse a sweep whose trials need more CPUs or GPUs than any running node has "
        "(turn off for autoscaling clusters)."
    ),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
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


def entry() -> None:
    """Console-script entry point: :func:`main`, then out of the process without Python's own
    teardown of every module and object, which takes seconds once torch, Ray and MLflow are
    loaded. What that teardown would do that matters happens first: the exit handlers (logging's
    flush, temporary folders' removal, Ray's shutdown) run, and both streams are flushed. An
    exception that escapes :func:`main` is a bug and leaves as Python would, with its traceback.
    """
    try:
        main()
        code: int = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to say to it
            stream.flush()
    os._exit(code)


def main() -> None:
    """The command line, exiting with ``SystemExit`` (what tests call in-process)."""
    try:
        app()
    except UserError as exc:
        print(f"metasweep: error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        how = str(exc) or "'metasweep train CONFIG --resume' continues from the last checkpoint"
        print(f"metasweep: interrupted; {how}", file=sys.stderr)
        sys.exit(130)
