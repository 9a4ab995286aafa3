"""Sweeps submitted to a real multi-node Ray cluster on 127.0.0.1 with a shared MLflow server.

The cluster is what ``cluster/local/start.sh`` starts for users: a head with no CPUs and two
worker nodes of one CPU each (so trials must spread over nodes), Ray token authentication on, and
an MLflow tracking server with basic authentication and a PostgreSQL backend store (SQLite when
PostgreSQL is not installed). Faults are real: a worker node's raylet is SIGKILLed, the MLflow
server is stopped and started again, a job's driver is stopped.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.refusals import assert_refused

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPTS = Path(__file__).resolve().parents[2] / "cluster" / "local"
POSTGRES = bool(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
EVAL_EVERY = 20
# Credentials a careless submit would forward; they must reach no file and no Jobs API answer.
CANARIES = {
    name: f"canary-{secrets.token_hex(8)}"
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD")
}

SWEEP = """
name: {name}
algorithm: maml
model: {{name: mlp, hidden: [20, 20]}}
data: {{dataset: sinusoid, shots: 5, queries: 5}}
train: {{iterations: {iterations}, meta_batch_size: 5, eval_every: 20}}
eval: {{inner_steps: 3, val_tasks: 20, test_tasks: 30, batch_size: 10}}
search:
  space:
    train.inner_lr: {{type: loguniform, low: 0.001, high: 0.05}}
  num_samples: {trials}
  max_concurrent: {concurrent}
  scheduler: fifo
  max_failures: 3
  cpus_per_trial: 1
tracking: {{experiment: cluster, registered_model: cluster-sine}}
"""


@dataclass(frozen=True)
class Cluster:
    address: str
    tracking: str
    env: dict[str, str]
    storage: Path
    folder: Path
    run_cli: Callable[..., subprocess.CompletedProcess[str]]
    head_session: Path = Path()  # known once the head has started

    def script(self, name: str, *args: str) -> str:
        done = subprocess.run(
            [str(SCRIPTS / name), *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking)

    def jobs_api(self, path: str) -> str:
        """The raw answer of the Jobs API at ``path``, as a token holder would read it."""
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(f"{self.address}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.read().decode()

    def submit(self, config: Path, *args: str) -> str:
        result = self.run_cli(
            "submit", str(config), "--address", self.address, "--storage", str(self.storage), *args
        )
        assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout.strip().splitlines()[0]  # the job id; --wait's log follows

    def wait(self, job_id: str, timeout: float = 420) -> str:
        """``metasweep jobs status`` once the job has ended. Until then the Jobs API is polled
        directly: a CLI process a poll would take a core of two from the trials."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if json.loads(self.jobs_api(f"/api/jobs/{job_id}"))["status"] in (
                "SUCCEEDED",
                "FAILED",
                "STOPPED",
            ):
                return self.run_cli("jobs", "status", job_id, "--address", self.address).stdout
            time.sleep(1)
        logs = self.run_cli("jobs", "logs", job_id, "--address", self.address).stdout
        pytest.fail(f"job {job_id} did not finish in {timeout} s:\n{logs[-3000:]}")


@pytest.fixture(scope="module")
def cluster(free_port, run_cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    ports = {
        "RAY_PORT": free_port(),
        "RAY_DASHBOARD_PORT": free_port(),
        "RAY_CLIENT_PORT": free_port(),
        # Ray's default, 52365, is held by any other Ray on the machine (a test's local Ray, when
        # the suite runs in several processes): a head without its job agent takes no job.
        "RAY_AGENT_PORT": free_port(),
        "MLFLOW_PORT": free_port(),
        "PG_PORT": free_port(),
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "CLUSTER_DIR": str(folder),
        "PYTHON_BIN": str(Path(sys.executable).parent),
        "RAY_WORKERS": "2",
        "MLFLOW_BACKEND": "postgresql" if POSTGRES else "sqlite",
        "MLFLOW_AUTH": "1",
        # A "%" broke the server's configparser-read auth file once.
        "MLFLOW_ADMIN_PASSWORD": f"pa%ss-{secrets.token_hex(8)}",
    }
    if os.getuid() == 0:  # postgres.sh keeps root's database where the postgres user may enter
        env["PG_DATA"] = f"{tempfile.gettempdir()}/postgres-{ports['PG_PORT']}"
    started = Cluster(
        address=f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}",
        tracking=f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
        env=env,
        storage=folder / "sweeps",
        folder=folder,
        run_cli=run_cli,
    )
    try:
        started.script("start.sh")
        started = replace(
            started, head_session=Path(tempfile.gettempdir(), "ray", "session_latest").resolve()
        )
        password = (folder / "mlflow" / "admin_password").read_text().strip()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
            mp.setenv("MLFLOW_TRACKING_URI", started.tracking)
            yield started
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh")], env=env, capture_output=True, timeout=120)
        if "PG_DATA" in env:
            shutil.rmtree(env["PG_DATA"], ignore_errors=True)


