"""The ``metasweep`` command line.

User errors (:class:`orchestrator.errors.UserError`) end the program with one readable message
on stderr and exit code 2; usage errors get click's message and exit code 2 too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

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
stderr = Console(stderr=True, soft_wrap=True)

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


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


@app.command()
def sweep(
    config: ConfigArg,
    set_: SetOpt = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue the sweep of this name; finished trials are kept."),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local Ray on this machine).")
    ] = None,
    storage: StorageOpt = None,
    resource_check: ResourceCheckOpt = True,
) -> None:
    """Search hyperparameters with Optuna on Ray Tune, tracked in MLflow.

    The config is a training config plus a 'search' section (space, sampler, scheduler,
    resources) and a 'tracking' section (MLflow URI, experiment). Ends with the best trial, its
    validation and meta-test metrics, and how to open the sweep in the MLflow UI.
    """
    from orchestrator.config import SweepConfig

    if address:
        from orchestrator.jobs import use_token_auth

        use_token_auth()  # before Ray is imported
    from orchestrator.tuning import run_sweep

    overrides = list(set_ or [])
    if resume:
        overrides.append(f"name={resume}")
    cfg: SweepConfig = load_config(config, overrides, schema=SweepConfig)
    result = run_sweep(
        cfg, address=address, resume=resume is not None, storage=storage, resource_check=resource_check
    )
    trials = Table(title=f"sweep {result.name}: {result.trials} trials, best first")
    keys = sorted({k for row in result.table for k in row.params})
    for column in ("trial", *keys, cfg.objective[0], "iterations", "outcome"):
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
        stderr.print(
            f"registered {r.name} v{r.version} as @{r.alias}: {r.reason}\n"
            f"  pull it with: metasweep models pull {r.name}@{r.alias} --out model/",
            markup=False,
            highlight=False,
        )
    stderr.print(
        f"MLflow: parent run {result.parent_run_id} in {result.tracking_uri}\n"
        f"  open it with: metasweep ui --tracking-uri {result.tracking_uri}  (http://127.0.0.1:5000), or "
        f"mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1",
        markup=False,
        highlight=False,
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


AddressOpt = Annotated[
    str,
    typer.Option(
        envvar="RAY_API_SERVER_ADDRESS",
        help="The Ray cluster's dashboard, e.g. http://HEAD:8265 ($RAY_API_SERVER_ADDRESS).",
        show_default=False,
    ),
]


@app.command()
def submit(
    config: ConfigArg,
    address: AddressOpt,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI as the cluster sees it (default: the config's, "
            "$MLFLOW_TRACKING_URI, or ./mlflow.db for a cluster on this machine).",
        ),
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue the sweep of this name from --storage.")
    ] = None,
    pip: Annotated[
        list[str] | None,
        typer.Option(help="A package to pip-install into the job's environment (repeatable)."),
    ] = None,
    resource_check: ResourceCheckOpt = True,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job's log until it ends.")] = False,
) -> None:
    """Submit a sweep to a Ray cluster as a Ray job.

    The config is checked here first; the project code and the resolved config travel with the
    job, the tracking URI and credentials ($MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_*) as
    environment variables. Prints the job id and how to follow it.
    """
    from orchestrator import jobs
    from orchestrator.config import SweepConfig

    overrides = list(set_ or [])
    if resume:
        overrides.append(f"name={resume}")
    cfg: SweepConfig = load_config(config, overrides, schema=SweepConfig)
    submission = jobs.submit(
        cfg,
        address,
        storage=storage,
        tracking=tracking_uri,
        resume=resume is not None,
        pip=pip,
        resource_check=resource_check,
    )
    stderr.print(
        f"submitted sweep {submission.sweep} as job {submission.job_id} to {submission.dashboard}\n"
        f"  follow it: metasweep jobs logs {submission.job_id} --follow --address {submission.dashboard}\n"
        f"  stop it:   metasweep jobs stop {submission.job_id} --address {submission.dashboard}",
        markup=False,
        highlight=False,
    )
    print(submission.job_id)
    if wait:
        _follow(jobs.Cluster(address), submission.job_id)


def _follow(cluster: Any, job_id: str) -> None:
    for chunk in cluster.follow(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    info = cluster.wait(job_id)
    if str(info.status) != "SUCCEEDED":
        stderr.print(f"job {job_id} {info.status}: {info.message or ''}", markup=False, highlight=False)
        raise typer.Exit(1)


jobs_app = typer.Typer(help="Sweeps running as Ray jobs: list, status, logs, stop.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
JobArg = Annotated[str, typer.Argument(help="Job id, as `metasweep submit` printed it.", show_default=False)]


@jobs_app.command("list")
def jobs_list(address: AddressOpt) -> None:
    """List the cluster's jobs, oldest first."""
    from orchestrator import jobs

    listed = jobs.Cluster(address).list()
    table = Table(title=f"jobs on {jobs.dashboard_url(address)}")
    for column in ("job", "status", "sweep", "started", "ended"):
        table.add_column(column, no_wrap=True)

    def when(ms: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""

    for job in listed:
        table.add_row(
            str(job.submission_id or job.job_id),
            str(job.status),
            (job.metadata or {}).get(jobs.SWEEP_METADATA, ""),
            when(job.start_time),
            when(job.end_time),
        )
    # Full job ids even when piped (rich would otherwise wrap to 80 columns).
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@jobs_app.command("status")
def jobs_status(job_id: JobArg, address: AddressOpt) -> None:
    """Show one job's status and message."""
    from orchestrator import jobs

    info = jobs.Cluster(address).info(job_id)
    print(f"{job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobArg,
    address: AddressOpt,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's log (the sweep's driver output)."""
    from orchestrator import jobs

    cluster = jobs.Cluster(address)
    if follow:
        _follow(cluster, job_id)
    else:
        sys.stdout.write(cluster.logs(job_id))


@jobs_app.command("stop")
def jobs_stop(job_id: JobArg, address: AddressOpt) -> None:
    """Stop a running job. Its sweep can continue with `metasweep submit CONFIG --resume NAME`."""
    from orchestrator import jobs

    stopped = jobs.Cluster(address).stop(job_id)
    print(f"{job_id}: {'stopping' if stopped else 'already finished'}")


models_app = typer.Typer(help="Registered meta-learners: list and pull.", no_args_is_help=True)
app.add_typer(models_app, name="models")
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
    ),
]


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this registered model.")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Registered models, versions, aliases and meta-test metrics."""
    from orchestrator.tracking import list_models
    from orchestrator.tracking import tracking_uri as resolve

    table = Table(title="registered models")
    for column in ("name", "version", "aliases", "metric", "value", "protocol"):
        table.add_column(column)
    for row in list_models(resolve(tracking_uri), name):
        table.add_row(*(str(row[c]) for c in ("name", "version", "aliases", "metric", "value", "protocol")))
    Console().print(table)


@models_app.command("pull")
def models_pull(
    reference: Annotated[
        str, typer.Argument(help="NAME, NAME@alias or NAME/version (default alias: champion).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (must be new or empty).")],
    tracking_uri: TrackingOpt = None,
) -> None:
    """Download a registered model as a self-contained folder (loads with no tracking server)."""
    from orchestrator.tracking import pull_model
    from orchestrator.tracking import tracking_uri as resolve

    path = pull_model(resolve(tracking_uri), reference, out)
    stderr.print(
        f"pulled {reference} to {path}; load it with mlflow.pyfunc.load_model({str(path)!r})",
        markup=False,
        highlight=False,
    )


def _read_images(path: Path) -> tuple[list[Any], list[str], list[str]]:
    from PIL import Image

    from orchestrator.datasets import IMAGE_SUFFIXES

    if not path.exists():
        raise UserError(f"{path} does not exist")
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise UserError(f"no images in {path}")
    images, labels, names = [], [], []
    for f in files:
        try:
            with Image.open(f) as image:
                images.append(image.copy())
        except OSError as exc:
            raise UserError(f"{f} is not a readable image ({exc})") from None
        labels.append(f.parent.name)
        names.append(str(f))
    return images, labels, names


@app.command()
def adapt(
    model: Annotated[str, typer.Argument(help="A models:/ URI, NAME[@alias|/version], or a pulled folder.")],
    support: Annotated[
        Path, typer.Option(help="Folder of class subfolders of images (the labelled examples).")
    ],
    query: Annotated[Path, typer.Option(help="An image or a folder of images to label.")],
    out: Annotated[Path | None, typer.Option(help="Also write predictions to this CSV.")] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Adapt a meta-learned model to a support set and label the query images."""
    import numpy as np

    from orchestrator.tracking import load_model
    from orchestrator.tracking import tracking_uri as resolve

    support_images, support_labels, _ = _read_images(support)
    query_images, _, query_names = _read_images(query)
    pyfunc = load_model(resolve(tracking_uri), model)
    spec = pyfunc.unwrap_python_model().spec
    if spec["task_kind"] != "classification":
        raise UserError("adapt labels images; this model is a regression model")
    h, w, c = spec["image_shape"]
    mode = "L" if c == 1 else "RGB"

    def stack(images: list[Any]) -> Any:
        sizes = {i.size for i in images}
        if len(sizes) > 1:
            images = [i.resize((w, h)) for i in images]
        arrays = [np.asarray(i.convert(mode)) for i in images]
        return np.stack(arrays)

    names, label_ids = np.unique(np.asarray(support_labels), return_inverse=True)
    try:
        predicted = pyfunc.predict(
            {"support_x": stack(support_images), "support_y": label_ids.astype(np.int64),
             "query_x": stack(query_images)}
        )  # fmt: skip
    except Exception as exc:  # the model's own checks and MLflow's schema enforcement
        raise UserError(f"the model cannot take this support/query set: {exc}") from None
    predictions = names[np.asarray(predicted).astype(int)]
    lines = [f"{name},{label}" for name, label in zip(query_names, predictions, strict=True)]
    if out is not None:
        out.write_text("image,prediction\n" + "\n".join(lines) + "\n")
    for name, label in zip(query_names, predictions, strict=True):
        print(f"{name}\t{label}")


@app.command()
def ui(
    tracking_uri: TrackingOpt = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI on the configured store, on 127.0.0.1."""
    import subprocess

    from orchestrator.tracking import tracking_uri as resolve

    uri = resolve(tracking_uri)
    if uri.startswith(("http://", "https://")):
        stderr.print(f"{uri} is a tracking server: open it in a browser", markup=False, highlight=False)
        return
    stderr.print(
        f"MLflow UI for {uri} at http://127.0.0.1:{port} (Ctrl-C to stop)", markup=False, highlight=False
    )
    # One worker and no GenAI job runner: a single-user UI over a file store needs neither, and
    # the job runner would write to the same SQLite file a running sweep writes to.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    subprocess.run(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        check=False,
        env=env,
    )  # fmt: skip


data_app = typer.Typer(help="Import and inspect episodic image datasets (Parquet).", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _is_omniglot(path: Path) -> bool:
    return path.suffix == ".npz" or "images_background" in path.name or "images_evaluation" in path.name


def _read_list(path: Path | None) -> set[str]:
    if path is None:
        return set()
    if not path.is_file():
        raise UserError(f"class list {path} does not exist")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


@data_app.command("import")
def data_import(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Omniglot .npz files / official zips / folders, or one image folder root/<class>/*."
        ),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Destination .parquet path or s3:// URI.")],
    kind: Annotated[
        str, typer.Option("--kind", help="omniglot, folder, or auto (omniglot for .npz and images_* names).")
    ] = "auto",
    protocol: Annotated[str, typer.Option(help="Omniglot split protocol: vinyals or lake.")] = "vinyals",
    seed: Annotated[int, typer.Option(help="Seed of the class shuffle.")] = 0,
    image_size: Annotated[
        int, typer.Option(help="Resize images to N x N; 0 keeps the original size. Default: 28 for Omniglot.")
    ] = -1,
    train_classes: Annotated[
        int, typer.Option(help="vinyals: classes for meta-training incl. validation.")
    ] = 1200,
    val_classes: Annotated[int, typer.Option(help="Classes of the meta-validation slice.")] = 100,
    mode: Annotated[str, typer.Option(help="Image folders: L (grayscale) or RGB.")] = "L",
    split_ratios: Annotated[
        str, typer.Option(help="Image folders: train,val,test fractions of the classes.")
    ] = "0.64,0.16,0.2",
    train_list: Annotated[Path | None, typer.Option(help="Image folders: file of train class names.")] = None,
    val_list: Annotated[Path | None, typer.Option(help="Image folders: file of val class names.")] = None,
    test_list: Annotated[Path | None, typer.Option(help="Image folders: file of test class names.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Convert Omniglot or a folder of class subfolders into one Parquet dataset.

    The import is deterministic (same inputs and seed give a byte-identical file) and atomic
    (written under a temporary name, renamed at the end).
    """
    from orchestrator import datasets

    if kind == "auto":
        kind = "omniglot" if all(_is_omniglot(p) for p in sources) else "folder"
    if kind not in ("omniglot", "folder"):
        raise UserError(f"unknown --kind {kind!r}; use omniglot, folder or auto")
    size = (28 if kind == "omniglot" else None) if image_size < 0 else (image_size or None)
    if kind == "omniglot":
        meta = datasets.import_omniglot(
            sources, out, protocol=protocol, seed=seed, image_size=size,
            train_classes=train_classes, val_classes=val_classes, progress=progress,
        )  # fmt: skip
    else:
        if len(sources) != 1:
            raise UserError(f"an image folder import takes one root folder, got {len(sources)} sources")
        lists = {"train": _read_list(train_list), "val": _read_list(val_list), "test": _read_list(test_list)}
        try:
            ratios = [float(r) for r in split_ratios.split(",")]
        except ValueError:
            raise UserError(
                f"--split-ratios must be three numbers like 0.64,0.16,0.2, got {split_ratios!r}"
            ) from None
        meta = datasets.import_image_folder(
            sources[0], out, image_size=size, mode=mode, seed=seed, ratios=ratios,
            lists=lists if any(lists.values()) else None, progress=progress,
        )  # fmt: skip
    stderr.print(
        f"wrote {out}: {meta['classes']} classes, {meta['images']} images of shape {meta['image_shape']}",
        markup=False,
        highlight=False,
    )


@data_app.command("info")
def data_info(
    path: Annotated[str, typer.Argument(help="A metasweep dataset: path or URI.")],
    preview: Annotated[Path | None, typer.Option(help="Save a PNG grid of a few classes here.")] = None,
) -> None:
    """Show a dataset's schema, classes per split, images per class, image shape and size."""
    from orchestrator import datasets

    meta, schema, size = datasets.read_metadata(path)
    table = Table(title=path, show_header=False)
    table.add_row("schema", ", ".join(f"{f.name}: {f.type}" for f in schema))
    for key in ("name", "protocol", "seed", "image_shape", "resized_to", "pixel_convention", "source"):
        table.add_row(key, str(meta.get(key)))
    table.add_row("classes per split", ", ".join(f"{s} {meta['classes'][s]}" for s in datasets.SPLITS))
    per = meta["images_per_class"]
    table.add_row(
        "images per class", f"{per['min']}" if per["min"] == per["max"] else f"{per['min']}-{per['max']}"
    )
    table.add_row("images", str(meta["images"]))
    table.add_row("size on disk", f"{size / 2**20:.1f} MiB")
    Console().print(table)
    if preview is not None:
        datasets.preview_grid(datasets.load_dataset(path), preview)
        stderr.print(f"preview saved to {preview}", markup=False, highlight=False)


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
    except KeyboardInterrupt as exc:
        how = str(exc) or "'metasweep train CONFIG --resume' continues from the last checkpoint"
        print(f"metasweep: interrupted; {how}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
