"""Units of the Ray Jobs client: addresses, tokens, and what may be sent to a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metasweep.orchestrator.config import RunConfig
from metasweep.orchestrator.data.storage import filesystem_type
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.jobs import client, submit
from tests.refusals import assert_refused


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
    assert client.dashboard_url(address) == url


def test_dashboard_url_refuses_other_schemes() -> None:
    with pytest.raises(UserError, match="not a Ray dashboard address"):
        client.dashboard_url("ray://head:10001")


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert client.auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert client.auth_token() == "from-home"
    (tmp_path / "token").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert client.auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert client.auth_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH"):
        client.auth_token()


def test_dataset_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "omniglot.parquet"
    data.write_bytes(b"x")

    def on(dataset: str) -> RunConfig:
        if dataset == "sinusoid":
            return RunConfig()
        return RunConfig.model_validate({"data": {"dataset": dataset}, "model": {"name": "conv4"}})

    assert submit.check_dataset(on("sinusoid"), local_cluster=False) == "sinusoid"
    assert submit.check_dataset(on("s3://bucket/o.parquet"), local_cluster=False) == "s3://bucket/o.parquet"
    assert submit.check_dataset(on("omniglot.parquet"), local_cluster=True) == str(data)  # made absolute
    with pytest.raises(UserError, match="does not exist"):
        submit.check_dataset(on("missing.parquet"), local_cluster=True)
    monkeypatch.setattr(submit, "filesystem_type", lambda path: "ext4")
    with pytest.raises(UserError, match="local disk \\(ext4\\)"):
        submit.check_dataset(on(str(data)), local_cluster=False)
    monkeypatch.setattr(submit, "filesystem_type", lambda path: "nfs4")
    assert submit.check_dataset(on(str(data)), local_cluster=False) == str(data)


def test_filesystem_of_a_path_is_read_from_the_mount_table() -> None:
    assert filesystem_type(Path("/proc/self")) == "proc" or not Path("/proc/mounts").exists()
    assert filesystem_type(Path("/")) not in ("", "unknown")


def test_tracking_uris(free_port, tmp_path: Path) -> None:
    assert (
        submit.check_tracking("sqlite:///mlflow.db", local_cluster=True) == f"sqlite:///{tmp_path}/mlflow.db"
    )
    assert submit.check_tracking("sqlite:////abs/m.db", local_cluster=True) == "sqlite:////abs/m.db"
    with pytest.raises(UserError, match="file on this machine"):
        submit.check_tracking("sqlite:////abs/m.db", local_cluster=False)
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        submit.check_tracking(f"http://127.0.0.1:{free_port()}", local_cluster=True)
    assert submit.check_tracking("postgresql://db/mlflow", local_cluster=False) == "postgresql://db/mlflow"


def test_pack_holds_the_packages_and_the_resolved_config(tmp_path: Path) -> None:
    folder = submit._pack(tmp_path, "name: x\n")
    assert (folder / "metasweep" / "algorithms" / "__init__.py").is_file()
    assert (folder / "metasweep" / "orchestrator" / "cli" / "__init__.py").is_file()
    assert (folder / "metasweep" / "__main__.py").is_file()
    assert not (folder / "metasweep" / "__init__.py").exists()  # a namespace, as installed
    assert not (folder / "metasweep" / "orchestrator" / "_namespace").exists()
    assert (folder / submit.SWEEP_FILE).read_text() == "name: x\n"
    assert not list(folder.rglob("__pycache__"))
    # The packed folder runs as the job's working directory does: `python -m metasweep` from it.
    done = subprocess.run(
        [sys.executable, "-c", "import metasweep.orchestrator as o; print(o.__file__)"],
        cwd=folder, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == str(folder / "metasweep" / "orchestrator" / "__init__.py")


def test_submit_to_nothing_fails_fast_with_exit_2(free_port, cli) -> None:
    Path("s.yaml").write_text(
        "name: s\nsearch: {space: {train.inner_lr: {type: uniform, low: 0.1, high: 0.2}}}\n"
    )
    started = time.time()
    result = cli("submit", "s.yaml", "--address", f"http://127.0.0.1:{free_port()}")
    assert_refused(result, "no Ray cluster answers at http://127.0.0.1:")
    assert time.time() - started < 30


def test_submit_checks_the_config_before_the_cluster(cli) -> None:
    Path("s.yaml").write_text(
        "name: s\nsearch: {space: {train.inner_lr: {type: uniform, low: 0.1, high: 0.2}}}\n"
    )
    result = cli("submit", "s.yaml", "--address", "http://127.0.0.1:1", "--set", "train.meta_lr=-1")
    assert_refused(result, "train.meta_lr")


def test_jobs_need_an_address(cli) -> None:
    result = cli("jobs", "list")
    assert_refused(result, "--address")


def test_token_auth_mode_is_set_only_with_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    client.use_token_auth()
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")
    client.use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice stays
    client.use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


@pytest.mark.parametrize("storage", ["/tmp/a b/sweeps", "s3://bucket/x;id", "$(touch pwned)"])
def test_every_value_of_the_job_entrypoint_is_quoted_for_the_shell(storage: str) -> None:
    import shlex

    command = submit.sweep_command(storage, resume="sweep-1", resource_check=False)
    assert shlex.split(command) == [
        "python", "-m", "metasweep", "sweep", submit.SWEEP_FILE, "--storage", storage,
        "--no-resource-check", "--resume", "sweep-1",
    ]  # fmt: skip


def test_a_hostile_resume_name_is_refused_before_anything_reaches_a_cluster(run_cli, free_port) -> None:
    Path("s.yaml").write_text(
        "name: s\nsearch: {space: {train.inner_lr: {type: uniform, low: 0.1, high: 0.2}}}\n"
    )
    result = run_cli(
        "submit", "s.yaml", "--address", f"http://127.0.0.1:{free_port()}", "--resume", "x;touch pwned"
    )
    assert_refused(result, "is not a valid name")
    assert not Path("pwned").exists()


CREDENTIALS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "PGPASSWORD",
)


def test_the_job_environment_forwards_no_credential_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIALS:
        monkeypatch.setenv(name, f"canary-{name}")
    env = submit.job_env("http://mlflow:5000")
    assert set(env) == {"MLFLOW_TRACKING_URI", "RAY_JOB_STOP_WAIT_TIME_S"}
    assert not [value for value in env.values() if "canary" in value]


def test_a_variable_is_forwarded_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary")
    env = submit.job_env("http://mlflow:5000", submit.forwarded_env(["AWS_DEFAULT_REGION"]))
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1" and "AWS_SECRET_ACCESS_KEY" not in env
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    with pytest.raises(UserError, match=r"\$NOT_SET_HERE is not set"):
        submit.forwarded_env(["NOT_SET_HERE"])
    with pytest.raises(UserError, match="not an environment variable name"):
        submit.forwarded_env(["A=B;rm"])


@pytest.mark.parametrize(
    "uri", ["postgresql://mlflow:canary@db/mlflow", "https://admin:canary@mlflow:5000", "https://canary@m"]
)
def test_a_tracking_uri_with_a_login_is_not_sent_to_a_cluster(uri: str) -> None:
    with pytest.raises(UserError, match="holds a login") as refused:
        submit.job_env(uri)
    assert "canary" not in str(refused.value)


def test_a_study_storage_with_a_login_is_not_sent_to_a_cluster() -> None:
    with pytest.raises(UserError, match="holds a password") as refused:
        submit.check_study_storage("postgresql://optuna:canary@db:5432/studies")
    assert "canary" not in str(refused.value)
    submit.check_study_storage("postgresql://optuna@db:5432/studies")  # the nodes' PGPASSWORD logs in
    submit.check_study_storage(None)


def test_a_dataset_uri_with_a_login_is_not_sent_to_a_cluster() -> None:
    config = RunConfig.model_validate(
        {"data": {"dataset": "https://user:canary@data.example.com/o.parquet"}, "model": {"name": "conv4"}}
    )
    with pytest.raises(UserError, match="holds a login") as refused:
        submit.check_dataset(config, local_cluster=False)
    assert "canary" not in str(refused.value)


def test_a_submission_is_tried_again_while_no_job_agent_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's head answers 500 "No available agent" while it finds no job agent; nothing was
    created, so the same submission is tried again. Any other error is raised at once, and the
    agent's absence too once the patience is spent."""
    monkeypatch.setattr(client.time, "sleep", lambda _: None)
    busy = RuntimeError(
        "Request failed with status code 500: No available agent to submit job, please try again later."
    )
    answers: list[object] = [busy, busy, "raysubmit_1"]

    def submit_job() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    assert client._until_an_agent_answers(submit_job) == "raysubmit_1"
    assert not answers

    other = RuntimeError("Request failed with status code 400: Job with submission_id x already exists.")
    answers[:] = [other, "never"]
    with pytest.raises(RuntimeError, match="already exists"):
        client._until_an_agent_answers(submit_job)
    assert answers == ["never"]

    answers[:] = [busy] * 5
    with pytest.raises(RuntimeError, match="No available agent") as gave_up:
        client._until_an_agent_answers(submit_job, patience=0)
    assert len(answers) == 4
    assert "RAY_AGENT_PORT" in str(gave_up.value)  # where to look, since retrying did not help