def ray_sessions(cluster: Cluster) -> list[Path]:
    """The session folders (logs, job packages, sockets) of the cluster's head and worker nodes:
    the head's as it started (a local Ray started since has its own session in the same folder)."""
    workers = [Path(d, "session_latest") for d in glob.glob(f"{tempfile.gettempdir()}/ray-node-*")]
    return [cluster.head_session, *(w.resolve() for w in workers if w.exists())]


def files_holding(secret: str, folders: list[Path]) -> list[str]:
    """Every file under ``folders`` whose bytes contain ``secret``."""
    found = []
    for folder in folders:
        for path in Path(folder).rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:  # sockets, files removed meanwhile
                continue
    return found


def sweep_file(name: str, iterations: int = 100, trials: int = 4, concurrent: int = 2) -> Path:
    path = Path(f"{name}.yaml")
    path.write_text(SWEEP.format(name=name, iterations=iterations, trials=trials, concurrent=concurrent))
    return path


def trial_runs(client: MlflowClient, sweep: str) -> list:
    experiment = client.get_experiment_by_name("cluster")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`metasweep.sweep` = '{sweep}'")
    return [r for r in runs if "metasweep.trial_id" in r.data.tags]


def steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val/mse"))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(1)


def assert_complete(client: MlflowClient, sweep: str, trials: int, iterations: int) -> list:
    """Exactly one child run per trial, each with a val/mse at every evaluation step, once."""
    runs = trial_runs(client, sweep)
    assert len(runs) == trials, [r.data.tags["metasweep.trial_id"] for r in runs]
    assert len({r.data.tags["metasweep.trial_id"] for r in runs}) == trials
    expected = list(range(EVAL_EVERY, iterations + 1, EVAL_EVERY))
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        assert sorted(set(steps(client, run.info.run_id))) == expected, run.data.tags["metasweep.trial_id"]
    return runs


def test_a_sweep_starts_its_own_ray_unless_told_to_attach(run_cli, cluster: Cluster) -> None:
    """With the cluster running on this machine, a plain `metasweep sweep` ignores it and starts a
    new local Ray; `--address auto` attaches (this process is the driver, trials run on
    the nodes), says to which cluster, and is refused there with that cluster's size when it asks
    for more than the cluster fits."""
    unregistered = ["--set", "tracking.registered_model=null"]  # the registry is tested below
    # Refused by the Ray it started (more trials at once than it fits): that Ray is its own.
    own = run_cli("sweep", str(sweep_file("own", concurrent=64)), *unregistered)
    said = assert_refused(own)
    assert re.search(r"fits at most \d+ trials at once \(a new local instance, 1 node, \d+ CPUs", said), said

    # Ray names the head by the machine's primary address, whatever --node-ip-address said.
    there = rf"the cluster at [\d.]+:{cluster.env['RAY_PORT']}, 3 nodes, 2 CPUs, 0 GPUs"
    direct = run_cli(
        "sweep", str(sweep_file("direct", iterations=60, trials=2)), "--address", "auto", *unregistered
    )
    assert direct.returncode == 0, direct.stderr[-3000:]
    assert re.search(f"Ray: {there}", direct.stderr), direct.stderr[:3000]
    runs = assert_complete(cluster.client(), "direct", trials=2, iterations=60)
    assert all(r.data.tags["metasweep.node_id"] for r in runs)

    refused = run_cli("sweep", str(sweep_file("toomany", concurrent=3)), "--address", "auto")
    said = assert_refused(refused)
    assert re.search(rf"fits at most 2 trials at once \({there}\)", said), said

    # A trial of three workers of 2/3 CPU each: the cluster's 2 CPUs hold the trial, but each
    # worker node of one CPU places only one of them.
    wide = ["search.workers_per_trial=3", "search.cpus_per_trial=2", "train.meta_batch_size=6"]
    sets = [arg for setting in wide for arg in ("--set", setting)]
    unplaced = run_cli("sweep", str(sweep_file("wide", concurrent=1)), "--address", "auto", *sets)
    said = assert_refused(unplaced)
    assert re.search(
        rf"search.workers_per_trial=3 workers, each with 0.666667 CPU and 0 GPU, but the Ray cluster's "
        rf"nodes place at most 2 \({there}\)",
        said,
    ), said


