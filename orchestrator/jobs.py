"""Sweeps as Ray jobs: submit, list, follow and stop them over the Ray Jobs API.

The client side of a cluster deployment. A submitted sweep runs ``metasweep sweep`` as the job's
driver on the head node; this module only packs it up and talks to the dashboard's Jobs API:

* the project's packages and the fully resolved config travel in the job's ``runtime_env``
  (``working_dir``), so the cluster runs exactly the code and settings that were checked here;
* the MLflow tracking URI and every credential travel as ``runtime_env`` environment variables,
  never inside the config file;
* everything that can be checked before submitting is: the config, where the dataset lives,
  whether the tracking store is reachable, whether one trial fits on one node.

Ray's token authentication is on by default for clusters started with ``ray start`` (Ray 2.59+):
the token comes from ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``, and is sent as a bearer header on every request.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.config import SINUSOID, SWEEP_STORAGE, SweepConfig, to_yaml
from orchestrator.datasets import absolute
from orchestrator.errors import UserError

DASHBOARD_PORT = 8265
SWEEP_FILE = "sweep.yaml"
SWEEP_METADATA = "metasweep.sweep"
# Environment variables a sweep's driver may need, passed on from the submitting shell when set.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
)
# File systems a dataset path may live on so that every node reads the same file.
SHARED_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs", "beegfs")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Submission:
    """A submitted sweep."""

    job_id: str
    sweep: str
    dashboard: str


def dashboard_url(address: str) -> str:
    """``HOST``, ``HOST:PORT`` or ``http(s)://HOST:PORT`` as the dashboard's URL."""
    if "://" not in address:
        address = f"http://{address}"
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(
            f"--address {address!r} is not a Ray dashboard address; give http://HEAD:{DASHBOARD_PORT}"
        )
    port = parsed.port or DASHBOARD_PORT
    return f"{parsed.scheme}://{parsed.hostname}:{port}"


