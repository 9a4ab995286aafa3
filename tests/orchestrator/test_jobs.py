"""Units of the Ray Jobs client: addresses, tokens, and what may be sent to a cluster."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from metasweep.orchestrator import jobs
from metasweep.orchestrator.errors import UserError
from tests.conftest import free_port, run_cli


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("head", "http://head:8265"),
        ("head:9000", "http://head:9000"),
        ("http://10.0.0.5:8265", "http://10.0.0.5:8265"),
        ("https://ray.example.com", "https://ray.example.com:8265"),
    ],
)
def test_dashboard_url(address: str, url: str) -> None:
    assert jobs.dashboard_url(address) == url


def test_dashboard_url_refuses_other_schemes() -> None:
    with pytest.raises(UserError, match="not a Ray dashboard address"):
        jobs.dashboard_url("ray://head:10001")


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert jobs.auth_token() == "from-home"
    (tmp_path / "token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert jobs.auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.auth_token()


def test_dataset_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "omniglot.parquet"
    data.write_bytes(b"x")
    assert jobs.check_dataset("sinusoid", local_cluster=False) == "sinusoid"
    assert jobs.check_dataset("s3://bucket/o.parquet", local_cluster=False) == "s3://bucket/o.parquet"
    assert jobs.check_dataset("omniglot.parquet", local_cluster=True) == str(data)  # made absolute
    with pytest.raises(UserError, match="does not exist"):
        jobs.check_dataset("missing.parquet", local_cluster=True)
    monkeypatch.setattr(jobs, "_filesystem", lambda path: "ext4")
    with pytest.raises(UserError, match="local disk \\(ext4\\)"):
        jobs.check_dataset(str(data), local_cluster=False)
    monkeypatch.setattr(jobs, "_filesystem", lambda path: "nfs4")
    assert jobs.check_dataset(str(data), local_cluster=False) == str(data)


def test_filesystem_of_a_path_is_read_from_the_mount_table() -> None:
    kind = jobs._filesystem(Path("/proc/self"))
    assert kind == "proc" or not Path("/proc/mounts").exists()


def test_tracking_uris(tmp_path: Path) -> None:
    assert jobs.check_tracking("sqlite:///mlflow.db", local_cluster=True) == f"sqlite:///{tmp_path}/mlflow.db"
    assert jobs.check_tracking("sqlite:////abs/m.db", local_cluster=True) == "sqlite:////abs/m.db"
    with pytest.raises(UserError, match="file on this machine"):
        jobs.check_tracking("sqlite:////abs/m.db", local_cluster=False)
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        jobs.check_tracking(f"http://127.0.0.1:{free_port()}", local_cluster=True)
    assert jobs.check_tracking("postgresql://db/mlflow", local_cluster=False) == "postgresql://db/mlflow"


def test_pack_holds_the_packages_and_the_resolved_config(tmp_path: Path) -> None:
    folder = jobs._pack(tmp_path, "name: x\n")
    assert (folder / "algorithms" / "__init__.py").is_file()
    assert (folder / "orchestrator" / "cli.py").is_file()
    assert (folder / jobs.SWEEP_FILE).read_text() == "name: x\n"
    assert not list(folder.rglob("__pycache__"))


def test_submit_to_nothing_fails_fast_with_exit_2() -> None:
    Path("s.yaml").write_text(
        "name: s\nsearch: {space: {train.inner_lr: {type: uniform, low: 0.1, high: 0.2}}}\n"
    )
    started = time.time()
    result = run_cli("submit", "s.yaml", "--address", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "no Ray cluster answers at http://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.time() - started < 30


def test_submit_checks_the_config_before_the_cluster() -> None:
    Path("s.yaml").write_text(
        "name: s\nsearch: {space: {train.inner_lr: {type: uniform, low: 0.1, high: 0.2}}}\n"
    )
    result = run_cli("submit", "s.yaml", "--address", "http://127.0.0.1:1", "--set", "train.meta_lr=-1")
    assert result.returncode == 2 and "train.meta_lr" in result.stderr


def test_jobs_need_an_address() -> None:
    result = run_cli("jobs", "list")
    assert result.returncode == 2 and "--address" in result.stderr


def test_token_auth_mode_is_set_only_with_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    jobs.use_token_auth()
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")
    jobs.use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice stays
    jobs.use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