def test_one_submitted_sweep_survives_a_killed_node_a_tracking_outage_and_a_stopped_driver(
    run_cli, cluster: Cluster
) -> None:
    """The cluster's faults one after the other, in one submitted sweep (which keeps the suite
    short). Once both running trials have reported three evaluations, worker node 2's raylet is
    SIGKILLed, and while the surviving trial trains on, the MLflow server is stopped and started
    again; once a trial has finished, the job is stopped, node 2 comes back, and the sweep
    is resubmitted with --resume. The trial of the dead node restarts from its checkpoint on the
    other node, the driver buffers trial records through the outage, the finished trial is not
    run again, every trial ends with one value at every evaluation step, trials spread over both
    nodes, and the champion is registered and pulls. Both jobs were submitted from an environment
    holding four credentials, none of which, nor the MLflow password, reached a job, Ray's files
    or its Jobs API."""
    iterations, trials = 300, 3
    config = sweep_file("faults", iterations=iterations, trials=trials)
    client = cluster.client()

    def submit(*args: str) -> str:
        with pytest.MonkeyPatch.context() as canaries:  # not `monkeypatch`: its undo() would leave tmp_path
            for name, canary in CANARIES.items():
                canaries.setenv(name, canary)
            return cluster.submit(config, *args)

    def both_running() -> bool:
        runs = trial_runs(client, "faults")
        return len(runs) == 2 and all(len(steps(client, r.info.run_id)) >= 3 for r in runs)

    def finished() -> dict[str, int]:
        runs = trial_runs(client, "faults")
        return {r.info.run_id: r.info.start_time for r in runs if r.info.status == "FINISHED"}

    job = submit()
    assert job.startswith("metasweep-faults-")
    wait_until(both_running, "both trials to report three evaluations")
    cluster.script("stop-node.sh", "2")
    try:
        down = time.time()
        cluster.script("stop-mlflow.sh")
        # Down for 5 s and the half minute its start takes on a busy machine; the trial on node 1
        # keeps training and reporting meanwhile.
        time.sleep(5)
        cluster.script("start-mlflow.sh")
        up = time.time()
        wait_until(lambda: bool(finished()), "the first trial to finish")
        stopped = run_cli("jobs", "stop", job, "--address", cluster.address)
        assert stopped.returncode == 0, stopped.stderr
        assert "STOPPED" in cluster.wait(job)
    finally:
        cluster.script("start-node.sh", "2")
    logs = run_cli("jobs", "logs", job, "--address", cluster.address).stdout
    assert "unreachable" in logs and "buffered trial records sent" in logs, logs[-3000:]
    done_before = finished()

    resumed = submit("--resume", "faults")
    status = cluster.wait(resumed)
    resumed_logs = run_cli("jobs", "logs", resumed, "--address", cluster.address).stdout
    assert "SUCCEEDED" in status, resumed_logs[-3000:]

    runs = assert_complete(client, "faults", trials=trials, iterations=iterations)
    for run in runs:
        if run.info.run_id in done_before:  # not run again: the same run, one value per step
            assert run.info.start_time == done_before[run.info.run_id]
    moved = [r for r in runs if len(r.data.tags["metasweep.nodes"].split(",")) == 2]
    assert moved, [r.data.tags["metasweep.nodes"] for r in runs]
    visited = {node for r in runs for node in r.data.tags["metasweep.nodes"].split(",")}
    assert len(visited) >= 2, "trials ran on one node only"
    during = [
        m
        for r in runs
        for m in client.get_metric_history(r.info.run_id, "val/mse")
        if down * 1000 <= m.timestamp <= up * 1000
    ]
    assert during, "no metric was measured while the server was down; the outage tested nothing"

    # No credential travelled with either job: the driver logged in to MLflow with the cluster's
    # own secrets, and neither the canaries nor the MLflow password reached Ray's files or Jobs API.
    password = os.environ["MLFLOW_TRACKING_PASSWORD"]
    answers = "".join(cluster.jobs_api(p) for p in ("/api/jobs/", f"/api/jobs/{job}", f"/api/jobs/{resumed}"))
    assert job in answers and resumed in answers and "runtime_env" in answers
    sessions = ray_sessions(cluster)
    assert len(sessions) == 3, sessions  # the head and two worker nodes
    for secret in (*CANARIES.values(), password):
        assert secret not in answers
        assert files_holding(secret, sessions) == [], secret
    for submitted in (job, resumed):
        env_vars = json.loads(cluster.jobs_api(f"/api/jobs/{submitted}"))["runtime_env"]["env_vars"]
        assert set(env_vars) == {"MLFLOW_TRACKING_URI", "RAY_JOB_STOP_WAIT_TIME_S"}

    champion = client.get_model_version_by_alias("cluster-sine", "champion")
    assert champion.tags["metasweep.sweep"] == "faults"
    pulled = run_cli("models", "pull", "cluster-sine@champion", "--out", "model")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    files = {p.name for p in Path("model").rglob("*")}
    assert "MLmodel" in files
    # Loading never unpickles code: the model is defined by its source file, the weights by torch.
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".cloudpickle"))], files

    # The tracking URI travelled as an environment variable, not in the config the job ran.
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    shipped = client.download_artifacts(parent.info.run_id, "config.yaml", ".")
    assert cluster.tracking.split("//")[1] not in Path(shipped).read_text()

    listed = run_cli("jobs", "list", "--address", cluster.address)
    assert listed.returncode == 0 and job in listed.stdout and resumed in listed.stdout
    assert "STOPPED" in listed.stdout and "SUCCEEDED" in listed.stdout


