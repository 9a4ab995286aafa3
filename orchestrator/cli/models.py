"""``metasweep models``, ``adapt``, ``ui`` and ``dashboard``: the registry, a registered model at
work, the MLflow UI and a sweep's Optuna study in Optuna Dashboard."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from metasweep.orchestrator.cli.app import Command, StorageOpt, TrackingOpt, app
from metasweep.orchestrator.cli.console import say, stderr
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.outputs import check_output

models_app = typer.Typer(help="Registered meta-learners: list and pull.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list", cls=Command)
def models_list(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Only this registered model.")] = None,
    uri: TrackingOpt = None,
) -> None:
    """List registered models: versions, aliases and meta-test metrics."""
    from metasweep.orchestrator.tracking.registry import list_models
    from metasweep.orchestrator.tracking.store import existing_store, tracking_uri

    table = Table(title="registered models")
    for column in ("name", "version", "aliases", "metric", "value", "protocol"):
        table.add_column(column)
    for row in list_models(existing_store(tracking_uri(uri)), name):
        cells = {**row, "value": _rounded(row["value"])}
        table.add_row(*(str(cells[c]) for c in ("name", "version", "aliases", "metric", "value", "protocol")))
    Console().print(table)


def _rounded(value: str) -> str:
    """A metric as recorded (``repr`` of a float), to four significant digits."""
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


@models_app.command("pull", cls=Command)
def models_pull(
    reference: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="NAME@ALIAS, NAME/VERSION, or NAME alone for NAME@champion.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Folder to create (must be new or empty).")
    ],
    uri: TrackingOpt = None,
) -> None:
    """Download a registered model into a folder of its own.

    The folder loads with no tracking server: use it with 'metasweep adapt DIR' or
    mlflow.pyfunc.load_model.
    """
    from metasweep.orchestrator.tracking.registry import pull_model
    from metasweep.orchestrator.tracking.store import existing_store, tracking_uri

    check_output(out, "--out", folder=True, empty=True)
    store = existing_store(tracking_uri(uri))
    with stderr.status(f"pulling {reference} and checking that it loads"):
        path = pull_model(store, reference, out)
    say(
        f"pulled {reference} to {path}; use it with `metasweep adapt {path} ...`, or serve it with "
        f"mlflow.pyfunc.load_model({str(path)!r}), which runs the code inside the folder"
    )


@app.command(cls=Command)
def adapt(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A pulled folder, NAME@ALIAS, NAME/VERSION, NAME (for NAME@champion) or a models:/ URI.",
        ),
    ],
    support: Annotated[
        Path,
        typer.Option(metavar="DIR", help="Folder of class subfolders of images (the labelled examples)."),
    ],
    query: Annotated[Path, typer.Option(metavar="PATH", help="An image or a folder of images to label.")],
    out: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Also write the predictions to this CSV file.")
    ] = None,
    uri: TrackingOpt = None,
) -> None:
    """Label query images with a model adapted to a support set.

    Prints a line per query image: its path and the predicted class (a subfolder name of
    --support). No code from the model runs: the installed metasweep rebuilds the model.
    """
    import numpy as np

    from metasweep.orchestrator.data.images import read_image_files
    from metasweep.orchestrator.tracking.registry import load_model
    from metasweep.orchestrator.tracking.store import existing_store, tracking_uri

    if not support.exists():
        raise UserError(f"{support} does not exist")
    if not query.exists():
        raise UserError(f"{query} does not exist")
    if out is not None:
        check_output(out, "--out")
    store = tracking_uri(uri) if Path(model).is_dir() else existing_store(tracking_uri(uri))
    loaded = load_model(store, model)  # rebuilt by this metasweep; no model code runs
    spec = loaded.spec
    if spec.problem.task_kind != "classification":
        raise UserError("adapt labels images; this model is a regression model")
    shots = read_image_files(support, spec.problem.input_shape)
    queries = read_image_files(query, spec.problem.input_shape)
    names, label_ids = np.unique(np.asarray(shots.labels), return_inverse=True)
    try:
        predicted = loaded.predict(
            {"support_x": np.stack(shots.images), "support_y": label_ids.astype(np.int64),
             "query_x": np.stack(queries.images)}
        )  # fmt: skip
    except ValueError as exc:  # the model's own checks of its inputs
        raise UserError(f"the model cannot take this support/query set: {exc}") from None
    predictions = [str(label) for label in names[np.asarray(predicted).astype(int)]]
    rows = list(zip(queries.paths, predictions, strict=True))
    if out is not None:
        with out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "prediction"])
            writer.writerows(rows)
    for name, label in rows:
        print(f"{name}\t{label}")


@app.command(cls=Command)
def ui(
    uri: TrackingOpt = None,
    port: Annotated[int, typer.Option(metavar="PORT", help="Port on 127.0.0.1.", min=1, max=65535)] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 for a local tracking store.

    A tracking server (http://...) has a UI of its own: ui prints its address instead.
    """
    from metasweep.orchestrator.tracking.store import existing_store, experiment_pages, tracking_uri, ui_url

    uri = tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        say(f"{uri} is a tracking server with its own UI: open {ui_url(uri, 'experiments')}")
        return
    check_port(port)
    existing_store(uri)
    say(f"MLflow UI for {uri} at {ui_url(uri, 'experiments', port)} (Ctrl-C to stop)")
    for name, link in experiment_pages(uri, port):
        say(f"  {name}: {link}")
    # One worker and no GenAI job runner: a single-user UI over a file store needs neither, and
    # the job runner would write to the same SQLite file a running sweep writes to.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Its own process group: MLflow's server forks uvicorn workers that outlive it when only its
    # own process is signalled; stopping the group stops them all.
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        start_new_session=True,
    )  # fmt: skip
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        say("stopping the MLflow UI")
        code = 0
    finally:
        stop_group(server)
        signal.signal(signal.SIGTERM, previous)
    if code:
        raise UserError(f"the MLflow UI stopped by itself with exit code {code}; its output above says why")


