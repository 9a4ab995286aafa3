"""Submitting a sweep as a Ray job: everything checked here first, then packed and sent.

A submitted sweep runs ``python -m metasweep sweep`` as the job's driver on the head node:

* the project's code (the ``metasweep`` namespace) and the fully resolved config travel in the
  job's ``runtime_env`` (``working_dir``), so the cluster runs exactly the code and settings that
  were checked here;
* the MLflow tracking URI travels as a ``runtime_env`` environment variable, never inside the
  config file. Credentials do not travel at all by default: Ray writes a job's
  ``runtime_env.env_vars`` to its logs and returns them from the Jobs API, so the driver takes its
  logins from the cluster (the environment its nodes were started with, Kubernetes Secrets, IAM
  roles). A variable is forwarded from this machine only when named with ``forward``;
* everything that can be checked before submitting is: the config, where the dataset lives,
  whether the tracking store is reachable, whether one trial fits on one node.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit

import psutil

import metasweep.algorithms
import metasweep.orchestrator
from metasweep.orchestrator.config import SWEEP_STORAGE, RunConfig, SweepConfig, to_yaml
from metasweep.orchestrator.data.storage import SHARED_FILESYSTEMS, absolute, filesystem_type
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.jobs.client import Cluster
from metasweep.orchestrator.redact import has_login, redact
from metasweep.orchestrator.tracking.store import check_reachable, tracking_uri

SWEEP_FILE = "sweep.yaml"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Submission:
    """A submitted sweep."""

    job_id: str
    sweep: str
    dashboard: str


def is_loopback(url: str) -> bool:
    """Whether a URL names this machine by a loopback address."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_addresses() -> set[str]:
    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}


def check_dataset(config: RunConfig, local_cluster: bool) -> str:
    """The dataset location as every node of the cluster sees it.

    Object storage URIs pass as they are. A local path passes, made absolute, when the cluster is
    this machine, or when it lies on a network file system (mounted at the same path on the
    nodes, as NFS usually is).

    Raises:
        UserError: a URI with a login in it, a path that does not exist here, or one only this
            machine can read.
    """
    dataset = config.data.dataset
    if has_login(dataset):
        raise UserError(
            f"data.dataset {redact(dataset)} holds a login, which would travel in the job's "
            "files; give the URI without it and let the cluster's nodes supply the credentials "
            "(docs/cluster.md, 'Credentials')"
        )
    if config.task_kind == "regression" or "://" in dataset:
        return dataset
    path = Path(absolute(dataset))
    if not path.exists():
        raise UserError(f"data.dataset {dataset!r} does not exist on this machine")
    if local_cluster:
        return str(path)
    fs = filesystem_type(path)
    if fs not in SHARED_FILESYSTEMS:
        raise UserError(
            f"data.dataset {dataset!r} is on this machine's local disk ({fs}); the cluster's nodes "
            "cannot read it. Copy it to object storage (s3://..., gs://...) or a shared file system "
            "mounted on every node, and point data.dataset there"
        )
    return str(path)


def check_study_storage(url: str | None) -> None:
    """Refuse a study storage URL with a password in it: it would travel in the job's files (a
    user name may stay: the nodes' PGPASSWORD or ~/.pgpass logs it in).

    Raises:
        UserError: a URL holding a password.
    """
    if url and urlsplit(url).password is not None:
        raise UserError(
            f"search.study_storage {redact(url)} holds a password, which would travel in the job's "
            "files; give the URL without its password and let the cluster's nodes supply it "
            "(PGPASSWORD; docs/cluster.md, 'Credentials')"
        )


