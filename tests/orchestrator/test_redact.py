"""Logins in URIs are masked wherever metasweep prints, logs or stores a URI (issue 10, item 2)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from metasweep.orchestrator.config import SweepConfig, load_config_dict, to_yaml
from metasweep.orchestrator.redact import has_login, redact, redact_log_records, uri_scheme
from metasweep.orchestrator.tracking.runs import SweepTracker
from tests.refusals import assert_refused

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://mlflow:s3cr3t-Pa55@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("postgresql+psycopg2://u:s3cr3t-Pa55@db/x", "postgresql+psycopg2://***@db/x"),
        ("https://s3cr3t-Pa55@mlflow.example.com/", "https://***@mlflow.example.com/"),
        ("at https://u:p@ss:s3cr3t-Pa55@host/x.", "at https://***@host/x."),  # an unescaped @
        ("a 'http://a:s3cr3t-Pa55@h' and s3://b:s3cr3t-Pa55@c/d", "a 'http://***@h' and s3://***@c/d"),
        ("http://host/path?user=a@b.com", "http://host/path?user=a@b.com"),  # not userinfo
        ("mail me: a@b.com, sqlite:///mlflow.db", "mail me: a@b.com, sqlite:///mlflow.db"),
    ],
)
def test_the_userinfo_of_every_uri_in_a_text_is_masked(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert SECRET not in redact(text)


def test_has_login() -> None:
    assert has_login("postgresql://u:p@h/db") and has_login("https://token@h")
    assert not has_login("https://h:5000") and not has_login("sqlite:///a@b.db")


def test_log_records_are_masked_whoever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    redact_log_records()
    redact_log_records()  # idempotent
    with caplog.at_level(logging.WARNING):
        logging.getLogger("some.library").warning("cannot reach %s", f"http://admin:{SECRET}@h:5000")
    assert SECRET not in caplog.text and "http://***@h:5000" in caplog.text


def test_saved_configs_and_the_parent_run_mask_logins(tmp_path: Path) -> None:
    config = load_config_dict(
        {
            "name": "s",
            "algorithm": "maml",
            "data": {"dataset": "sinusoid"},
            "search": {"space": {"train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}},
            "tracking": {"uri": f"postgresql://mlflow:{SECRET}@db/mlflow"},
        },
        [],
        SweepConfig,
    )
    assert SECRET not in to_yaml(config) and "postgresql://***@db/mlflow" in to_yaml(config)
    assert SECRET in to_yaml(config, redacted=False)  # the config a submitted job runs

    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "e", "s", retry_s=0.0)
    tracker.open(resume=False)
    tracker.log_sweep({"storage": f"s3://key:{SECRET}@bucket/sweeps"}, to_yaml(config, redacted=False))
    tracker.finish("FAILED", error=f"could not reach postgresql://mlflow:{SECRET}@db/mlflow")
    client = MlflowClient(tracker.uri)
    run = client.get_run(tracker.parent_id)
    stored = client.download_artifacts(tracker.parent_id, "config.yaml", str(tmp_path))
    for text in (Path(stored).read_text(), str(run.data.params), str(run.data.tags)):
        assert SECRET not in text
    assert "postgresql://***@db/mlflow" in run.data.tags["metasweep.error"]


@pytest.mark.cli
def test_an_error_about_a_uri_with_a_login_does_not_print_the_password(run_cli, free_port) -> None:
    uri = f"http://admin:{SECRET}@127.0.0.1:{free_port()}"
    result = run_cli("models", "list", "--tracking-uri", uri)
    assert_refused(result, "http://***@127.0.0.1")
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("postgresql+psycopg2://u:p@db/x", "postgresql"),
        ("PostgreSQL://db/x", "postgresql"),
        ("sqlite:///mlflow.db", "sqlite"),
        ("http://127.0.0.1:5000", "http"),
        ("runs/mlflow.db", ""),
        ("localhost:5000", ""),
    ],
)
def test_a_uri_names_its_store_by_its_scheme_without_the_driver(uri: str, scheme: str) -> None:
    assert uri_scheme(uri) == scheme
