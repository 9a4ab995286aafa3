"""The sweep's plots, drawn from Tune-shaped results."""

from __future__ import annotations

import subprocess
import sys

DRAW = """
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from metasweep.orchestrator.config import SweepConfig
from metasweep.orchestrator.sweep.plots import sweep_plots

config = SweepConfig.model_validate({"name": "p", "search": {"space": {
    "train.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.1},
    "train.inner_steps": {"type": "int", "low": 1, "high": 3}}}})
problem = config.problem(None)
results = []
for i in range(6):
    lr, steps = 0.001 * 2**i, 1 + i % 3
    score = (i - 3) ** 2 + steps
    frame = pd.DataFrame({"iteration": [10, 15, 20], "val/mse": [score + 1, score + 1, score],
                          "evaluated_at": [10, None, 20]})
    results.append(SimpleNamespace(metrics_dataframe=frame, config={"train.inner_lr": lr,
                   "train.inner_steps": steps}, metrics={"val/mse": score, "trial_id": f"t{i}"}))
written = sweep_plots(results, config, problem, Path("."))
print(sorted(p.name for p in written))
print("sklearn" in sys.modules)
"""


def test_the_plots_are_drawn_without_importing_scikit_learn(tmp_path) -> None:
    """Learning curves (evaluations only), importances and parallel coordinates; optuna's import
    of scikit-learn for fANOVA (2.8 s), which the PED-ANOVA importances do not use, is kept out."""
    done = subprocess.run([sys.executable, "-c", DRAW], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    names, imported = done.stdout.strip().splitlines()[-2:]
    assert names == "['learning_curves.png', 'parallel_coordinate.png', 'param_importances.png']"
    assert imported == "False"
    assert all(
        (tmp_path / n).stat().st_size > 10_000 for n in ("learning_curves.png", "param_importances.png")
    )