def auth_token() -> str | None:
    """Ray's token: ``$RAY_AUTH_TOKEN``, else ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidate = Path(path) if path else Path.home() / ".ray" / "auth_token"
    try:
        token = candidate.read_text().strip()
    except OSError:
        if path:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read") from None
        return None
    return token or None


def use_token_auth() -> None:
    """Make a Ray driver send the token to a cluster that wants one.

    Ray sends it only with ``RAY_AUTH_MODE=token``, read when ``ray`` is first imported, so
    this must run before that; it sets the mode when a token is available and none is chosen.
    """
    if "RAY_AUTH_MODE" not in os.environ and auth_token():
        os.environ["RAY_AUTH_MODE"] = "token"


class Cluster:
    """A Ray cluster's Jobs API, reached through its dashboard.

    Every method raises :class:`UserError` with a readable message for what a user can fix: no
    cluster at the address, a missing or wrong token, a job id that does not exist.
    """

    def __init__(self, address: str, timeout: float = 5.0):
        self.url = dashboard_url(address)
        _probe(self.url, timeout)
        from ray.job_submission import JobSubmissionClient

        token = auth_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        with self._errors():
            self.client = JobSubmissionClient(self.url, headers=headers, verify=True)
        self._headers = headers or {}

    @contextmanager
    def _errors(self, job_id: str | None = None) -> Iterator[None]:
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as exc:
            if "invalid" in str(exc).lower() or "forbidden" in str(exc).lower():
                raise UserError(
                    f"the Ray cluster at {self.url} refused the authentication token; use the head "
                    "node's token (`ray get-auth-token` there) in RAY_AUTH_TOKEN or ~/.ray/auth_token"
                ) from None
            raise UserError(
                f"the Ray cluster at {self.url} requires an authentication token and none was found; "
                "set RAY_AUTH_TOKEN or copy the head node's ~/.ray/auth_token to this machine"
            ) from None
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray Jobs API at {self.url}: {exc}") from None
        except RuntimeError as exc:
            if job_id is not None and ("does not exist" in str(exc) or "404" in str(exc)):
                raise UserError(
                    f"no job {job_id!r} on the Ray cluster at {self.url}; `metasweep jobs list` shows them"
                ) from None
            raise UserError(f"the Ray Jobs API at {self.url} answered: {exc}") from None

    def nodes(self) -> list[dict[str, Any]]:
        """The alive nodes with their total resources."""
        import requests

        response = requests.get(
            f"{self.url}/api/v0/nodes", headers=self._headers, params={"limit": 10000}, timeout=10
        )
        if not response.ok:
            raise UserError(f"the Ray dashboard at {self.url} did not list its nodes: {response.text[:200]}")
        nodes = response.json()["data"]["result"]["result"]
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def probe_http(self, url: str, what: str, timeout: float = 120) -> None:
        """Raise unless the cluster's head can open ``url``; runs (then deletes) a tiny job."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try: urllib.request.urlopen(sys.argv[1], timeout=10)\n"
            "except urllib.error.HTTPError: pass\n"
            "except Exception as e: sys.exit(f'unreachable: {e}')\n"
        )
        with self._errors():
            job_id = self.client.submit_job(
                entrypoint=f"python -c {shlex.quote(code)} {shlex.quote(url)}", entrypoint_num_cpus=0
            )
        try:
            info = self.wait(job_id, timeout)
        finally:
            with suppress(Exception):
                self.client.delete_job(job_id)
        if str(info.status) != "SUCCEEDED":
            raise UserError(
                f"{what} at {url.rsplit('/', 1)[0]} is not reachable from this machine "
                f"nor from the Ray cluster at {self.url}"
            )

    def submit(self, entrypoint: str, runtime_env: dict[str, Any], job_id: str, sweep: str) -> str:
        with self._errors():
            return str(
                self.client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env=runtime_env,
                    submission_id=job_id,
                    metadata={SWEEP_METADATA: sweep},
                    entrypoint_num_cpus=0,
                )
            )

    def list(self) -> list[Any]:
        with self._errors():
            return sorted(self.client.list_jobs(), key=lambda j: j.start_time or 0)

    def info(self, job_id: str) -> Any:
        with self._errors(job_id):
            return self.client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return str(self.client.get_job_logs(job_id))

    def follow(self, job_id: str) -> Iterator[str]:
        """The job's log as it is written, until the job ends."""
        import asyncio

        self.info(job_id)
        stream = self.client.tail_job_logs(job_id)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    with self._errors(job_id):
                        chunk = loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            loop.close()

    def stop(self, job_id: str) -> bool:
        with self._errors(job_id):
            self.info(job_id)
            return bool(self.client.stop_job(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job ends; returns its final info."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.info(job_id)
            if str(info.status) in TERMINAL:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(f"job {job_id} did not finish within {timeout:g} s")
            time.sleep(1.0)


def _probe(url: str, timeout: float) -> None:
    """Fail fast, with a message, when nothing listens at ``url`` (the client would hang or retry)."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or DASHBOARD_PORT), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"no Ray cluster answers at {url} ({exc.strerror or exc}); start one "
            "(cluster/local/start-ray.sh on this machine) or check --address"
        ) from None


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
    import psutil

    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}


def check_dataset(dataset: str, local_cluster: bool) -> str:
    """The dataset location as every node of the cluster sees it.

    Object storage URIs pass as they are. A local path passes, made absolute, when the cluster is
    this machine, or when it lies on a network file system (mounted at the same path on the
    nodes, as NFS usually is).

    Raises:
        UserError: a path that does not exist here, or one only this machine can read.
    """
    if dataset == SINUSOID or "://" in dataset:
        return dataset
    path = Path(absolute(dataset))
    if not path.exists():
        raise UserError(f"data.dataset {dataset!r} does not exist on this machine")
    if local_cluster:
        return str(path)
    fs = _filesystem(path)
    if fs not in SHARED_FILESYSTEMS:
        raise UserError(
            f"data.dataset {dataset!r} is on this machine's local disk ({fs}); the cluster's nodes "
            "cannot read it. Copy it to object storage (s3://..., gs://...) or a shared file system "
            "mounted on every node, and point data.dataset there"
        )
    return str(path)


def _filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on, from /proc/mounts (``unknown`` elsewhere)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def check_tracking(uri: str, local_cluster: bool, cluster: Cluster | None = None) -> str:
    """The tracking URI as the cluster's driver must see it.

    A tracking server this machine cannot reach may still be reachable from a remote cluster
    (a name inside its network): then a short probe job asks the cluster itself.

    Raises:
        UserError: a store only this machine has, or a server that does not answer.
    """
    from orchestrator.tracking import check_reachable

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

    Raises:
        UserError: anything :func:`check_dataset`, :func:`check_tracking` or
            :func:`check_fits` refuses, a missing storage for a remote cluster, or an unreachable
            or refusing cluster. Nothing is submitted then.
    """
    from orchestrator.tracking import tracking_uri

    cluster = Cluster(address)
    nodes = cluster.nodes()
    local = is_this_machine(nodes)
    uri = check_tracking(tracking or tracking_uri(config.tracking.uri), local, cluster)
    dataset = check_dataset(config.data.dataset, local)
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
    env = {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}
    env["MLFLOW_TRACKING_URI"] = uri
    # `jobs stop` sends SIGTERM, which the driver turns into Tune's graceful stop (the sweep's
    # state is saved for --resume); Ray's default 3 s before SIGKILL can cut that short.
    env["RAY_JOB_STOP_WAIT_TIME_S"] = "60"
    entrypoint = f"python -m orchestrator.cli sweep {SWEEP_FILE} --storage {shlex.quote(storage)}"
    if not resource_check:
        entrypoint += " --no-resource-check"
    if resume:
        entrypoint += f" --resume {config.name}"
    job_id = f"metasweep-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="metasweep-job-") as tmp:
        working_dir = _pack(Path(tmp), to_yaml(resolved))
        runtime_env: dict[str, Any] = {"working_dir": str(working_dir), "env_vars": env}
        if pip:
            runtime_env["pip"] = list(pip)
        job_id = cluster.submit(entrypoint, runtime_env, job_id, config.name)
    return Submission(job_id=job_id, sweep=config.name, dashboard=cluster.url)


def _pack(folder: Path, config_yaml: str) -> Path:
    """The job's working directory: metasweep's two packages and the resolved sweep config."""
    import algorithms
    import orchestrator

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (algorithms, orchestrator):
        source = Path(package.__file__).parent  # type: ignore[arg-type]
        shutil.copytree(source, folder / source.name, ignore=ignore)
    (folder / SWEEP_FILE).write_text(config_yaml)
    return folder