def test_authentication_and_loopback_only(run_cli, cluster: Cluster) -> None:
    config = sweep_file("auth", trials=1, concurrent=1)
    before = run_cli("jobs", "list", "--address", cluster.address).stdout

    with pytest.MonkeyPatch.context() as env:  # not `monkeypatch`: its undo() would leave tmp_path
        env.delenv("MLFLOW_TRACKING_PASSWORD")
        refused = run_cli("submit", str(config), "--address", cluster.address)
        assert_refused(refused, "requires a login")
        env.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        refused = run_cli("models", "list")
        assert_refused(refused, "refused the login")

        env.setenv("RAY_AUTH_TOKEN", "not-the-token")
        refused = run_cli("jobs", "list", "--address", cluster.address)
        assert_refused(refused, "refused the authentication token")
        env.delenv("RAY_AUTH_TOKEN")
        env.setenv("HOME", str(Path.cwd()))  # no ~/.ray/auth_token
        refused = run_cli("jobs", "list", "--address", cluster.address)
        assert_refused(refused, "requires an authentication token")
    assert run_cli("jobs", "list", "--address", cluster.address).stdout == before  # nothing submitted

    # The Jobs API/dashboard, the MLflow server and PostgreSQL listen on loopback only.
    ports = [int(url.rsplit(":", 1)[1]) for url in (cluster.address, cluster.tracking)]
    for port in ports + ([int(cluster.env["PG_PORT"])] if POSTGRES else []):
        listening = {
            c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port
        }
        assert listening == {"127.0.0.1"}, (port, listening)

    # No password on any command line (`ps` shows them to every user), and secret files 0600.
    passwords = [os.environ["MLFLOW_TRACKING_PASSWORD"]]
    if POSTGRES:
        passwords.append((cluster.folder / "postgres_password").read_text().strip())
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        assert not [p for p in passwords if p in command], command
    for secret_file in (
        Path.home() / ".ray" / "auth_token",
        cluster.folder / "secrets.env",
        cluster.folder / "mlflow" / "basic_auth.ini",
        cluster.folder / "mlflow" / "admin_password",
    ):
        assert secret_file.stat().st_mode & 0o077 == 0, secret_file

    # The MLflow server runs without MLflow's GenAI job runner: eight more processes, and its
    # queue's files left in /dev/shm at every start (tests/conftest.py fails a suite that does).
    server = psutil.Process(int((cluster.folder / "mlflow.pid").read_text()))
    commands = [" ".join(p.cmdline()) for p in server.children(recursive=True)]
    assert commands and not [c for c in commands if "huey" in c or "_job_runner" in c], commands


