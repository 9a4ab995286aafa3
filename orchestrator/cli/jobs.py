"""``metasweep submit`` and ``metasweep jobs``: sweeps as Ray jobs on a cluster."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from metasweep.orchestrator.cli.app import Command, ConfigArg, ResourceCheckOpt, SetOpt, StorageOpt, app
from metasweep.orchestrator.cli.console import say

AddressOpt = Annotated[
    str,
    typer.Option(
        envvar="RAY_API_SERVER_ADDRESS",
        metavar="URL",
        help="The Ray cluster's dashboard, e.g. http://HEAD:8265.",
        show_default=False,
    ),
]


@app.command(cls=Command)
def submit(
    config: ConfigArg,
    address: AddressOpt,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            metavar="URI",
            help="MLflow tracking URI as the cluster sees it (default: the config's, "
            "$MLFLOW_TRACKING_URI, or ./mlflow.db for a cluster on this machine).",
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", metavar="NAME", help="Continue the sweep of this name from --storage."),
    ] = None,
    pip: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PACKAGE", help="A package to pip-install into the job's environment (repeatable)."
        ),
    ] = None,
    resource_check: ResourceCheckOpt = True,
    forward_env: Annotated[
        list[str] | None,
        typer.Option(
            "--forward-env",
            metavar="NAME",
            help="Pass this environment variable from here to the job (repeatable). Ray writes "
            "forwarded variables to its logs and job metadata: never use it for a secret.",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job's log until it ends.")] = False,
) -> None:
    """Submit a sweep to a Ray cluster as a Ray job.

    The config is checked here first; the project code and the resolved config travel with the
    job, the tracking URI as an environment variable. No credential is sent: the job's driver
    takes its logins (MLflow, object storage) from the cluster's own environment (see
    docs/cluster.md, 'Credentials'). Prints the job id and how to follow it.
    """
    from metasweep.orchestrator.jobs import client
    from metasweep.orchestrator.jobs import submit as submission_of

    overrides = list(set_ or [])
    if resume:
        overrides.append(f"name={resume}")
    from metasweep.orchestrator.config import SweepConfig, load_config

    cfg = load_config(config, overrides, SweepConfig)
    for name in forward_env or []:
        say(
            f"warning: forwarding ${name} to the job: Ray records it in runtime_env_agent.log and "
            "returns it from its Jobs API to anyone with the cluster's token"
        )
    submission = submission_of.submit(
        cfg,
        address,
        storage=storage,
        tracking=tracking_uri,
        resume=resume is not None,
        pip=pip,
        resource_check=resource_check,
        forward=forward_env or [],
    )
    say(
        f"submitted sweep {submission.sweep} as job {submission.job_id} to {submission.dashboard}\n"
        f"  follow it: metasweep jobs logs {submission.job_id} --follow --address {submission.dashboard}\n"
        f"  stop it:   metasweep jobs stop {submission.job_id} --address {submission.dashboard}"
    )
    print(submission.job_id)
    if wait:
        _follow(client.Cluster(address), submission.job_id)


def _follow(cluster: Any, job_id: str) -> None:
    for chunk in cluster.follow(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    info = cluster.wait(job_id)
    if str(info.status) != "SUCCEEDED":
        say(f"job {job_id} {info.status}: {info.message or ''}")
        raise typer.Exit(1)


jobs_app = typer.Typer(help="Sweeps running as Ray jobs: list, status, logs, stop.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
JobArg = Annotated[
    str,
    typer.Argument(metavar="JOB_ID", help="Job id, as `metasweep submit` printed it.", show_default=False),
]


@jobs_app.command("list", cls=Command)
def jobs_list(address: AddressOpt) -> None:
    """List the cluster's jobs, oldest first."""
    from metasweep.orchestrator.jobs import client

    listed = client.Cluster(address).list()
    table = Table(title=f"jobs on {client.dashboard_url(address)}")
    for column in ("job", "status", "sweep", "started", "ended"):
        table.add_column(column, no_wrap=True)

    def when(ms: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""

    for job in listed:
        table.add_row(
            str(job.submission_id or job.job_id),
            str(job.status),
            (job.metadata or {}).get(client.SWEEP_METADATA, ""),
            when(job.start_time),
            when(job.end_time),
        )
    # Full job ids even when piped (rich would otherwise wrap to 80 columns).
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@jobs_app.command("status", cls=Command)
def jobs_status(job_id: JobArg, address: AddressOpt) -> None:
    """Show one job's status and message."""
    from metasweep.orchestrator.jobs import client

    info = client.Cluster(address).info(job_id)
    print(f"{job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))


@jobs_app.command("logs", cls=Command)
def jobs_logs(
    job_id: JobArg,
    address: AddressOpt,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print a job's log (the sweep's driver output)."""
    from metasweep.orchestrator.jobs import client

    cluster = client.Cluster(address)
    if follow:
        _follow(cluster, job_id)
    else:
        sys.stdout.write(cluster.logs(job_id))


@jobs_app.command("stop", cls=Command)
def jobs_stop(job_id: JobArg, address: AddressOpt) -> None:
    """Stop a running job. Its sweep can continue with `metasweep submit CONFIG --resume NAME`."""
    from metasweep.orchestrator.jobs import client

    stopped = client.Cluster(address).stop(job_id)
    print(f"{job_id}: {'stopping' if stopped else 'already finished'}")
