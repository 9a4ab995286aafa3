"""What one trial reports to Tune: an evaluation (with a checkpoint) every ``eval_every``
meta-iterations, and progress reports in between, which repeat the last score without
``EVALUATED`` so that ASHA, MLflow and the plots skip them (issue 11: no metric for minutes).

Tune itself is replaced by a recorder here: this is a unit test of the trial function's reports;
tests/integration/test_sweep.py runs trials under real Tune."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from metasweep.orchestrator.config import SweepConfig, load_config_dict
from metasweep.orchestrator.sweep import trial as trial_module
from metasweep.orchestrator.sweep.trial import EVALUATED, ITERATION, NODE, RATE, trial

SWEEP = {
    "name": "reports",
    "algorithm": "maml",
    "model": {"name": "mlp", "hidden": [8]},
    "data": {"dataset": "sinusoid", "shots": 5, "queries": 5},
    "train": {"iterations": 10, "meta_batch_size": 2, "eval_every": 5},
    "eval": {"inner_steps": 1, "val_tasks": 4, "test_tasks": 4, "batch_size": 4},
    "search": {
        "space": {"train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}},
        "progress_every_s": 1e-9,  # a progress report at every meta-iteration between evaluations
    },
}


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], bool]]:
    """Every ``(result, has a checkpoint)`` a trial reports."""
    sent: list[tuple[dict[str, Any], bool]] = []
    tune = SimpleNamespace(
        report=lambda result, checkpoint=None: sent.append((dict(result), checkpoint is not None)),
        get_checkpoint=lambda: None,
        Checkpoint=trial_module.tune.Checkpoint,
    )
    monkeypatch.setattr(trial_module, "tune", tune)
    monkeypatch.setattr(
        trial_module.ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-1")
    )
    return sent


def test_progress_is_reported_between_evaluations_and_only_evaluations_carry_a_score(
    reports: list[tuple[dict[str, Any], bool]],
) -> None:
    sweep = load_config_dict(SWEEP, [], SweepConfig)
    trial(
        {"train.inner_lr": 0.01},
        sweep=sweep,
        problem=sweep.problem(None),
        dataset=None,
        workers_storage="unused",
    )
    evaluations = [(r, c) for r, c in reports if EVALUATED in r]
    progress = [(r, c) for r, c in reports if EVALUATED not in r]
    assert [r[EVALUATED] for r, _ in evaluations] == [5, 10]
    assert all(checkpointed for _, checkpointed in evaluations)
    assert [r[ITERATION] for r, _ in progress] == [1, 2, 3, 4, 6, 7, 8, 9]
    assert not any(checkpointed for _, checkpointed in progress)
    first_score = evaluations[0][0]["val/mse"]
    for result, _ in progress:
        assert result[RATE] > 0 and math.isfinite(result["train/loss"]) and result[NODE] == "node-1"
        # The last evaluation's score, or the worst before the first: never a new measurement.
        assert result["val/mse"] == (math.inf if result[ITERATION] < 5 else first_score)
        assert "val/mse_ci95" not in result
    # Tune's live table shows the first four metrics of the first result it gets.
    assert list(reports[0][0])[:4] == [ITERATION, RATE, "val/mse", "train/loss"]
    assert list(evaluations[0][0])[:4] == [ITERATION, RATE, "val/mse", "train/loss"]