def test_bad_submissions_exit_2_and_submit_nothing(free_port, run_cli, cluster: Cluster) -> None:
    before = run_cli("jobs", "list", "--address", cluster.address).stdout
    config = sweep_file("bad", trials=1, concurrent=1)

    started = time.time()
    nobody = run_cli("submit", str(config), "--address", f"http://127.0.0.1:{free_port()}")
    assert_refused(nobody, "no Ray cluster answers")
    assert time.time() - started < 30

    submit = ("submit", str(config), "--address", cluster.address)
    cases = {
        "no job 'metasweep-nope'": ("jobs", "status", "metasweep-nope", "--address", cluster.address),
        "search.num_samples": (*submit, "--set", "search.num_samples=0"),
        "can run one trial": (*submit, "--set", "search.cpus_per_trial=8"),
        "cannot reach the MLflow tracking server": (
            *submit,
            "--tracking-uri",
            f"http://127.0.0.1:{free_port()}",
        ),
    }
    for message, args in cases.items():
        result = run_cli(*args)
        assert_refused(result, message)
    assert run_cli("jobs", "list", "--address", cluster.address).stdout == before


@pytest.mark.skipif(not POSTGRES, reason="PostgreSQL is not installed (apt-get install postgresql)")
def test_a_study_beside_a_postgresql_store_lives_in_its_own_schema(cluster: Cluster) -> None:
    """A sweep tracked straight into PostgreSQL keeps its study in the same database, schema
    ``optuna``, which opening the storage creates (the cluster's PostgreSQL, MLflow's store)."""
    import optuna
    import sqlalchemy

    from metasweep.orchestrator.errors import UserError
    from metasweep.orchestrator.sweep.study import find_study, open_storage, study_exists, study_storage

    password = (cluster.folder / "postgres_password").read_text().strip()
    tracking = f"postgresql+psycopg2://mlflow:{password}@127.0.0.1:{cluster.env['PG_PORT']}/mlflow"
    url = study_storage(None, tracking, str(cluster.storage / "pg"))
    assert url is not None and url.endswith("?options=-csearch_path%3Doptuna")
    assert not study_exists(url)  # no schema yet: looking creates nothing
    with pytest.raises(UserError, match="no Optuna study of sweep 'pg'"):
        find_study("pg", tracking, str(cluster.storage / "pg"))
    assert not study_exists(url)
    optuna.create_study(study_name="pg", storage=open_storage(url)).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    assert study_exists(url) and find_study("pg", tracking, str(cluster.storage / "pg")) == url
    assert len(optuna.load_study(study_name="pg", storage=open_storage(url)).trials) == 2  # opened again
    engine = sqlalchemy.create_engine(tracking)
    try:
        with engine.connect() as connection:
            tables = sqlalchemy.inspect(connection)
            assert "studies" in tables.get_table_names(schema="optuna")
            assert "studies" not in tables.get_table_names(schema="public")  # MLflow's own schema
            assert "experiments" in tables.get_table_names(schema="public")
            names = connection.execute(sqlalchemy.text("SELECT study_name FROM optuna.studies")).scalars()
            assert list(names) == ["pg"]
    finally:
        engine.dispose()