@app.command(cls=Command)
def dashboard(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The sweep.", show_default=False)],
    storage: StorageOpt = None,
    uri: TrackingOpt = None,
    study_storage: Annotated[
        str | None,
        typer.Option(
            "--study-storage",
            metavar="URL",
            help="The study's Optuna storage, for a sweep that set search.study_storage.",
        ),
    ] = None,
    port: Annotated[int, typer.Option(metavar="PORT", help="Port on 127.0.0.1.", min=1, max=65535)] = 8080,
) -> None:
    """Show a sweep's Optuna study in Optuna Dashboard, on 127.0.0.1.

    The study is where the sweep kept it: in the PostgreSQL tracking store's database, else in
    optuna.db in the sweep's folder (see docs/sweeps.md). Nothing is created looking for it.
    """
    from metasweep.orchestrator.config import SWEEP_STORAGE, check_name
    from metasweep.orchestrator.data.storage import absolute
    from metasweep.orchestrator.sweep.study import find_study, serve_dashboard
    from metasweep.orchestrator.tracking.store import tracking_uri

    try:
        check_name(name, "the sweep's name")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    url = find_study(name, tracking_uri(uri), f"{absolute(storage or SWEEP_STORAGE)}/{name}", study_storage)
    check_port(port)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve_dashboard(url, name, port, tell=say)
    except KeyboardInterrupt:  # its server returns on one itself, or not
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    say("Optuna Dashboard stopped")


def check_port(port: int) -> None:
    """Refuse a port on 127.0.0.1 that something listens on already."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise UserError(
                f"port {port} on 127.0.0.1 is taken ({exc.strerror}); pick another with --port"
            ) from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM every process of ``process``'s group, SIGKILL what is left after ``grace_s``."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()
            os.killpg(process.pid, 0)  # raises once no process of the group is left
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