def check_tracking(uri: str, local_cluster: bool, cluster: Cluster | None = None) -> str:
    """The tracking URI as the cluster's driver must see it.

    A tracking server this machine cannot reach may still be reachable from a remote cluster
    (a name inside its network): then a short probe job asks the cluster itself.

    Raises:
        UserError: a store only this machine has, or a server that does not answer.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            check_reachable(uri)
        except UserError:
            if local_cluster or cluster is None:
                raise
            cluster.probe_http(f"{uri.rstrip('/')}/health", "the MLflow tracking server")
        if not local_cluster and is_loopback(uri):
            raise UserError(
                f"tracking URI {uri} points at this machine's loopback address; the cluster's head "
                "cannot reach it. Give the tracking server's address as the cluster sees it"
            )
        return uri
    if parsed.scheme == "sqlite" or parsed.scheme in ("", "file"):
        if not local_cluster:
            raise UserError(
                f"tracking URI {uri} is a file on this machine, which the cluster cannot reach; run "
                "an MLflow tracking server (see cluster/) and pass --tracking-uri http://..."
            )
        if parsed.scheme == "sqlite":
            path = uri.removeprefix("sqlite:///")
            if not path.startswith("/"):
                uri = f"sqlite:///{Path(path).absolute()}"  # the job runs in its own directory
        return uri
    return uri  # postgresql://, mysql://, databricks: reachable from the cluster, we trust


def is_this_machine(nodes: list[dict[str, Any]]) -> bool:
    """Whether the head node (of ``Cluster.nodes()``) runs on this machine, so this machine's
    paths are the cluster's.

    Decided by the head's node address, not the URL: a tunnel (``ray dashboard``,
    ``kubectl port-forward``) makes a remote cluster answer on 127.0.0.1.
    """
    heads = [n for n in nodes if n.get("is_head_node")]
    return bool(heads) and heads[0].get("node_ip") in _local_addresses()


def check_fits(url: str, nodes: list[dict[str, Any]], config: SweepConfig) -> None:
    """Raise when no node (of ``Cluster.nodes()``) has the CPUs and GPUs one trial asks for."""
    cpus, gpus = config.search.cpus_per_trial, config.search.gpus_per_trial
    fits = [
        n
        for n in nodes
        if n["resources_total"].get("CPU", 0) >= cpus and n["resources_total"].get("GPU", 0) >= gpus
    ]
    if not fits:
        have = ", ".join(
            f"{n['resources_total'].get('CPU', 0):g} CPU/{n['resources_total'].get('GPU', 0):g} GPU"
            for n in nodes
        )
        raise UserError(
            f"no node of the Ray cluster at {url} can run one trial "
            f"({cpus:g} CPUs, {gpus:g} GPUs per trial; nodes have: {have or 'none'}). Lower "
            "search.cpus_per_trial/gpus_per_trial, or pass --no-resource-check for an autoscaling "
            "cluster whose nodes are not up yet"
        )


def submit(
    config: SweepConfig,
    address: str,
    *,
    storage: str | None = None,
    tracking: str | None = None,
    resume: bool = False,
    pip: list[str] | None = None,
    resource_check: bool = True,
    forward: Sequence[str] = (),
) -> Submission:
    """Submit ``config`` as a Ray job running ``metasweep sweep`` on the cluster's head.

    Args:
        config: the validated sweep config.
        address: the cluster's dashboard (``http://HEAD:8265``).
        storage: where Tune keeps trial checkpoints, visible from every node (``s3://...``, an
            NFS path); on a cluster that is this machine, defaults to ``./runs/sweeps``.
        tracking: the MLflow tracking URI as the cluster sees it (default: the config's, else
            ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db`` on a local cluster).
        resume: continue the sweep ``config.name`` from ``storage``.
        pip: packages to install into the job's environment (for clusters whose image lacks
            some of metasweep's dependencies).
        resource_check: refuse when no alive node fits one trial.
        forward: names of environment variables to pass from this machine to the job, which Ray
            then records in its logs and job metadata (see :func:`job_env`).

    Raises:
        UserError: anything :func:`forwarded_env`, :func:`job_env`, :func:`check_dataset`,
            :func:`check_tracking` or :func:`check_fits` refuses, a missing storage for a remote
            cluster, or an unreachable or refusing cluster. Nothing is submitted then.
    """
    forwarded = forwarded_env(forward)  # a misspelt name fails before the cluster is asked anything
    check_study_storage(config.search.study_storage)
    cluster = Cluster(address)
    nodes = cluster.nodes()
    local = is_this_machine(nodes)
    uri = check_tracking(tracking_uri(tracking or config.tracking.uri), local, cluster)
    dataset = check_dataset(config, local)
    if storage is None and not local:
        raise UserError(
            "a sweep on a remote cluster needs --storage on storage every node reaches (s3://..., "
            "or an NFS path), so trials can restart on another node and --resume finds the sweep"
        )
    storage = absolute(storage or SWEEP_STORAGE)
    if resource_check:
        check_fits(cluster.url, nodes, config)
    resolved = config.model_copy(
        update={
            "data": config.data.model_copy(update={"dataset": dataset}),
            "tracking": config.tracking.model_copy(update={"uri": None}),
        }
    )
    env = job_env(uri, forwarded)
    entrypoint = sweep_command(storage, config.name if resume else None, resource_check)
    job_id = f"metasweep-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="metasweep-job-") as tmp:
        working_dir = _pack(Path(tmp), to_yaml(resolved, redacted=False))
        runtime_env: dict[str, Any] = {"working_dir": str(working_dir), "env_vars": env}
        if pip:
            runtime_env["pip"] = list(pip)
        job_id = cluster.submit(entrypoint, runtime_env, job_id, config.name)
    return Submission(job_id=job_id, sweep=config.name, dashboard=cluster.url)


def forwarded_env(forward: Sequence[str]) -> dict[str, str]:
    """The variables named in ``forward`` (``--forward-env``), from this process's environment.

    Raises:
        UserError: a name that is not a variable name or is not set here.
    """
    env: dict[str, str] = {}
    for name in forward:
        if not ENV_NAME.fullmatch(name):
            raise UserError(f"--forward-env {name!r} is not an environment variable name")
        if name not in os.environ:
            raise UserError(f"--forward-env {name}: ${name} is not set on this machine")
        env[name] = os.environ[name]
    return env


def job_env(tracking: str, forwarded: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's ``runtime_env.env_vars``: the tracking URI, a stop timeout, and the variables
    the user chose to forward (:func:`forwarded_env`). Nothing else: Ray writes these to
    ``runtime_env_agent.log`` and returns them from ``GET /api/jobs/``, so no credential is
    sent unless the user names it.

    Raises:
        UserError: a tracking URI with a login in it.
    """
    if has_login(tracking):
        raise UserError(
            f"the tracking URI {redact(tracking)} holds a login, which Ray would record in "
            "the job's metadata and logs. Give the URI without it and let the cluster supply the "
            "login: MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (http), PGPASSWORD or "
            "~/.pgpass (postgresql) in the cluster nodes' environment (docs/cluster.md, "
            "'Credentials')"
        )
    env = dict(forwarded or {})
    env["MLFLOW_TRACKING_URI"] = tracking
    # `jobs stop` sends SIGTERM, which the driver turns into Tune's graceful stop (the sweep's
    # state is saved for --resume); Ray's default 3 s before SIGKILL can cut that short.
    env["RAY_JOB_STOP_WAIT_TIME_S"] = "60"
    return env


