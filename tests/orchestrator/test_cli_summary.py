"""What ``metasweep sweep`` prints at the end: a trial table that reads at 80 columns, links into
the MLflow UI's model-training view, and a pull hint that names a new folder (issue 11)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from metasweep.orchestrator.cli.run import column_names, free_folder, sweep_links, trial_table
from metasweep.orchestrator.sweep.driver import SweepResult, TrialRow
from metasweep.orchestrator.tracking.registry import Registration
from metasweep.orchestrator.tracking.store import ui_url

RUN = "0123456789abcdef0123456789abcdef"


OMNIGLOT = {"eval.inner_steps": 5, "train.inner_lr": 0.012345678, "train.inner_steps": 3}
SINUSOID = {"train.inner_lr": 0.012345678, "train.inner_steps": 3, "train.meta_lr": 0.001}


def result(
    uri: str = "sqlite:///mlflow.db",
    registered: bool = True,
    params: dict[str, Any] = SINUSOID,
    objective: str = "val/mse",
) -> SweepResult:
    return SweepResult(
        name="sine",
        objective=objective,
        best_trial="a1b2c3d4",
        best_params=params,
        best_metrics={objective: 0.5},
        test_metrics={"test/mse": 0.6},
        trials=2,
        parent_run_id=RUN,
        tracking_uri=uri,
        experiment_id="7",
        registration=Registration("sine-maml", "3", "champion", "first registered version")
        if registered
        else None,
        table=[
            TrialRow("a1b2c3d4", params, 0.5, 600, "finished"),
            TrialRow("e5f6a7b8", {**params, "train.inner_lr": 0.5}, None, 100, "stopped early"),
        ],
    )


def test_columns_are_named_by_the_shortest_suffix_that_tells_them_apart() -> None:
    keys = ["eval.inner_steps", "train.inner_lr", "train.inner_steps", "train.meta_lr", "algorithm"]
    assert column_names(keys) == {
        "eval.inner_steps": "eval.inner_steps",
        "train.inner_lr": "inner_lr",
        "train.inner_steps": "train.inner_steps",
        "train.meta_lr": "meta_lr",
        "algorithm": "algorithm",
    }


@pytest.mark.parametrize(
    ("params", "objective"), [(SINUSOID, "val/mse"), (OMNIGLOT, "val/accuracy")], ids=["sinusoid", "omniglot"]
)
def test_the_trial_table_reads_at_80_columns(params: dict[str, Any], objective: str) -> None:
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(
        trial_table(result(params=params, objective=objective))
    )
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    words = set(text.split())
    expected = {"trial", "inner_lr", "inner_steps", objective, "iters", "outcome", "a1b2c3d4", "e5f6a7b8"}
    expected |= {"0.01235", "finished", "stopped", "early", "600", "100", "0.5000"}
    expected |= {"meta_lr"} if "train.meta_lr" in params else {"eval.", "train."}
    assert expected <= words, (expected - words, text)  # whole: nothing cut or folded


def test_links_open_the_sweep_in_the_model_training_view(tmp_path: Path) -> None:
    text = sweep_links(result(), cwd=tmp_path)
    base = "http://127.0.0.1:5000/#/experiments/7/runs"
    view = "?workflowType=machine_learning"
    assert f"trials: {base}{view}" in text
    assert f"sweep:  {base}/{RUN}{view}" in text
    assert f"plots:  {base}/{RUN}/artifacts{view}" in text
    assert f"model:  http://127.0.0.1:5000/#/models/sine-maml{view}" in text
    assert "metasweep ui --tracking-uri sqlite:///mlflow.db" in text
    assert "metasweep models pull sine-maml@champion --out sine-maml\n" in text + "\n"


def test_a_tracking_server_is_linked_directly_without_its_login() -> None:
    text = sweep_links(result("https://admin:s3cret@mlflow.example:8443/", registered=False))
    assert "s3cret" not in text
    assert "https://***@mlflow.example:8443/#/experiments/7/runs?workflowType=machine_learning" in text
    assert "metasweep ui" not in text and "model:" not in text
    assert (
        ui_url("http://h:5000", "models/a b") == "http://h:5000/#/models/a%20b?workflowType=machine_learning"
    )


def test_the_pull_hint_names_a_folder_that_does_not_exist_yet(tmp_path: Path) -> None:
    assert free_folder("sine-maml", tmp_path) == "sine-maml"
    (tmp_path / "sine-maml").mkdir()
    (tmp_path / "sine-maml-2").write_text("")
    assert free_folder("sine-maml", tmp_path) == "sine-maml-3"
