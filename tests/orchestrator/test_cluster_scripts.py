"""The cluster/local scripts' own guards, run for real in bash (no cluster is started): the
secrets file that gives Ray's nodes their logins, and PostgreSQL's refusal to start MLflow on an
empty store when the database it made has gone (issue 10, items 1 and 5)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "cluster" / "local"
HOSTILE = "p%a$s'w\"o rd\\`x`;$(touch /tmp/pwned)"


def bash(script: str, cluster_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "CLUSTER_DIR": str(cluster_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cluster_dir,
    )


def test_secrets_are_written_0600_and_read_back_exactly(tmp_path: Path) -> None:
    script = f"""
        set -euo pipefail
        source {SCRIPTS}/env.sh
        set_secret MLFLOW_TRACKING_PASSWORD "$VALUE"
        set_secret MLFLOW_TRACKING_USERNAME admin
        set_secret MLFLOW_TRACKING_USERNAME metasweep   # replaced, not appended
        unset MLFLOW_TRACKING_PASSWORD MLFLOW_TRACKING_USERNAME
        load_secrets
        bash -c 'printf "%s\\n%s" "$MLFLOW_TRACKING_USERNAME" "$MLFLOW_TRACKING_PASSWORD"'
    """
    done = bash(script, tmp_path, VALUE=HOSTILE)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"metasweep\n{HOSTILE}"  # exported to child processes, unmangled
    secrets = tmp_path / "secrets.env"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert secrets.read_text().count("MLFLOW_TRACKING_USERNAME=") == 1
    assert not Path("/tmp/pwned").exists()


def test_a_secrets_file_others_can_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secrets.env").write_text("AWS_SECRET_ACCESS_KEY=x\n")
    os.chmod(tmp_path / "secrets.env", 0o644)
    done = bash(f"set -euo pipefail; source {SCRIPTS}/env.sh; load_secrets", tmp_path)
    assert done.returncode != 0 and "chmod 600" in done.stderr


def test_postgres_refuses_to_start_afresh_when_its_database_has_gone(tmp_path: Path) -> None:
    (tmp_path / "postgres.dir").write_text(str(tmp_path / "cleaned-away"))
    done = bash(f"{SCRIPTS}/postgres.sh", tmp_path, PG_DATA=str(tmp_path / "cleaned-away"))
    assert done.returncode == 1
    assert "is gone; refusing to start MLflow on an empty store" in done.stderr
    assert not (tmp_path / "cleaned-away").exists()


def test_postgres_refuses_to_initialise_over_other_files(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    data.mkdir()
    (data / "notes.txt").write_text("not a database")
    done = bash(f"{SCRIPTS}/postgres.sh", tmp_path, PG_DATA=str(data))
    assert done.returncode == 1 and "refusing to initialise over it" in done.stderr
    assert [p.name for p in data.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("script", ["postgres.sh", "start-mlflow.sh", "start-ray.sh"])
def test_no_script_keeps_state_under_tmp_or_passes_a_password_as_an_argument(script: str) -> None:
    text = (SCRIPTS / script).read_text()
    assert '"/tmp/metasweep' not in text
    assert "--backend-store-uri" not in text  # the URI holds the database password
    assert "PASSWORD '$(cat" not in text


def test_the_head_refuses_to_start_when_its_job_agent_port_is_taken(tmp_path: Path) -> None:
    """Ray would start a head whose job agent has no HTTP service (it cannot bind the port) and
    take no job ("No available agent to submit job"): start-ray.sh says so before starting."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = bash(f"{SCRIPTS}/start-ray.sh", tmp_path, RAY_AGENT_PORT=str(port), PYTHON_BIN="/nonexistent")
    assert done.returncode == 1, done.stderr
    assert f"127.0.0.1:{port} (RAY_AGENT_PORT) is taken" in done.stderr
    assert not (tmp_path / "logs" / "ray-head.log").exists()


def test_stop_ray_stops_the_cluster_s_process_trees_and_nothing_else(tmp_path: Path) -> None:
    """stop-ray.sh ends what descends from the pids start-ray.sh and start-node.sh recorded (a
    process that ignores SIGTERM is killed after the grace) and leaves any other process alone,
    another Ray on the machine included: it once ran ``ray stop --force``, which killed the
    local Ray of a sweep running beside the cluster."""
    tree = "trap '' TERM; sleep 300 & bash -c 'trap \"\" TERM; sleep 300 & wait' & wait"
    head = subprocess.Popen(["bash", "-c", tree], start_new_session=True)
    node = subprocess.Popen(["bash", "-c", "sleep 300 & wait"], start_new_session=True)
    other = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / "ray-head.pid").write_text(f"{head.pid}\n")
        (tmp_path / "ray-worker-1.pid").write_text(f"{node.pid}\n")
        time.sleep(0.5)  # the children have started
        below = _children(head.pid) + _children(node.pid)
        assert len(below) >= 3
        done = bash(f"{SCRIPTS}/stop-ray.sh", tmp_path, PYTHON_BIN=str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert head.wait(timeout=5) is not None and node.wait(timeout=5) is not None
        assert not [pid for pid in below if _alive(pid)]
        assert other.poll() is None
        assert not list(tmp_path.glob("ray-*.pid"))
    finally:
        for process in (head, node, other):
            process.kill()
            process.wait()


def _children(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