def sweep_command(storage: str, resume: str | None, resource_check: bool) -> str:
    """The job's entrypoint: ``python -m metasweep sweep`` on the shipped config, every value
    quoted for the shell that Ray runs it in."""
    argv = ["python", "-m", "metasweep", "sweep", SWEEP_FILE, "--storage", storage]
    if not resource_check:
        argv.append("--no-resource-check")
    if resume is not None:
        argv += ["--resume", resume]
    return shlex.join(argv)


def _pack(folder: Path, config_yaml: str) -> Path:
    """The job's working directory: the ``metasweep`` namespace laid out as it is once installed
    (``metasweep/algorithms``, ``metasweep/orchestrator``, ``metasweep/__main__.py``) and the
    resolved sweep config."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_namespace")
    root = folder / "metasweep"
    for package in (metasweep.algorithms, metasweep.orchestrator):
        source = Path(package.__file__).parent  # type: ignore[arg-type]
        shutil.copytree(source, root / package.__name__.rsplit(".", 1)[-1], ignore=ignore)
    main = importlib.util.find_spec("metasweep.__main__")  # found, not run
    assert main is not None and main.origin is not None, "metasweep is installed without __main__"
    shutil.copy(main.origin, root / "__main__.py")
    (folder / SWEEP_FILE).write_text(config_yaml)
    return folder
